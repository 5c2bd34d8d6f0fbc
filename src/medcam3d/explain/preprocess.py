"""Preprocessing from flags, every step invertible: the model grid is a :class:`~medcam3d.io.Geometry`.

Reorienting (an exact axis permutation / flip), resampling to a spacing, and centre crop / zero
pad each produce a new voxel grid placed in the patient's world coordinates, so a map computed on
the final grid goes back to the scan by resampling in world coordinates
(:func:`medcam3d.io.resample_to_reference`); when no step changes the grid, the map is used as it
is. Intensity steps (window, z-score, percentiles) change values only.

Arrays here are ``(D, H, W)`` in (z, y, x) order; the network's tensor is ``(1, C, D, H, W)``
(``axis_order="zyx"``) or ``(1, C, X, Y, Z)`` (``axis_order="xyz"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medcam3d.errors import ConfigurationError, GeometryError, InputShapeError, require_extra
from medcam3d.explain.settings import ExplainSettings
from medcam3d.io.geometry import Geometry

__all__ = [
    "PreparedVolume",
    "apply_intensity",
    "crop_or_pad",
    "prepare_arrays",
    "reorient",
    "resample_spacing",
    "to_model_order",
    "from_model_order",
]

logger = logging.getLogger(__name__)


@dataclass
class PreparedVolume:
    """A scan ready for the network.

    Attributes:
        tensor: ``(1, C, *S)`` float32 in the network's axis order.
        geometry: the grid of ``tensor``'s spatial axes, in (z, y, x) array order.
        original: the scan's own grid (where the maps are written).
        mask: the target mask on the model grid, ``(*S)`` in the network's axis order, or ``None``.
        steps: what was done, for the sidecar.
    """

    tensor: torch.Tensor
    geometry: Geometry
    original: Geometry
    mask: torch.Tensor | None
    steps: list[dict[str, Any]]

    @property
    def same_grid(self) -> bool:
        """Whether the model grid is the scan's own (maps need no resampling)."""
        return self.geometry.allclose(self.original, atol=1e-6)


def _sitk() -> Any:
    return require_extra("SimpleITK", "io", "reorienting and resampling scans")


def reorient(array: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """Permute / flip the axes of a ``(D, H, W)`` array so index axes x, y, z point to ``code``
    (``"RAS"``, ``"LPS"``...), exactly (no interpolation), with SimpleITK's ``DICOMOrient``."""
    sitk = _sitk()
    image = geometry.to_sitk(np.ascontiguousarray(array))
    out = sitk.DICOMOrient(image, code)
    return sitk.GetArrayFromImage(out), Geometry.from_sitk(out)


def _spacing_grid(geometry: Geometry, spacing: Sequence[float]) -> Geometry:
    """A grid of ``spacing`` (x, y, z) covering the same extent (the outer voxel faces kept)."""
    old = np.asarray(geometry.spacing)
    new = np.asarray([float(s) for s in spacing])
    size_xyz = np.maximum(np.round(np.asarray(geometry.size_xyz) * old / new), 1).astype(int)
    origin = np.asarray(geometry.origin) + geometry.direction @ ((new - old) / 2.0)
    return Geometry(
        shape=(int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])),
        spacing=tuple(new),
        origin=tuple(origin),
        direction=geometry.direction,
    )


def resample_spacing(
    array: np.ndarray, geometry: Geometry, target: Geometry, interpolation: str = "linear"
) -> np.ndarray:
    """``array`` resampled from ``geometry`` onto ``target`` in world coordinates (0 outside)."""
    from medcam3d.io.transforms import resample_to_reference

    return resample_to_reference(array.astype(np.float32, copy=False), geometry, target, interpolation)


