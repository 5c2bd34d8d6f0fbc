"""Grayscale display windows: CT presets (level/width in HU) and MRI percentiles.

Used by the figures (:mod:`medcam3d.viz.figures`) and the HTML viewer (:mod:`medcam3d.viz.viewer`)
alike, so one ``window=`` means the same in both. Needs numpy only.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from medcam3d.errors import ConfigurationError

__all__ = ["CT_WINDOWS", "MRI_PERCENTILES", "Window", "window_limits", "window_image"]

#: CT display windows in Hounsfield units as ``(level, width)``.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
}

#: Default intensity percentiles for MRI (and any image without a preset): ``(low, high)``.
MRI_PERCENTILES: tuple[float, float] = (1.0, 99.0)

#: A window: ``None``/``"mri"``/``"auto"`` (percentiles), a :data:`CT_WINDOWS` name,
#: ``(low, high)`` intensities, or ``("percentile", low, high)``.
Window = Union[None, str, tuple[float, float], tuple[str, float, float]]


def window_limits(image: np.ndarray, window: Window = None) -> tuple[float, float]:
    """Intensity limits ``(low, high)`` that :func:`window_image` maps to black and white.

    Args:
        image: the grayscale image (any shape); only read for percentile windows.
        window: see :func:`window_image`.
    """
    if window is None or (isinstance(window, str) and window.lower() in ("mri", "auto", "percentile")):
        window = ("percentile", *MRI_PERCENTILES)
    if isinstance(window, str):
        key = window.lower().replace("-", "_").replace(" ", "_")
        if key not in CT_WINDOWS:
            raise ConfigurationError(
                f"Unknown window {window!r}; use one of {sorted(CT_WINDOWS)} (CT), 'mri' (percentiles) or (low, high)."
            )
        level, width = CT_WINDOWS[key]
        return level - width / 2.0, level + width / 2.0
    values: tuple[Any, ...] = tuple(window)
    if len(values) == 3 and values[0] == "percentile":
        finite = np.asarray(image)[np.isfinite(image)]
        if finite.size == 0:
            return 0.0, 1.0
        low, high = np.percentile(finite, [float(values[1]), float(values[2])])
        return float(low), float(high)
    if len(values) == 2:
        low, high = float(values[0]), float(values[1])
        if not high > low:
            raise ConfigurationError(f"A window (low, high) needs high > low, got {window!r}.")
        return low, high
    raise ConfigurationError(f"Cannot understand window {window!r}.")


def window_image(image: Any, window: Window = None) -> np.ndarray:
    """Map intensities to ``[0, 1]`` for display (any shape; float32 out).

    Args:
        image: the grayscale image (any shape, typically ``(D, H, W)`` z, y, x).
        window: ``None``/``"mri"``: the 1st-99th intensity percentiles of the whole image
            (:data:`MRI_PERCENTILES`); a CT preset name from :data:`CT_WINDOWS` (``"brain"``,
            ``"lung"``, ``"abdomen"``, ``"bone"``, ...; level/width in HU); ``(low, high)`` explicit
            limits; or ``("percentile", 0.5, 99.5)``.
    """
    array = np.asarray(image, dtype=np.float32)
    low, high = window_limits(array, window)
    if high <= low:
        return np.zeros_like(array)
    return np.clip((np.nan_to_num(array, nan=low) - low) / (high - low), 0.0, 1.0).astype(np.float32)
