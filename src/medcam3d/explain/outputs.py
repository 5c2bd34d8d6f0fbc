"""Writing one case's outputs in the scan's exact geometry, atomically and verified.

NIfTI outputs are written with nibabel from the input's own header when the input is NIfTI: the
``sform``/``qform`` matrices *and codes* are kept (an MNI-space input, ``sform_code=4``, stays MNI),
and the method / layer go into ``descrip``. Other NIfTI outputs get the scan's affine with code 1
(scanner). ``.mha``/``.nrrd`` outputs go through :func:`medcam3d.io.write_image`. Every file is
written into a hidden temporary, read back and compared, then renamed
(:func:`medcam3d._atomic.atomic_path`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import SPACE_HINT, atomic_path, write_json_atomic
from medcam3d.errors import OutputPathError, require_extra
from medcam3d.explain.cases import image_ending
from medcam3d.io.geometry import Geometry

__all__ = ["output_ending", "write_volume", "write_sidecar", "label_dtype"]

logger = logging.getLogger(__name__)


def output_ending(reference: Path, output_format: str) -> str:
    """The file ending for outputs of a case whose first input is ``reference``."""
    if output_format in ("nifti", "nii.gz"):
        return ".nii.gz"
    if output_format in ("nii", "mha", "nrrd"):
        return "." + output_format
    ending = image_ending(reference)  # "input"
    return {".mhd": ".mha", ".nhdr": ".nrrd", "": ".nii.gz"}.get(ending, ending)


def label_dtype(num_classes: int) -> Any:
    """The smallest integer type for a label map of ``num_classes`` labels."""
    return np.uint8 if num_classes <= 255 else np.int16


def _nifti_template(reference: Path) -> Any:
    """The input's nibabel header when it is a NIfTI file (``None`` otherwise)."""
    if not reference.name.lower().endswith((".nii", ".nii.gz")):
        return None
    nib: Any = require_extra("nibabel", "io", "writing NIfTI maps")
    return nib.load(str(reference))


def _nifti_image(data_xyz: np.ndarray, geometry: Geometry, template: Any, descrip: str) -> Any:
    nib: Any = require_extra("nibabel", "io", "writing NIfTI maps")
    if template is not None:
        cls = type(template) if isinstance(template, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
        header = template.header.copy()
        image = cls(data_xyz, None, header=header)
        sform, sform_code = template.header.get_sform(coded=True)
        qform, qform_code = template.header.get_qform(coded=True)
        if sform is not None:
            image.set_sform(sform, code=int(sform_code))
        else:
            image.set_sform(None, code=0)
        if qform is not None:
            image.set_qform(qform, code=int(qform_code))
        else:
            image.set_qform(None, code=0)
        if sform is None and qform is None:  # an Analyze-style file: keep the grid we read
            image.set_sform(geometry.affine, code=1)
    else:
        image = nib.Nifti1Image(data_xyz, geometry.affine)
        image.set_sform(geometry.affine, code=1)
        image.set_qform(geometry.affine, code=1)
    image.set_data_dtype(data_xyz.dtype)
    header = image.header
    header.set_slope_inter(1.0, 0.0)
    header["descrip"] = descrip.encode("ascii", "replace")[:79]
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    header["intent_code"] = 0
    header["aux_file"] = b""
    return image


def _write_nifti(
    array_zyx: np.ndarray, geometry: Geometry, reference: Path, out: Path, descrip: str, overwrite: bool
) -> Path:
    nib: Any = require_extra("nibabel", "io", "writing NIfTI maps")
    template = _nifti_template(reference)
    data_xyz = np.ascontiguousarray(array_zyx.transpose(2, 1, 0))
    image = _nifti_image(data_xyz, geometry, template, descrip)
    expected_affine = image.affine.copy()
    codes = (int(image.header["sform_code"]), int(image.header["qform_code"]))

    def verify(tmp: Path) -> None:
        back = nib.load(str(tmp))
        values = np.asanyarray(back.dataobj)
        if values.shape != data_xyz.shape or values.dtype != data_xyz.dtype:
            raise OutputPathError(
                f"{out.name} reads back as {values.dtype}{values.shape} instead of {data_xyz.dtype}{data_xyz.shape}."
                f" {SPACE_HINT}"
            )
        if not np.array_equal(values, data_xyz):
            raise OutputPathError(f"{out.name} reads back with different voxel values. {SPACE_HINT}")
        if not np.allclose(back.affine, expected_affine, atol=1e-4):
            raise OutputPathError(f"{out.name} reads back with a different affine. {SPACE_HINT}")
        if (int(back.header["sform_code"]), int(back.header["qform_code"])) != codes:
            raise OutputPathError(f"{out.name} reads back with different sform/qform codes. {SPACE_HINT}")

    with atomic_path(out, overwrite=overwrite, verify=verify) as tmp:
        nib.save(image, str(tmp))
    logger.debug("Wrote %s", out)
    return out


def write_volume(
    array_zyx: np.ndarray,
    geometry: Geometry,
    reference: Path,
    out: Path,
    descrip: str = "",
    overwrite: bool = False,
    dtype: Any = np.float32,
) -> Path:
    """Write a ``(D, H, W)`` (z, y, x) volume on the scan's grid ``geometry`` to ``out``.

    ``.nii``/``.nii.gz`` through nibabel (the input's header, codes and a ``descrip``), other endings
    through :func:`medcam3d.io.write_image`. ``dtype`` float32 for maps, an integer type for label maps.
    """
    volume = np.ascontiguousarray(np.asarray(array_zyx).astype(dtype, copy=False))
    if volume.shape != geometry.shape:
        raise OutputPathError(
            f"Internal error: a map of shape {volume.shape} for a scan of shape {geometry.shape} (z, y, x)."
        )
    if out.name.lower().endswith((".nii", ".nii.gz")):
        return _write_nifti(volume, geometry, reference, out, descrip, overwrite)
    from medcam3d.io.writing import write_image

    return write_image(volume, geometry, out, overwrite=overwrite, dtype=dtype)


def write_sidecar(path: str | os.PathLike[str], payload: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the provenance JSON atomically (verified; NaN refused)."""
    return write_json_atomic(path, payload, overwrite=overwrite)