def apply_intensity(array: np.ndarray, settings: ExplainSettings) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The intensity step of ``settings`` on one channel (float32) and its parameters for the sidecar."""
    values = array.astype(np.float32, copy=False)
    if settings.window is not None:
        from medcam3d.viz.windowing import window_limits

        low, high = window_limits(values, settings.window)
        out = np.clip((values - low) / (high - low), 0.0, 1.0)
        return out.astype(np.float32), {"step": "window", "window": settings.window, "low": low, "high": high}
    if settings.percentiles is not None:
        low, high = (float(v) for v in np.percentile(values, list(settings.percentiles)))
        span = high - low if high > low else 1.0
        out = np.clip((values - low) / span, 0.0, 1.0)
        return out.astype(np.float32), {
            "step": "percentiles",
            "percentiles": list(settings.percentiles),
            "low": low,
            "high": high,
        }
    if settings.zscore:
        region = values[values != 0] if settings.zscore_nonzero else values
        if region.size == 0:
            region = values
        mean, std = float(region.mean()), float(region.std())
        out = (values - mean) / (std if std > 0 else 1.0)
        if settings.zscore_nonzero:
            out = np.where(values != 0, out, 0.0)
        return out.astype(np.float32), {
            "step": "zscore",
            "nonzero": settings.zscore_nonzero,
            "mean": mean,
            "std": std,
        }
    return values, None


def crop_or_pad(
    array: np.ndarray, geometry: Geometry, size_zyx: Sequence[int]
) -> tuple[np.ndarray, Geometry, list[int]]:
    """Centre crop / zero pad ``(D, H, W)`` to ``size_zyx``; returns the array, its grid and the start
    index (negative where padded)."""
    shape = np.asarray(array.shape)
    size = np.asarray([int(s) for s in size_zyx])
    start = (shape - size) // 2
    stop = start + size
    out = np.zeros(tuple(size), dtype=array.dtype)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, shape))
    dst = tuple(slice(max(a, 0) - a, min(b, n) - a) for a, b, n in zip(start, stop, shape))
    out[dst] = array[src]
    return out, geometry.crop(start.tolist(), stop.tolist()), start.tolist()


def to_model_order(array_zyx: np.ndarray, axis_order: str) -> np.ndarray:
    """A ``(D, H, W)`` array in the network's axis order."""
    return np.ascontiguousarray(array_zyx.transpose(2, 1, 0)) if axis_order == "xyz" else array_zyx


def from_model_order(array: Any, axis_order: str) -> Any:
    """A spatial array (numpy or torch, spatial axes last three) back to (z, y, x)."""
    if axis_order != "xyz":
        return array
    if isinstance(array, torch.Tensor):
        return array.transpose(-1, -3)
    return np.swapaxes(array, -1, -3)


def _size_zyx(size: Sequence[int], axis_order: str) -> tuple[int, int, int]:
    if len(size) != 3:
        raise InputShapeError(
            f"A size for a 3-D scan needs three values, got {tuple(size)}; give D H W (or X Y Z with --axis-order xyz)."
        )
    values = tuple(int(s) for s in size)
    return values[::-1] if axis_order == "xyz" else values  # type: ignore[return-value]


def prepare_arrays(
    channels: Sequence[np.ndarray],
    geometry: Geometry,
    settings: ExplainSettings,
    mask: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> PreparedVolume:
    """Apply the flag preprocessing to the channel arrays ``(D, H, W)`` (z, y, x) of one scan.

    Order: orientation → spacing → intensity (per channel) → crop/pad to ``input_size``. A mask
    goes through the same geometric steps with nearest-neighbour interpolation.
    """
    original = geometry
    steps: list[dict[str, Any]] = []
    arrays = [np.asarray(c) for c in channels]
    for a in arrays:
        if a.shape != geometry.shape:
            raise GeometryError(
                f"A channel has shape {a.shape} but the scan's grid is {geometry.shape} (z, y, x)."
            )
    if settings.orientation is not None:
        new_geometry = geometry
        oriented = []
        for a in arrays:
            b, new_geometry = reorient(a, geometry, settings.orientation)
            oriented.append(b)
        if mask is not None:
            mask, _ = reorient(mask, geometry, settings.orientation)
        arrays, geometry = oriented, new_geometry
        steps.append({"step": "orientation", "code": settings.orientation})
    if settings.spacing is not None:
        target = _spacing_grid(geometry, settings.spacing)
        if not target.allclose(geometry, atol=1e-6):
            arrays = [resample_spacing(a, geometry, target, "linear") for a in arrays]
            if mask is not None:
                mask = resample_spacing(mask, geometry, target, "nearest")
            geometry = target
        steps.append({"step": "spacing", "spacing_xyz": list(settings.spacing), "interpolation": "linear"})
    processed = []
    for a in arrays:
        b, step = apply_intensity(a, settings)
        processed.append(b)
        if step is not None:
            steps.append(step)
    arrays = processed
    if settings.input_size is not None:
        size = _size_zyx(settings.input_size, settings.axis_order)
        cropped = []
        start: list[int] = []
        new_geometry = geometry
        for a in arrays:
            b, new_geometry, start = crop_or_pad(a, geometry, size)
            cropped.append(b)
        if mask is not None:
            mask, _, _ = crop_or_pad(mask, geometry, size)
        arrays, geometry = cropped, new_geometry
        steps.append({"step": "crop_or_pad", "size_zyx": list(size), "start_zyx": start})
    stacked = np.stack(
        [to_model_order(a.astype(np.float32, copy=False), settings.axis_order) for a in arrays]
    )
    if not np.all(np.isfinite(stacked)):
        raise ConfigurationError("Preprocessing produced NaN/Inf values (a constant image with --zscore?).")
    tensor = torch.from_numpy(stacked)[None].to(device)
    mask_t = None
    if mask is not None:
        mask_t = torch.from_numpy(np.ascontiguousarray(to_model_order(np.asarray(mask), settings.axis_order)))
    return PreparedVolume(tensor, geometry, original, mask_t, steps)
