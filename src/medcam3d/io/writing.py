"""Write maps (and other volumes) with the geometry of a reference image, atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import atomic_path
from medcam3d.errors import GeometryError, NonFiniteInputError, OutputPathError, require_extra
from medcam3d.io.geometry import Geometry
from medcam3d.io.reading import ImageSource, read_geometry

__all__ = ["write_map", "write_image", "as_volume", "WRITABLE_ENDINGS"]

logger = logging.getLogger(__name__)

#: File endings :func:`write_map` writes (single-file formats only, so the write can be atomic).
WRITABLE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".nrrd")


def as_volume(array: Any, name: str = "cam") -> np.ndarray:
    """A numpy ``(D, H, W)`` array from a numpy array or torch tensor, dropping leading size-1 axes.

    ``(1, D, H, W)`` and ``(1, 1, D, H, W)`` (a batch of one, as CAM methods return) are accepted.
    """
    if hasattr(array, "detach"):  # torch.Tensor (also MONAI MetaTensor)
        array = array.detach().cpu()
        if hasattr(array, "as_tensor"):
            array = array.as_tensor()
        array = array.numpy()
    out = np.asarray(array)
    while out.ndim > 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 3:
        raise GeometryError(
            f"{name} must be a 3-D volume (D, H, W) in (z, y, x) order, got shape {tuple(np.shape(array))}."
        )
    return out


def _ending(path: Path) -> str:
    name = path.name.lower()
    for ending in WRITABLE_ENDINGS:
        if name.endswith(ending):
            return ending
    return path.suffix.lower()


def write_image(
    array: Any,
    geometry: Geometry,
    out_path: str | os.PathLike[str],
    overwrite: bool = False,
    dtype: Any = np.float32,
    compress: bool = True,
) -> Path:
    """Write a ``(D, H, W)`` (z, y, x) array with ``geometry`` to a NIfTI/MHA/NRRD file, atomically.

    The format follows the ending of ``out_path`` (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``).
    Nothing is left at ``out_path`` if writing fails; an existing file is replaced only with
    ``overwrite=True``.
    """
    sitk: Any = require_extra("SimpleITK", "io", "writing medical images")
    out = Path(out_path)
    ending = _ending(out)
    if ending not in WRITABLE_ENDINGS:
        raise OutputPathError(
            f"Cannot write {out}: use one of the endings {', '.join(WRITABLE_ENDINGS)} (single-file formats; "
            ".mhd/.nhdr keep the voxels in a second file and cannot be written atomically)."
        )
    volume = as_volume(array, "array")
    if volume.shape != geometry.shape:
        raise GeometryError(
            f"The map has shape {volume.shape} (z, y, x) but the reference image has shape {geometry.shape}. "
            "Bring the map onto the reference grid first with medcam3d.io.map_to_original(...) or "
            "resample_to_reference(...)."
        )
    if dtype is not None:
        volume = volume.astype(dtype, copy=False)
    if volume.dtype == np.bool_:
        volume = volume.astype(np.uint8)
    image = geometry.to_sitk(np.ascontiguousarray(volume))
    if out.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {out} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
    with atomic_path(out, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress and ending != ".nii")
        except RuntimeError as exc:
            raise OutputPathError(f"Could not write {out}: {str(exc).strip().splitlines()[-1]}") from exc
    logger.info("Wrote %s %s", out, geometry)
    return out


def write_map(
    cam: Any,
    reference: ImageSource | Geometry,
    out_path: str | os.PathLike[str],
    overwrite: bool = False,
) -> Path:
    """Write a CAM as float32 with the geometry (spacing, origin, direction) of a reference image.

    Args:
        cam: the map, shape ``(D, H, W)`` in **(z, y, x)** order (the order of :func:`read_image`
            arrays), numpy or torch; leading size-1 axes (``(1, D, H, W)``, ``(1, 1, D, H, W)``) are dropped.
            It must already be on the reference's voxel grid; use :func:`map_to_original` otherwise.
        reference: the image the map belongs to: a file path / DICOM folder, a :class:`Geometry`,
            a ``SimpleITK.Image`` or a nibabel image.
        out_path: ``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd`` file to create.
        overwrite: replace an existing file (default: refuse with :class:`~medcam3d.errors.OutputPathError`).

    Returns:
        ``Path(out_path)``. The file is written to a temporary name in the same folder and renamed,
        so a reader never sees a half-written map.

    Raises:
        GeometryError: the map's shape differs from the reference's.
        NonFiniteInputError: the map holds NaN or Inf.
        OutputPathError: ``out_path`` exists (without ``overwrite``), has an unsupported ending or
            its folder is not writable.
    """
    volume = as_volume(cam, "cam")
    if not np.all(np.isfinite(volume)):
        raise NonFiniteInputError("The map holds NaN or Inf values; refusing to write it.")
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {out} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
    geometry = read_geometry(reference)
    return write_image(volume, geometry, out, overwrite=overwrite, dtype=np.float32)
