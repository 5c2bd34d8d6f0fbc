"""Figures and the HTML viewer for maps over medical images.

Figures need the extra ``medcam3d[viz]`` (matplotlib), imported only when a function runs.
Volumes are ``(D, H, W)`` in **(z, y, x)** order, as :func:`medcam3d.io.read_image` returns them.
The interactive viewer lives in :mod:`medcam3d.viz.viewer` (``write_viewer``).
"""

from __future__ import annotations

from medcam3d.viz.figures import (
    CT_WINDOWS,
    FIGURE_ENDINGS,
    MRI_PERCENTILES,
    Window,
    build_three_plane_figure,
    colorbar_figure,
    mip_figure,
    montage,
    orientation_labels,
    overlay,
    save_slice_pngs,
    three_plane_figure,
    window_image,
    window_limits,
)

__all__ = [
    "CT_WINDOWS",
    "FIGURE_ENDINGS",
    "MRI_PERCENTILES",
    "Window",
    "build_three_plane_figure",
    "colorbar_figure",
    "mip_figure",
    "montage",
    "orientation_labels",
    "overlay",
    "save_slice_pngs",
    "three_plane_figure",
    "window_image",
    "window_limits",
]
