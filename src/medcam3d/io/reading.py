"""Read medical images (NIfTI, MHA/MHD, NRRD, DICOM series, nibabel images) into numpy + Geometry."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from medcam3d.errors import GeometryError, InputFileError, MultipleSeriesError, require_extra
from medcam3d.io.geometry import Geometry

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK

__all__ = ["ImageSource", "DicomSeries", "read_image", "read_geometry", "read_sitk", "list_dicom_series"]

logger = logging.getLogger(__name__)

#: Anything :func:`read_image` accepts: a file path, a DICOM folder, a ``SimpleITK.Image`` or a nibabel image.
ImageSource = Union[str, "os.PathLike[str]", Any]


def _sitk() -> Any:
    return require_extra("SimpleITK", "io", "reading and writing medical images")


def _is_nibabel_image(obj: object) -> bool:
    return hasattr(obj, "affine") and hasattr(obj, "dataobj") and hasattr(obj, "header")


def _is_sitk_image(obj: object) -> bool:
    return type(obj).__name__ == "Image" and type(obj).__module__.startswith("SimpleITK")


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder.

    Attributes:
        uid: the Series Instance UID (0020,000E); pass it as ``series_uid`` to :func:`read_image`.
        files: the slice files, sorted by position along the slice normal.
        description: Series Description (0008,103E), may be empty.
        modality: Modality (0008,0060), may be empty.
    """

    uid: str
    files: tuple[str, ...]
    description: str = ""
    modality: str = ""

    def __str__(self) -> str:
        what = " ".join(p for p in (self.modality, repr(self.description) if self.description else "") if p)
        return f"{self.uid} ({len(self.files)} files{', ' + what if what else ''})"


def list_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """List the DICOM series stored in ``folder`` (not recursive), with their files and descriptions."""
    sitk = _sitk()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(
            f"{folder} is not a folder; a DICOM series is read from the folder that holds its files."
        )
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        description = modality = ""
        if files:
            try:
                reader = sitk.ImageFileReader()
                reader.SetFileName(files[0])
                reader.ReadImageInformation()
                if reader.HasMetaDataKey("0008|103e"):
                    description = reader.GetMetaData("0008|103e").strip()
                if reader.HasMetaDataKey("0008|0060"):
                    modality = reader.GetMetaData("0008|0060").strip()
            except RuntimeError:  # pragma: no cover - a broken first slice shows up when reading
                pass
        series.append(DicomSeries(uid=uid, files=files, description=description, modality=modality))
    return series


