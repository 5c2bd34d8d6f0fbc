"""Bring a map from the grid the model saw back onto the original image's voxel grid."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medcam3d.errors import ConfigurationError, GeometryError, require_extra
from medcam3d.io.geometry import Geometry
from medcam3d.io.reading import ImageSource, read_geometry
from medcam3d.io.writing import as_volume

__all__ = ["resample_to_reference", "map_to_original", "geometry_from_meta_tensor"]

logger = logging.getLogger(__name__)

_INTERPOLATORS = {"linear": "sitkLinear", "nearest": "sitkNearestNeighbor", "bspline": "sitkBSpline"}


def resample_to_reference(
    cam: Any,
    source: Geometry,
    reference: ImageSource | Geometry,
    interpolation: str = "linear",
    default_value: float = 0.0,
) -> np.ndarray:
    """Resample a map from the grid ``source`` onto the grid of ``reference``, in world coordinates.

    Both grids are placed in patient space by their geometry, so any mix of resampling, cropping,
    padding, flips, axis permutations and rotations between them is undone. Voxels of
    ``reference`` that fall outside ``source`` get ``default_value``.

    Args:
        cam: map on the source grid, ``(D, H, W)`` in (z, y, x) order (numpy or torch).
        source: :class:`Geometry` of ``cam`` (the tensor the model saw).
        reference: the target grid: a :class:`Geometry`, an image path, a ``SimpleITK.Image`` or a
            nibabel image.
        interpolation: ``"linear"`` (default), ``"nearest"`` or ``"bspline"``.
        default_value: value outside the source grid.

    Returns:
        float32 array of shape ``reference.shape`` (z, y, x).
    """
    sitk: Any = require_extra("SimpleITK", "io", "resampling maps")
    if interpolation not in _INTERPOLATORS:
        raise ConfigurationError(
            f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}."
        )
    volume = as_volume(cam, "cam").astype(np.float32, copy=False)
    if volume.shape != source.shape:
        raise GeometryError(
            f"The map has shape {volume.shape} (z, y, x) but its source geometry says {source.shape}."
        )
    target = read_geometry(reference)
    image = source.to_sitk(np.ascontiguousarray(volume))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in target.size_xyz])
    resampler.SetOutputSpacing(target.spacing)
    resampler.SetOutputOrigin(target.origin)
    resampler.SetOutputDirection(tuple(float(v) for v in target.direction.ravel()))
    resampler.SetInterpolator(getattr(sitk, _INTERPOLATORS[interpolation]))
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    return np.ascontiguousarray(out.reshape(target.shape), dtype=np.float32)


def _is_meta_tensor(obj: object) -> bool:
    return hasattr(obj, "applied_operations") and hasattr(obj, "affine") and hasattr(obj, "meta")


def geometry_from_meta_tensor(tensor: Any) -> Geometry:
    """Geometry of a MONAI ``MetaTensor`` ``(C, X, Y, Z)`` or ``(X, Y, Z)`` from its ``affine``.

    MONAI tensors keep the spatial axes in (x, y, z) order — the order of their affine's columns —
    so the returned geometry's ``shape`` is the reversed spatial shape, ``(Z, Y, X)``.
    """
    if not _is_meta_tensor(tensor):
        raise ConfigurationError(f"Expected a MONAI MetaTensor, got {type(tensor).__name__}.")
    spatial = tuple(int(s) for s in tensor.shape[-3:])
    affine = np.asarray(
        tensor.affine.detach().cpu().numpy() if hasattr(tensor.affine, "detach") else tensor.affine
    )
    if affine.ndim == 3:  # batched affine
        affine = affine[0]
    space = str(tensor.meta.get("space", "RAS")).upper()
    return Geometry.from_affine(affine, spatial[::-1], lps=space.endswith("LPS"))


def _invert_with_monai(cam_xyz: Any, like: Any, transform: Any, key: str | None) -> Any:
    """Run MONAI's own inverse of ``transform`` on a MetaTensor carrying ``like``'s applied operations."""
    monai_data: Any = require_extra("monai.data", "io", "inverting MONAI transforms")
    torch = __import__("torch")
    data = torch.as_tensor(np.ascontiguousarray(cam_xyz), dtype=torch.float32)[None]  # channel axis
    meta = dict(like.meta)
    meta["affine"] = like.affine.clone()
    mt = monai_data.MetaTensor(
        data, meta=meta, applied_operations=[dict(op) for op in like.applied_operations]
    )
    if not hasattr(transform, "inverse"):
        raise ConfigurationError(
            f"{type(transform).__name__} has no inverse(); pass a MONAI (Compose) transform."
        )
    if key is not None:
        inverted = transform.inverse({key: mt})[key]
    else:
        inverted = transform.inverse(mt)
    return inverted


def map_to_original(
    cam: Any,
    reference: ImageSource | Geometry | None,
    model_geometry: Geometry | None = None,
    *,
    like: Any = None,
    transform: Any = None,
    key: str | None = None,
    interpolation: str = "linear",
    default_value: float = 0.0,
) -> np.ndarray:
    """Bring a map computed on the model's input grid back onto the original image's voxel grid.

    Use this when preprocessing resampled, cropped, padded or reoriented the image before the
    model saw it. Three ways to say what the model saw:

    1. ``model_geometry``: the :class:`Geometry` of the model's input (e.g.
       ``Geometry.from_sitk(resampled_image)`` or ``geometry.crop(...)``); ``cam`` is ``(D, H, W)``
       in (z, y, x) order on that grid. The map is resampled in world coordinates.
    2. ``like`` (or ``cam`` itself) is the MONAI ``MetaTensor`` the model saw, ``(C, X, Y, Z)``,
       and ``transform`` the MONAI transform (``Compose``) that produced it: MONAI's own
       ``transform.inverse`` undoes the recorded operations (``key`` names the image for
       dictionary transforms). ``cam`` then has the tensor's spatial shape and axis order
       ``(X, Y, Z)`` — the same axes as the model input.
    3. ``like`` without ``transform``: the MetaTensor's ``affine`` places the map in the world and
       it is resampled onto ``reference``.

    Args:
        cam: the map (numpy/torch), see above for its shape; leading size-1 axes are dropped.
        reference: the original image (path, :class:`Geometry`, ``SimpleITK.Image``, nibabel image),
            or ``None`` with ``transform`` to return MONAI's inverted grid as it is.
        interpolation: ``"linear"``, ``"nearest"`` or ``"bspline"`` for world-space resampling.
        default_value: value for original voxels outside the model's field of view (e.g. cropped).

    Returns:
        float32 array ``(D, H, W)`` in (z, y, x) order on the reference grid, ready for
        :func:`write_map`.
    """
    if like is None and _is_meta_tensor(cam) and model_geometry is None:
        like = cam
    if model_geometry is not None:
        if like is not None or transform is not None:
            raise ConfigurationError("Give either model_geometry or a MONAI MetaTensor (like=...), not both.")
        if reference is None:
            raise ConfigurationError("map_to_original needs the reference image (original grid).")
        return resample_to_reference(cam, model_geometry, reference, interpolation, default_value)
    if like is None:
        raise ConfigurationError(
            "map_to_original needs model_geometry=Geometry of the model input, or like=MetaTensor the model saw."
        )
    spatial = tuple(int(s) for s in like.shape[-3:])
    cam_xyz = as_volume(cam, "cam")
    if cam_xyz.shape != spatial:
        raise GeometryError(
            f"The map has shape {cam_xyz.shape} but the MetaTensor the model saw has spatial shape {spatial} "
            "(MONAI order x, y, z); compute the map on that tensor's grid."
        )
    if transform is not None:
        inverted = _invert_with_monai(cam_xyz, like, transform, key)
        geometry = geometry_from_meta_tensor(inverted)
        values = as_volume(inverted, "inverted map")
        volume_zyx = np.ascontiguousarray(np.transpose(values, (2, 1, 0)), dtype=np.float32)
        if reference is None:
            return volume_zyx
        target = read_geometry(reference)
        if geometry.allclose(target, atol=1e-3):
            return volume_zyx
        logger.info("MONAI's inverse grid differs from the reference; resampling in world coordinates.")
        return resample_to_reference(volume_zyx, geometry, target, interpolation, default_value)
    if reference is None:
        raise ConfigurationError("Without transform=..., map_to_original needs the reference image.")
    geometry = geometry_from_meta_tensor(like)
    volume_zyx = np.ascontiguousarray(np.transpose(cam_xyz, (2, 1, 0)), dtype=np.float32)
    return resample_to_reference(volume_zyx, geometry, reference, interpolation, default_value)
