"""Turn what a user passes as a map and a mask into two numpy arrays on one voxel grid.

Private helper of :mod:`medcam3d.metrics.localisation`. A map or a mask may be

* a numpy array or torch tensor, ``(*S)`` or batched ``(N, *S)`` with 1, 2 or 3 spatial axes;
* a pair ``(array, Geometry)`` (what :func:`medcam3d.io.read_image` returns), array ``(D, H, W)``
  in ``(z, y, x)`` order;
* an image file path, a ``SimpleITK.Image`` or a nibabel image (read with
  :func:`medcam3d.io.read_image`).

When both come with a geometry and the grids differ, the map is resampled (linear interpolation,
world coordinates, :func:`medcam3d.io.resample_to_reference`) onto the mask's grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medcam3d.errors import GeometryError, InputShapeError, NonFiniteInputError, ValueRangeError

__all__ = ["Prepared", "prepare", "prepare_map", "as_numpy"]


@dataclass
class Prepared:
    """A map and a mask on one grid.

    Attributes:
        cam: float64 ``(B, *S)``.
        mask: bool ``(B, *S)`` (broadcast to the map's batch).
        spacing: voxel size in mm per spatial axis, in array order (``(z, y, x)`` for 3-D).
        batched: whether the caller passed a batch (results are then arrays of length ``B``).
    """

    cam: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, ...]
    batched: bool


def as_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or an array-like."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if hasattr(value, "as_tensor"):  # MONAI MetaTensor
            value = value.as_tensor()
        value = value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputShapeError(f"{name} must be an array or a tensor, got {type(value).__name__}.") from exc


def _is_image_source(value: Any) -> bool:
    if isinstance(value, (str, os.PathLike)):
        return True
    module = type(value).__module__
    return module.startswith("SimpleITK") or module.startswith("nibabel")


def _split(value: Any, name: str) -> tuple[np.ndarray, Any]:
    """``(array, geometry or None)`` from any accepted form."""
    from medcam3d.io.geometry import Geometry

    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Geometry):
        array = as_numpy(value[0], name)
        geometry = value[1]
    elif _is_image_source(value):
        from medcam3d.io import read_image

        array, geometry = read_image(value)
    else:
        return as_numpy(value, name), None
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != geometry.shape:
        raise GeometryError(
            f"{name} has shape {array.shape} but its geometry says {geometry.shape} (z, y, x); "
            "give the array that belongs to the geometry."
        )
    return array, geometry


def _check_spacing(spacing: Sequence[float], rank: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != rank:
        raise InputShapeError(
            f"spacing has {len(values)} values but the map has {rank} spatial axes; give one voxel size "
            "(mm) per spatial axis, in array order ((z, y, x) for a volume)."
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueRangeError(f"spacing must be positive and finite (mm), got {values}.")
    return values


def prepare(cam: Any, mask: Any, spacing: Sequence[float] | None) -> Prepared:
    """Check and align ``cam`` and ``mask``; see the module docstring for the accepted forms.

    Without geometry the number of spatial axes is ``len(spacing)`` when ``spacing`` is given,
    otherwise ``min(mask.ndim, 3)``: a 3-D array is one volume, a 4-D one a batch of volumes (pass a
    2-value ``spacing`` to mean a batch of 2-D maps ``(N, H, W)``).
    """
    cam_array, cam_geometry = _split(cam, "cam")
    mask_array, mask_geometry = _split(mask, "mask")
    if cam_array.dtype == object or mask_array.dtype == object:
        raise InputShapeError("cam and mask must be numeric arrays (got an object array).")
    if not np.issubdtype(cam_array.dtype, np.number) and cam_array.dtype != bool:
        raise InputShapeError(f"cam must be a numeric array, got dtype {cam_array.dtype}.")
    cam_array = cam_array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(cam_array)):
        bad = int(np.size(cam_array) - np.count_nonzero(np.isfinite(cam_array)))
        raise NonFiniteInputError(
            f"cam holds {bad} NaN/Inf value(s); localisation scores need a finite map. Check the method's "
            "output (e.g. a division by zero in normalisation) or replace them with np.nan_to_num."
        )
    geometry = mask_geometry if mask_geometry is not None else cam_geometry
    if geometry is not None:
        if (
            cam_geometry is not None
            and mask_geometry is not None
            and not cam_geometry.allclose(mask_geometry)
        ):
            from medcam3d.io.transforms import resample_to_reference

            cam_array = resample_to_reference(cam_array, cam_geometry, mask_geometry, "linear", 0.0)
            cam_array = cam_array.astype(np.float64)
        if cam_array.shape != mask_array.shape:
            raise InputShapeError(
                f"cam has shape {cam_array.shape} and mask {mask_array.shape}; when only one of them has a "
                "geometry both must be on that grid. Give both as (array, Geometry) pairs (or image files) "
                "to compare them in world coordinates."
            )
        grid_spacing = geometry.spacing_zyx
        if spacing is not None:
            given = _check_spacing(spacing, 3)
            if not np.allclose(given, grid_spacing, rtol=1e-6, atol=1e-9):
                raise GeometryError(
                    f"spacing={given} (z, y, x) contradicts the image geometry's spacing {grid_spacing}; "
                    "leave spacing out when passing images with a geometry."
                )
        return _finish(cam_array, mask_array, tuple(grid_spacing), 3)
    rank = len(spacing) if spacing is not None else min(mask_array.ndim, 3)
    if rank not in (1, 2, 3):
        raise InputShapeError(
            f"Maps need 1, 2 or 3 spatial axes; got spacing with {rank} values (mask shape "
            f"{mask_array.shape})."
        )
    checked = _check_spacing(spacing, rank) if spacing is not None else (1.0,) * rank
    return _finish(cam_array, mask_array, checked, rank)


def prepare_map(cam: Any, spacing: Sequence[float] | None) -> Prepared:
    """Check a map alone (as :func:`prepare`, with a full mask); ``spacing`` says which axes are spatial."""
    array, geometry = _split(cam, "cam")
    full = (array, geometry) if geometry is not None else array
    return prepare(full, np.ones(array.shape, dtype=bool), spacing)


def _finish(cam: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...], rank: int) -> Prepared:
    for name, array in (("cam", cam), ("mask", mask)):
        if array.ndim not in (rank, rank + 1):
            raise InputShapeError(
                f"{name} has shape {array.shape}, but with {rank} spatial axes it must be (*S) or (N, *S). "
                "Pass spacing with one value per spatial axis to say how many axes are spatial."
            )
    if cam.shape[-rank:] != mask.shape[-rank:]:
        raise InputShapeError(
            f"cam has spatial shape {cam.shape[-rank:]} but mask {mask.shape[-rank:]}. Without geometry both "
            "must be on the same voxel grid: resample one of them, or give both as (array, Geometry) pairs "
            "or image files so they are compared in world coordinates."
        )
    batched = cam.ndim == rank + 1 or mask.ndim == rank + 1
    cam_b = cam if cam.ndim == rank + 1 else cam[None]
    mask_b = (mask if mask.ndim == rank + 1 else mask[None]) != 0
    if cam_b.shape[0] != mask_b.shape[0]:
        if mask_b.shape[0] == 1:
            mask_b = np.broadcast_to(mask_b, cam_b.shape)
        elif cam_b.shape[0] == 1:
            cam_b = np.broadcast_to(cam_b, mask_b.shape)
        else:
            raise InputShapeError(
                f"cam has a batch of {cam_b.shape[0]} maps but mask a batch of {mask_b.shape[0]}; give one mask "
                "per map or one mask for all."
            )
    empty = [i for i in range(mask_b.shape[0]) if not mask_b[i].any()]
    if empty:
        which = f"sample(s) {empty}" if batched else "the mask"
        raise ValueRangeError(
            f"The ground-truth mask is empty for {which}: localisation against an empty mask is undefined. "
            "Check the label value / file, or leave such cases out."
        )
    return Prepared(
        cam=np.ascontiguousarray(cam_b), mask=np.ascontiguousarray(mask_b), spacing=spacing, batched=batched
    )
