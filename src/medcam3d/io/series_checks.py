"""Checks that a DICOM series is read whole and evenly spaced (ITK only warns on stderr otherwise).

Two ways a series is silently read wrong by GDCM/ITK, both refused by :func:`medcam3d.io.read_image`:

* a **damaged slice file** (truncated, corrupt) is left out of the series listing, so the volume
  has one slice less and the slice spacing is averaged over the hole;
* a **missing slice** (file deleted, transfer incomplete) leaves a gap; ITK spreads the remaining
  slices evenly between the first and the last one.

:func:`check_series_files` compares the files in the folder with those of the listed series;
:func:`check_slice_positions` checks that the slice positions (Image Position (Patient) projected
on the slice normal from Image Orientation (Patient)) are evenly spaced.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d.errors import InputFileError

__all__ = ["SLICE_POSITION_TOLERANCE", "check_series_files", "check_slice_positions", "dicom_series_uid"]

logger = logging.getLogger(__name__)

#: How far (as a fraction of the slice spacing) a slice may lie from where an evenly spaced grid puts
#: it, and how far one gap between neighbouring slices may differ from the median gap. 10 %: far above
#: the rounding of Image Position (Patient) strings, far below a missing slice (100 %).
SLICE_POSITION_TOLERANCE = 0.1

#: File endings that mark a file as meant to be DICOM even without the ``DICM`` magic number.
DICOM_ENDINGS = (".dcm", ".dicom", ".ima")

_HEADER_BYTES = 4 << 20
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


class _Truncated(Exception):
    pass


class _Walker:
    """Just enough of a DICOM parser to find one top-level element (no dictionary needed)."""

    def __init__(self, data: bytes, offset: int, explicit: bool, little: bool) -> None:
        self.data, self.pos, self.explicit = data, offset, explicit
        self.end = "<" if little else ">"

    def _unpack(self, fmt: str, size: int) -> tuple[Any, ...]:
        if self.pos + size > len(self.data):
            raise _Truncated
        values = struct.unpack_from(self.end + fmt, self.data, self.pos)
        self.pos += size
        return values

    def element(self) -> tuple[tuple[int, int], int, bool]:
        """Read one element header: ``(tag, length, is_sequence)``; the position is then at the value."""
        group, elem = self._unpack("HH", 4)
        tag = (group, elem)
        if group == 0xFFFE:  # item / delimiters never have a VR
            (length,) = self._unpack("I", 4)
            return tag, length, False
        if self.explicit:
            vr = self.data[self.pos : self.pos + 2]
            self.pos += 2
            if vr in _LONG_VRS:
                self.pos += 2
                (length,) = self._unpack("I", 4)
            else:
                (length,) = self._unpack("H", 2)
            return tag, length, vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
        (length,) = self._unpack("I", 4)
        return tag, length, length == _UNDEFINED

    def skip_value(self, length: int, sequence: bool) -> None:
        if length != _UNDEFINED:
            self.pos += length
            if self.pos > len(self.data):
                raise _Truncated
            return
        if not sequence:
            raise _Truncated  # encapsulated pixel data etc.: nothing we need lies beyond
        while True:  # items of an undefined-length sequence, up to the sequence delimiter
            tag, item_length, _ = self.element()
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise _Truncated
            if item_length != _UNDEFINED:
                self.skip_value(item_length, False)
                continue
            while True:
                tag, length, is_sequence = self.element()
                if tag == _ITEM_END:
                    break
                self.skip_value(length, is_sequence)


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def dicom_series_uid(path: str | os.PathLike[str]) -> str | None:
    """The top-level Series Instance UID (0020,000E) of a DICOM file, read without GDCM.

    Returns ``None`` when it cannot be found (the file is cut before it, not DICOM, or deflated).
    Works on damaged files as long as the header up to that element is intact.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(_HEADER_BYTES)
    except OSError:
        return None
    explicit, little, offset = False, True, 0
    if len(data) >= 132 and data[128:132] == b"DICM":
        meta = _Walker(data, 132, explicit=True, little=True)
        syntax = ""
        try:
            while meta.pos + 4 <= len(data) and struct.unpack_from("<H", data, meta.pos)[0] == 0x0002:
                tag, length, is_sequence = meta.element()
                if tag == (0x0002, 0x0010):
                    syntax = _text(data[meta.pos : meta.pos + length])
                meta.skip_value(length, is_sequence)
        except _Truncated:
            return None
        if syntax.endswith(".99") or syntax == "1.2.840.10008.1.2.1.99":  # deflated: cannot look inside
            return None
        explicit = syntax != "1.2.840.10008.1.2"
        little = syntax != "1.2.840.10008.1.2.2"
        offset = meta.pos
    walker = _Walker(data, offset, explicit=explicit, little=little)
    try:
        while True:
            tag, length, is_sequence = walker.element()
            if tag == (0x0020, 0x000E):
                if length == _UNDEFINED or walker.pos + length > len(data):
                    return None
                return _text(data[walker.pos : walker.pos + length]) or None
            if tag > (0x0020, 0x000E) and tag[0] != 0xFFFE:
                return None
            walker.skip_value(length, is_sequence)
    except _Truncated:
        return None


