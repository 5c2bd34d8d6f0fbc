"""Blending a map over a grayscale image, the default threshold, and ground-truth label colours.

The default threshold is shared by the figures and the HTML viewer: a voxel is coloured when its
map value is at least :data:`DEFAULT_THRESHOLD` (0.2) of the map's range above the map's minimum,
``min + 0.2 * (max - min)``. An explicit ``threshold=`` is an absolute map value instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medcam3d.errors import ConfigurationError, InputShapeError, require_extra
from medcam3d.viz.windowing import Window, window_image

__all__ = [
    "DEFAULT_THRESHOLD",
    "LABEL_COLOURS",
    "Label",
    "colormap",
    "overlay",
    "resolve_threshold",
    "mask_labels",
]

logger = logging.getLogger(__name__)

#: Default threshold, as a fraction of the map's range above its minimum (figures and viewer).
DEFAULT_THRESHOLD = 0.2

#: Contour / label colours of the ground truth, label 1 first (magenta first: it is in no common
#: map colormap, so it stands out on "jet", "hot" and gray alike).
LABEL_COLOURS: tuple[str, ...] = (
    "#ff00ff",  # magenta
    "#00ff00",  # lime
    "#00ffff",  # cyan
    "#ffffff",  # white
    "#ffff00",  # yellow
    "#ff8800",  # orange
    "#8888ff",  # light blue
    "#ff6688",  # pink
)


def colormap(cmap: Any) -> Any:
    """A matplotlib colormap from a name or a colormap object (extra ``medcam3d[viz]``)."""
    mpl: Any = require_extra("matplotlib", "viz", "drawing figures")
    import matplotlib.colors

    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    try:
        return mpl.colormaps[cmap]
    except KeyError as exc:
        raise ConfigurationError(f"Unknown matplotlib colormap {cmap!r}.") from exc


def resolve_threshold(cam: np.ndarray, threshold: float | None, what: str = "map") -> float:
    """The absolute threshold for ``cam``: ``threshold`` itself, or the default when it is ``None``.

    The default is ``min + DEFAULT_THRESHOLD * (max - min)`` over the finite values of ``cam``;
    a constant (or empty) map gets ``+inf`` (nothing is coloured) and a warning.
    """
    if threshold is not None:
        value = float(threshold)
        if not np.isfinite(value):
            raise ConfigurationError(f"threshold must be a finite number, got {threshold!r}.")
        return value
    finite = cam[np.isfinite(cam)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if not high > low:
        logger.warning(
            "The %s is constant (%g everywhere): nothing is overlaid. Pass threshold= to colour it anyway.",
            what,
            low,
        )
        return float("inf")
    return low + DEFAULT_THRESHOLD * (high - low)


def overlay(
    image: Any,
    cam: Any,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
) -> np.ndarray:
    """Blend a map over a grayscale image: an RGB float array in ``[0, 1]``, shape ``image.shape + (3,)``.

    Args:
        image: grayscale image of any shape (a slice ``(H, W)`` or a volume ``(D, H, W)``).
        cam: map of the same shape; clipped to ``[0, 1]`` (never rescaled or wrapped).
        window: see :func:`medcam3d.viz.window_image`; pass ``(0, 1)`` for an image already windowed.
        cmap: matplotlib colormap name or object.
        alpha: opacity of the map where it is shown (0 = invisible, 1 = opaque).
        threshold: voxels with ``cam < threshold`` show the image only (an absolute value; the
            figures' default, :data:`DEFAULT_THRESHOLD` of the map's range, comes from
            :func:`resolve_threshold`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigurationError(f"alpha must be within [0, 1], got {alpha}.")
    gray = window_image(image, window)
    heat = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != gray.shape:
        raise InputShapeError(f"image {gray.shape} and cam {heat.shape} must have the same shape.")
    colours = np.asarray(colormap(cmap)(heat), dtype=np.float32)[..., :3]
    weight = np.where(heat >= threshold, np.float32(alpha), np.float32(0.0))[..., None]
    out: np.ndarray = (1.0 - weight) * gray[..., None] + weight * colours
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class Label:
    """One ground-truth label: its value in the label map, the name in legends, its colour (``#rrggbb``)."""

    value: int
    name: str
    colour: str


def mask_labels(mask: np.ndarray, names: Mapping[int, str] | None = None) -> list[Label]:
    """The labels present in a mask or label map (0 is background), with names and colours.

    Args:
        mask: boolean mask or integer label map (any shape).
        names: ``{value: name}`` for the legend; default ``"mask"`` for a single label 1,
            ``"label k"`` otherwise. Label ``k`` gets ``LABEL_COLOURS[(k - 1) % 8]``.
    """
    array = np.asarray(mask)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ConfigurationError(
                "A mask must be boolean or hold integer labels (0 = background); got non-integer values. "
                "Threshold a probability map first, e.g. mask=probability > 0.5."
            )
    elif array.dtype.kind not in "biu":
        raise ConfigurationError(f"A mask must be boolean or integer, got dtype {array.dtype}.")
    values = [int(v) for v in np.unique(array) if v != 0]
    if any(v < 0 for v in values):
        raise ConfigurationError(f"Mask labels must be positive integers (0 = background), got {values}.")
    names = dict(names or {})
    default_single = len(values) == 1 and values[0] == 1
    labels = []
    for v in values:
        name = names.get(v, "mask" if default_single else f"label {v}")
        labels.append(Label(v, str(name), LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)]))
    return labels
