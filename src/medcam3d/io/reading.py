"""Read medical images (NIfTI, MHA/MHD, NRRD, DICOM series, nibabel images) into numpy + Geometry."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from medcam3d.errors import (
    GeometryError,
    InputFileError,
    MultipleSeriesError,
    NonFiniteInputError,
    require_extra,
)
from medcam3d.io.geometry import Geometry
from medcam3d.io.series_checks import check_series_files, check_slice_positions

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


def _pick_series(folder: Path, series_uid: str | None) -> tuple[DicomSeries, list[DicomSeries]]:
    """The chosen series and all series of ``folder``."""
    series = list_dicom_series(folder)
    if not series:
        raise InputFileError(
            f"No DICOM series found in folder {folder}. Give the folder that directly holds the .dcm files, "
            "or a NIfTI/MHA/NRRD file."
        )
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s, series
        listing = "\n".join(f"  {s}" for s in series)
        raise InputFileError(f"Series {series_uid!r} is not in {folder}. The folder holds:\n{listing}")
    if len(series) > 1:
        listing = "\n".join(f"  {s}" for s in series)
        raise MultipleSeriesError(
            f"Folder {folder} holds {len(series)} DICOM series; choose one with series_uid=... (--series on the "
            f"command line):\n{listing}",
            series=[s.uid for s in series],
        )
    return series[0], series


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputFileError(f"Input file {path} does not exist.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputFileError(f"Input file {path} is empty.")


def _check_nifti_complete(
    path: Path, label: str | None = None, hint: str = "Copy or export the image again."
) -> None:
    """Raise InputFileError for a truncated NIfTI file (ITK's reader silently fills missing voxels with 0).

    ``label`` names the file in the message (default: ``path``); ``hint`` ends the message.
    """
    label = label or str(path)
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
        raise InputFileError(
            f"Could not read {label}: {exc}. The file is corrupt or truncated. {hint}"
        ) from exc
    if len(header) < 348:
        raise InputFileError(
            f"{label} is too short to be a NIfTI file ({len(header)} bytes); it is corrupt or truncated. {hint}"
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
            raise InputFileError(
                f"Could not read {label}: {exc}. The file is corrupt or truncated. {hint}"
            ) from exc
    if total < expected:
        raise InputFileError(
            f"{label} is truncated: its header describes {expected} bytes but the file holds {total}. {hint}"
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
        chosen, every = _pick_series(path, series_uid)
        check_series_files(path, chosen.uid, [f for s in every for f in s.files])
        files = list(chosen.files)
        try:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputFileError(
                f"Could not read DICOM series {chosen.uid} in {path}: {_itk_message(exc)}"
            ) from exc
        check_slice_positions(path, files, reader)
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


def _is_nifti_path(source: object) -> bool:
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith((".nii", ".nii.gz"))


def _nifti_values(path: Path, array: np.ndarray) -> np.ndarray | None:
    """The voxel values of a float NIfTI file as nibabel reads them, in the (z, y, x) layout of ``array``.

    ITK's NIfTI reader turns NaN and Inf into 0; nibabel keeps them. ``None`` for non-float files.
    """
    nib: Any = require_extra("nibabel", "io", "checking NIfTI files for NaN/Inf values")
    try:
        image = nib.load(str(path))
        if image.get_data_dtype().kind not in "fc":
            return None
        raw = np.asanyarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - ITK read it, nibabel does not: say so, do not guess
        raise InputFileError(
            f"{path} was read by SimpleITK but nibabel cannot read it ({exc}); cannot check it for NaN/Inf. "
            "The file may be damaged: export it again."
        ) from exc
    if raw.size != array.size:  # pragma: no cover - both libraries read the same voxels
        raise InputFileError(f"{path}: SimpleITK and nibabel read a different number of voxels.")
    # NIfTI stores x fastest, like the C-order (z, y, x) array of SimpleITK
    return np.asarray(raw).ravel(order="F").reshape(array.shape)


def _refuse_nonfinite(
    source: ImageSource, array: np.ndarray, allow_nonfinite: bool, dtype: Any
) -> np.ndarray:
    """Raise NonFiniteInputError for NaN/Inf voxels (also those ITK hid in a NIfTI), unless allowed."""
    if array.dtype.kind not in "fc":
        return array
    values = _nifti_values(Path(source), array) if _is_nifti_path(source) else None
    bad = ~np.isfinite(values if values is not None else array)
    count = int(np.count_nonzero(bad))
    if not count:
        return array
    name = source if isinstance(source, (str, os.PathLike)) else f"The {type(source).__name__} image"
    if not allow_nonfinite:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        hidden = " (SimpleITK/ITK would silently read them as 0)" if values is not None else ""
        raise NonFiniteInputError(
            f"{name} holds {count} NaN/Inf voxel(s){hidden}, the first at (z, y, x) = {first}. A CAM of altered "
            "data is misleading: clean the image first, e.g. np.nan_to_num(array, nan=0.0, posinf=0.0, "
            "neginf=0.0), and save it again, or pass allow_nonfinite=True to read the values as they are."
        )
    if dtype is not None and np.dtype(dtype).kind not in "fc":
        raise NonFiniteInputError(
            f"{name} holds {count} NaN/Inf voxel(s), which dtype={np.dtype(dtype)} cannot represent; "
            "choose a float dtype or clean the image first."
        )
    if values is not None:
        array = np.where(bad, values, array).astype(array.dtype, copy=False)
    logger.warning("%s holds %d NaN/Inf voxel(s); read as they are (allow_nonfinite=True).", name, count)
    return array


def read_image(
    source: ImageSource, series_uid: str | None = None, dtype: Any = None, *, allow_nonfinite: bool = False
) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D medical image into a numpy array plus its :class:`Geometry`.

    Args:
        source: a NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``,
            ``.nhdr``) file or any other format SimpleITK reads; a folder holding a DICOM series; a
            ``SimpleITK.Image``; or a nibabel image (``nib.load(...)``).
        series_uid: which series to read when a DICOM folder holds several (see
            :func:`list_dicom_series`); otherwise :class:`~medcam3d.errors.MultipleSeriesError` lists them.
        dtype: convert the array to this numpy dtype (default: keep the file's pixel type).
        allow_nonfinite: read NaN/Inf voxels as they are (also from NIfTI, where ITK alone would turn
            them into 0) instead of refusing the image.

    Returns:
        ``(array, geometry)``. ``array`` has shape ``(D, H, W)`` and axis order **(z, y, x)** — the
        order of ``SimpleITK.GetArrayFromImage``, *not* nibabel's ``(x, y, z)``. A 2-D image comes
        back as one slice, ``(1, H, W)``. ``geometry.spacing``/``origin`` are ``(x, y, z)``.

    Raises:
        InputFileError: missing, empty, corrupt, truncated or unsupported file; a folder without
            DICOM series; a DICOM series with a damaged or missing slice or uneven slice spacing.
        MultipleSeriesError: a DICOM folder with several series and no ``series_uid``.
        NonFiniteInputError: the image holds NaN or Inf (any format), unless ``allow_nonfinite``.
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
    array = _refuse_nonfinite(source, array, allow_nonfinite, dtype)
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
