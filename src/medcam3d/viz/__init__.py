"""Figures and the HTML viewer for maps over medical images.

Figures need the extra ``medcam3d[viz]`` (matplotlib), imported only when a function runs.
Volumes are ``(D, H, W)`` in **(z, y, x)** order, as :func:`medcam3d.io.read_image` returns them.

* :mod:`medcam3d.viz.windowing`: grayscale windows (CT presets, MRI percentiles);
* :mod:`medcam3d.viz.overlay`: blending a map over an image, the default threshold, label colours;
* :mod:`medcam3d.viz.planes`: oriented planes (:class:`~medcam3d.viz.planes.Plane`) and how one is drawn;
* :mod:`medcam3d.viz.figures`: the figures (three planes, montage, MIP, methods side by side);
* :mod:`medcam3d.viz.viewer`: the interactive HTML viewer (``write_viewer``).
"""

from __future__ import annotations

from medcam3d.viz.figures import (
    FIGURE_ENDINGS,
    build_compare_methods_figure,
    build_mip_figure,
    build_montage_figure,
    build_three_plane_figure,
    colorbar_figure,
    compare_methods_figure,
    mip_figure,
    montage,
    save_slice_pngs,
    three_plane_figure,
)
from medcam3d.viz.overlay import DEFAULT_THRESHOLD, LABEL_COLOURS, overlay
from medcam3d.viz.planes import Plane, orientation_labels
from medcam3d.viz.windowing import CT_WINDOWS, MRI_PERCENTILES, Window, window_image, window_limits

__all__ = [
    "CT_WINDOWS",
    "DEFAULT_THRESHOLD",
    "FIGURE_ENDINGS",
    "LABEL_COLOURS",
    "MRI_PERCENTILES",
    "Plane",
    "Window",
    "build_compare_methods_figure",
    "build_mip_figure",
    "build_montage_figure",
    "build_three_plane_figure",
    "colorbar_figure",
    "compare_methods_figure",
    "mip_figure",
    "montage",
    "orientation_labels",
    "overlay",
    "save_slice_pngs",
    "three_plane_figure",
    "window_image",
    "window_limits",
]