def _looks_like_dicom(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_ENDINGS):
        return True
    try:
        with open(path, "rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def check_series_files(folder: Path, series_uid: str, listed: Sequence[str]) -> None:
    """Raise :class:`InputFileError` for DICOM files in ``folder`` that GDCM left out of every series.

    ``listed`` are the files of all series GDCM found in ``folder``. A left-out file that looks like
    DICOM (``DICM`` magic number or a ``.dcm``/``.dicom``/``.ima`` ending) is an error when it
    belongs to ``series_uid`` or when its series cannot be told (damaged before the Series Instance
    UID); one that belongs to another series (e.g. an RTSTRUCT) is ignored. Hidden files,
    folders and ``DICOMDIR`` are ignored.
    """
    known = {Path(f).name for f in listed}
    damaged: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if name in known or name.startswith(".") or name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        path = Path(entry.path)
        if not _looks_like_dicom(path):
            continue
        uid = dicom_series_uid(path)
        if uid is not None and uid != series_uid:
            logger.debug("%s belongs to series %s, not %s; ignored", path, uid, series_uid)
            continue
        size = entry.stat().st_size
        which = "of this series" if uid == series_uid else "of unknown series"
        damaged.append(f"{name} ({size} bytes, {which})")
    if damaged:
        raise InputFileError(
            f"DICOM series {series_uid} in {folder}: {len(damaged)} file(s) cannot be read and would be left "
            f"out of the volume (one slice less, the spacing averaged over the hole): {', '.join(damaged)}. "
            "The file(s) are truncated or corrupt: copy or export the series again (or, if they are not "
            "slices of this series, move them out of the folder)."
        )


def _numbers(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.replace(" ", "").split("\\") if v != ""], dtype=np.float64)
    except ValueError:
        return None
    if values.size != count or not np.all(np.isfinite(values)):
        return None
    return values


def check_slice_positions(folder: Path, files: Sequence[str], reader: Any) -> None:
    """Raise :class:`InputFileError` if the slices read by ``reader`` are not evenly spaced.

    ``reader`` is the ``SimpleITK.ImageSeriesReader`` that read ``files`` with
    ``MetaDataDictionaryArrayUpdateOn()``. Each slice's position is its Image Position (Patient)
    (0020,0032) projected on the slice normal (the cross product of the two Image Orientation
    (Patient) (0020,0037) vectors). Refused: slices with different orientations, two slices at the
    same position, and positions that are not evenly spaced — a slice more than
    :data:`SLICE_POSITION_TOLERANCE` of the slice spacing from the evenly spaced grid ITK assumes,
    or one gap differing by more than that from the median gap. Series without these tags (one file,
    multi-frame files, secondary captures) are not checked.
    """
    n = len(files)
    if n < 2:
        return
    positions, orientations = [], []
    for index in range(n):
        if not (reader.HasMetaDataKey(index, "0020|0032") and reader.HasMetaDataKey(index, "0020|0037")):
            logger.debug("%s: slice %d has no position/orientation; spacing not checked", folder, index)
            return
        position = _numbers(reader.GetMetaData(index, "0020|0032"), 3)
        orientation = _numbers(reader.GetMetaData(index, "0020|0037"), 6)
        if position is None or orientation is None:
            logger.debug("%s: slice %d has an unreadable position/orientation; not checked", folder, index)
            return
        positions.append(position)
        orientations.append(orientation)
    names = [Path(f).name for f in files]
    first = orientations[0]
    for index, orientation in enumerate(orientations):
        if np.abs(orientation - first).max() > 1e-3:
            raise InputFileError(
                f"DICOM series in {folder} mixes slice orientations: {names[index]} has Image Orientation "
                f"{orientation.tolist()}, {names[0]} has {first.tolist()}. Read one orientation at a time."
            )
    normal = np.cross(first[:3], first[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return
    z = np.asarray(positions) @ (normal / norm)
    gaps = np.diff(z)
    step = (z[-1] - z[0]) / (n - 1)
    if abs(step) < 1e-6:
        raise InputFileError(
            f"DICOM series in {folder}: all {n} slices lie at the same position ({z[0]:.3f} mm along the "
            "slice normal); it holds several acquisitions or time points. Split them into separate folders."
        )
    tolerance = SLICE_POSITION_TOLERANCE * abs(step)
    same = np.flatnonzero(np.abs(gaps) < tolerance)
    if same.size:
        k = int(same[0])
        raise InputFileError(
            f"DICOM series in {folder}: {names[k]} and {names[k + 1]} lie at the same position "
            f"({z[k]:.3f} mm along the slice normal): the folder holds duplicate slices or several "
            "acquisitions. Remove the duplicates or split the acquisitions."
        )
    median = float(np.median(gaps))
    deviation = np.abs(z - (z[0] + step * np.arange(n)))
    worst = int(np.argmax(np.abs(gaps - median)))
    if np.abs(gaps[worst] - median) > tolerance or deviation.max() > tolerance:
        missing = gaps[worst] / median - 1 if median else 0.0
        what = (
            f"about {round(missing)} slice(s) seem to be missing there"
            if missing > 0.5
            else "the series mixes slice spacings"
        )
        raise InputFileError(
            f"DICOM series in {folder} is not evenly spaced: {names[worst]} ({z[worst]:.3f} mm) and "
            f"{names[worst + 1]} ({z[worst + 1]:.3f} mm) are {abs(gaps[worst]):.3f} mm apart while the "
            f"median gap is {abs(median):.3f} mm; {what}. Read as a volume, slices would lie up to "
            f"{deviation.max():.3f} mm from their true position (tolerance {SLICE_POSITION_TOLERANCE:.0%} of "
            "the spacing). Copy or export the complete series, or resample it to even spacing first."
        )