def _pick_series(folder: Path, series_uid: str | None) -> DicomSeries:
    series = list_dicom_series(folder)
    if not series:
        raise InputFileError(
            f"No DICOM series found in folder {folder}. Give the folder that directly holds the .dcm files, "
            "or a NIfTI/MHA/NRRD file."
        )
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        listing = "\n".join(f"  {s}" for s in series)
        raise InputFileError(f"Series {series_uid!r} is not in {folder}. The folder holds:\n{listing}")
    if len(series) > 1:
        listing = "\n".join(f"  {s}" for s in series)
        raise MultipleSeriesError(
            f"Folder {folder} holds {len(series)} DICOM series; choose one with series_uid=... (--series on the "
            f"command line):\n{listing}",
            series=[s.uid for s in series],
        )
    return series[0]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputFileError(f"Input file {path} does not exist.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputFileError(f"Input file {path} is empty.")


def _check_nifti_complete(path: Path) -> None:
    """Raise InputFileError for a truncated NIfTI file (ITK's reader silently fills missing voxels with 0)."""
    import gzip
    import struct

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    compressed = name.endswith(".gz")
    opener: Any = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
    except (OSError, EOFError) as exc:
        raise InputFileError(f"Could not read {path}: {exc}. The file is corrupt or truncated.") from exc
    if len(header) < 348:
        raise InputFileError(
            f"{path} is too short to be a NIfTI file ({len(header)} bytes); it is corrupt or truncated."
        )
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return  # not a NIfTI header we know: let SimpleITK judge
    n_dims = max(0, min(int(dims[0]), 7))
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dims + 1]], dtype=np.int64))
    expected = max(offset, sizeof_hdr) + (voxels * max(int(bitpix), 1) + 7) // 8
    if not compressed:
        total = path.stat().st_size
    else:
        # fast path: a complete single-member gzip file ends with the uncompressed size (mod 2**32)
        with open(path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            if struct.unpack("<I", raw.read(4))[0] == expected % 2**32:
                return
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        except (OSError, EOFError) as exc:
            raise InputFileError(f"Could not read {path}: {exc}. The file is corrupt or truncated.") from exc
    if total < expected:
        raise InputFileError(
            f"{path} is truncated: its header describes {expected} bytes but the file holds {total}. "
            "Copy or export the image again."
        )


def read_sitk(source: ImageSource, series_uid: str | None = None, information_only: bool = False) -> Any:
    """Read ``source`` as a ``SimpleITK.Image`` (the engine behind :func:`read_image`).

    ``source`` is a file (NIfTI ``.nii``/``.nii.gz``, ``.mha``/``.mhd``, ``.nrrd``/``.nhdr`` or anything
    else SimpleITK reads), a folder with one DICOM series (or several plus ``series_uid``), a
    ``SimpleITK.Image`` (returned as is) or a nibabel image (converted). With ``information_only``
    a file is not decoded: the returned image is an empty one with the file's geometry (cheap).
    """
    sitk = _sitk()
    if _is_sitk_image(source):
        return source
    if _is_nibabel_image(source):
        array, geometry = _from_nibabel(source)
        return geometry.to_sitk(array)
    if not isinstance(source, (str, os.PathLike)):
        raise InputFileError(
            f"Cannot read an image from a {type(source).__name__}; give a file path, a DICOM folder, "
            "a SimpleITK.Image or a nibabel image."
        )
    path = Path(source)
    _check_file(path)
    if path.is_dir():
        chosen = _pick_series(path, series_uid)
        files = list(chosen.files)
        try:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputFileError(
                f"Could not read DICOM series {chosen.uid} in {path}: {_itk_message(exc)}"
            ) from exc
        return image
    try:
        if information_only:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return _InfoImage(reader)
        _check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputFileError(
            f"Could not read {path} as a medical image ({_itk_message(exc)}). The file may be corrupt or "
            "truncated, or in a format SimpleITK does not know (NIfTI, MHA/MHD, NRRD and DICOM are supported)."
        ) from exc


class _InfoImage:
    """The parts of the SimpleITK.Image interface that :meth:`Geometry.from_sitk` needs, from a header."""

    def __init__(self, reader: Any) -> None:
        self._r = reader

    def GetDimension(self) -> int:  # noqa: N802 - SimpleITK naming
        return int(self._r.GetDimension())

    def GetSize(self) -> tuple[int, ...]:  # noqa: N802
        return tuple(self._r.GetSize())

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return tuple(self._r.GetSpacing())

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return tuple(self._r.GetOrigin())

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return tuple(self._r.GetDirection())


def _itk_message(exc: BaseException) -> str:
    """The informative line of an ITK exception (they are long and multi-line)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()
    for ln in reversed(lines):
        if not ln.lower().startswith(("itk::", "file:", "line:")):
            return ln[:300]
    return text[:300]


def _from_nibabel(image: Any) -> tuple[np.ndarray, Geometry]:
    geometry = Geometry.from_nibabel(image)
    data = np.asanyarray(image.dataobj)
    if data.ndim > 3:  # trailing singleton axes only (checked by Geometry.from_nibabel)
        data = data.reshape(data.shape[:3])
    while data.ndim < 3:
        data = data[..., np.newaxis]
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))), geometry


def read_image(
    source: ImageSource, series_uid: str | None = None, dtype: Any = None
) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D medical image into a numpy array plus its :class:`Geometry`.

    Args:
        source: a NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``,
            ``.nhdr``) file or any other format SimpleITK reads; a folder holding a DICOM series; a
            ``SimpleITK.Image``; or a nibabel image (``nib.load(...)``).
        series_uid: which series to read when a DICOM folder holds several (see
            :func:`list_dicom_series`); otherwise :class:`~medcam3d.errors.MultipleSeriesError` lists them.
        dtype: convert the array to this numpy dtype (default: keep the file's pixel type).

    Returns:
        ``(array, geometry)``. ``array`` has shape ``(D, H, W)`` and axis order **(z, y, x)** — the
        order of ``SimpleITK.GetArrayFromImage``, *not* nibabel's ``(x, y, z)``. A 2-D image comes
        back as one slice, ``(1, H, W)``. ``geometry.spacing``/``origin`` are ``(x, y, z)``.

    Raises:
        InputFileError: missing, empty, corrupt or unsupported file; a folder without DICOM series.
        MultipleSeriesError: a DICOM folder with several series and no ``series_uid``.
        GeometryError: a 4-D / multi-channel image.
    """
    sitk = _sitk()
    if _is_nibabel_image(source):
        array, geometry = _from_nibabel(source)
    else:
        image = read_sitk(source, series_uid=series_uid)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise GeometryError(
                f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector / RGB "
                "image); medcam3d reads scalar volumes. Extract one channel first."
            )
        geometry = Geometry.from_sitk(image)
        array = sitk.GetArrayFromImage(image)
        array = array.reshape(geometry.shape)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    logger.debug(
        "Read %s: %s", source if isinstance(source, (str, os.PathLike)) else type(source).__name__, geometry
    )
    return array, geometry


def read_geometry(source: ImageSource | Geometry, series_uid: str | None = None) -> Geometry:
    """The :class:`Geometry` of an image without decoding its voxels (for files), see :func:`read_image`.

    ``source`` may also be a :class:`Geometry` (returned as is), a ``SimpleITK.Image`` or a nibabel image.
    """
    if isinstance(source, Geometry):
        return source
    if _is_nibabel_image(source):
        return Geometry.from_nibabel(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Geometry.from_sitk(read_sitk(source, information_only=True))
    return Geometry.from_sitk(read_sitk(source, series_uid=series_uid))


def to_sitk_image(array: np.ndarray, geometry: Geometry) -> SimpleITK.Image:
    """Shorthand for :meth:`Geometry.to_sitk`: a ``SimpleITK.Image`` from a ``(D, H, W)`` array."""
    return geometry.to_sitk(array)
