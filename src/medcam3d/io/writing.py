"""Write maps (and other volumes) with the geometry of a reference image, atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import SPACE_HINT, atomic_path, check_output_file
from medcam3d.errors import (
    GeometryError,
    NonFiniteInputError,
    OutputPathError,
    ValueRangeError,
    require_extra,
)
from medcam3d.io.geometry import Geometry
from medcam3d.io.reading import ImageSource, _check_nifti_complete, _itk_message, read_geometry

__all__ = ["write_map", "write_image", "as_volume", "WRITABLE_ENDINGS"]

logger = logging.getLogger(__name__)

#: File endings :func:`write_map` writes (single-file formats only, so the write can be atomic).
WRITABLE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".nrrd")


def as_volume(array: Any, name: str = "cam") -> np.ndarray:
    """The one place where a map or volume becomes a numpy ``(D, H, W)`` array (z, y, x order kept).

    Accepts a numpy array, a torch tensor (any device, with or without ``requires_grad``, a MONAI
    ``MetaTensor``; ``bfloat16`` becomes ``float32`` since numpy has no such type) or a nested
    list. Leading size-1 axes are dropped, so ``(1, D, H, W)`` and ``(1, 1, D, H, W)`` (a batch of
    one, as CAM methods return) are accepted. The axis order is not changed: give ``(z, y, x)``.
    No copy is made when the input already is a numpy array.

    Raises:
        GeometryError: the array is not 3-D after dropping leading size-1 axes.
        ValueRangeError: the values are not numbers (strings, objects).
    """
    if hasattr(array, "detach"):  # torch.Tensor (also MONAI MetaTensor)
        tensor = array.detach()
        if hasattr(tensor, "as_tensor"):
            tensor = tensor.as_tensor()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        array = tensor.cpu().numpy()
    out = np.asarray(array)
    if out.dtype.kind not in "biuf":
        raise ValueRangeError(
            f"{name} must hold numbers (bool, integer or float), got an array of dtype {out.dtype}."
        )
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


def _verify_image(
    tmp: Path, expected: np.ndarray, geometry: Geometry, pixel_id: int, ending: str, out: Path
) -> None:
    """Re-read the temporary file ``tmp`` and check it holds ``expected`` with ``geometry`` (else raise)."""
    sitk: Any = require_extra("SimpleITK", "io", "writing medical images")
    if ending in (".nii", ".nii.gz"):
        _check_nifti_complete(
            tmp, label=out.name, hint=""
        )  # ITK's NIfTI reader would zero-fill a truncated file
    back = sitk.ReadImage(str(tmp))
    if back.GetPixelID() != pixel_id or back.GetNumberOfComponentsPerPixel() != 1:
        raise OutputPathError(
            f"{out.name} reads back as {back.GetPixelIDTypeAsString()}, not "
            f"{sitk.GetPixelIDValueAsString(pixel_id)}; write another pixel type (dtype=np.float32) or format."
        )
    got = Geometry.from_sitk(back)
    if got.shape != geometry.shape:
        raise OutputPathError(
            f"{out.name} reads back with shape {got.shape} instead of {geometry.shape}. {SPACE_HINT}"
        )
    array = sitk.GetArrayFromImage(back).reshape(expected.shape)
    if not np.array_equal(array, expected, equal_nan=expected.dtype.kind in "fc"):
        differ = int(np.count_nonzero(array != expected))
        raise OutputPathError(
            f"{differ} of {expected.size} voxels of {out.name} read back differently. {SPACE_HINT}"
        )
    origin_atol = 1e-2  # mm; NIfTI stores the origin as float32
    if not (
        np.allclose(got.spacing, geometry.spacing, rtol=1e-4, atol=1e-5)
        and np.allclose(got.origin, geometry.origin, rtol=1e-6, atol=origin_atol)
        and np.allclose(got.direction, geometry.direction, atol=1e-3)
    ):
        raise OutputPathError(
            f"{out.name} reads back with a different geometry ({got} instead of {geometry}): the format "
            "cannot store this geometry (NIfTI keeps only orthogonal directions); write .mha or .nrrd instead."
        )


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
    Before the temporary file is renamed onto ``out_path`` it is read back and checked: complete
    (a truncated NIfTI is detected even though ITK would zero-fill it), same shape, pixel type,
    voxel values (exactly) and geometry. Nothing is left at ``out_path`` if writing or the check
    fails; an existing file is replaced only with ``overwrite=True``.

    Raises:
        GeometryError: the array is not 3-D or its shape differs from ``geometry.shape``.
        OutputPathError: bad ending, ``out_path`` is a folder or exists without ``overwrite``, the
            folder is not writable, the disk is full or a file size limit is hit, or the written
            file does not read back as written.
    """
    sitk: Any = require_extra("SimpleITK", "io", "writing medical images")
    out = Path(out_path)
    ending = _ending(out)
    if ending not in WRITABLE_ENDINGS:
        raise OutputPathError(
            f"Cannot write {out}: use one of the endings {', '.join(WRITABLE_ENDINGS)} (single-file formats; "
            ".mhd/.nhdr keep the voxels in a second file and cannot be written atomically)."
        )
    check_output_file(out, overwrite)
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
    volume = np.ascontiguousarray(volume)
    image = geometry.to_sitk(volume)
    pixel_id = image.GetPixelID()

    def verify(tmp: Path) -> None:
        _verify_image(tmp, volume, geometry, pixel_id, ending, out)

    with atomic_path(out, overwrite=overwrite, verify=verify) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress and ending != ".nii")
        except RuntimeError as exc:
            raise OutputPathError(f"Could not write {out}: {_itk_message(exc)}. {SPACE_HINT}") from exc
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
        ``Path(out_path)``. The file is written into a hidden temporary folder beside it, read back
        and compared with the map (values, shape, type, geometry), then renamed: a reader never sees
        a half-written or wrong map, and a failed write raises instead of leaving a damaged file.

    Raises:
        GeometryError: the map's shape differs from the reference's.
        NonFiniteInputError: the map holds NaN or Inf.
        OutputPathError: ``out_path`` is a folder or exists (without ``overwrite``), has an
            unsupported ending, its folder is not writable, the disk is full / a file size limit
            is hit, or the written file does not read back as written.
    """
    volume = as_volume(cam, "cam")
    if not np.all(np.isfinite(volume)):
        raise NonFiniteInputError(
            "The map holds NaN or Inf values; refusing to write it. Clean it first, e.g. np.nan_to_num(cam)."
        )
    out = check_output_file(out_path, overwrite)
    geometry = read_geometry(reference)
    return write_image(volume, geometry, out, overwrite=overwrite, dtype=np.float32)
