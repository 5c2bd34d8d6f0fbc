"""Finding the cases of a run: a folder, a list of files, one scan or a DICOM series folder.

A case is one scan with one or more channel files. In a folder, files named like nnU-Net's
``<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` (every file with a 4-digit channel suffix) are the
channels of one case; otherwise every image file is a case. A folder holding DICOM files (and no
other images) is one case; a folder of DICOM series folders gives one case per series folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medcam3d.batch.cases import check_case_names
from medcam3d.errors import InputFileError

__all__ = ["Case", "IMAGE_ENDINGS", "find_cases", "find_masks", "image_ending", "strip_ending"]

#: endings read as image files (DICOM series are folders)
IMAGE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One scan: its identifier (used in output names) and its channel files (or DICOM folder)."""

    identifier: str
    files: tuple[Path, ...]
    mask: Path | None = None

    @property
    def extra_inputs(self) -> tuple[Path, ...]:
        """Inputs besides the scan that shape the results (the target mask): the batch manifest
        hashes them too, so a changed mask recomputes the case."""
        return (self.mask,) if self.mask is not None else ()

    @property
    def reference(self) -> Path:
        """The file (or DICOM folder) whose geometry the outputs get: the first channel."""
        return self.files[0]


def image_ending(path: Path) -> str:
    """The image ending of ``path`` (``".nii.gz"``, ``".mha"``...; ``""`` for a folder or another file)."""
    name = path.name.lower()
    return next((e for e in IMAGE_ENDINGS if name.endswith(e)), "")


def strip_ending(path: Path) -> str:
    ending = image_ending(path)
    return path.name[: -len(ending)] if ending else path.name


def _is_dicom_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files or any(image_ending(p) for p in files):
        return False
    from medcam3d.errors import require_extra

    sitk = require_extra("SimpleITK", "io", "reading DICOM series")
    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))  # type: ignore[attr-defined]


def _cases_in_folder(folder: Path) -> list[Case]:
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and image_ending(p) and not p.name.startswith(".")
    )
    if images:
        stems = [strip_ending(p) for p in images]
        matches = [_CHANNEL.match(s) for s in stems]
        if all(matches):
            grouped: dict[str, list[tuple[int, Path]]] = {}
            for m, p in zip(matches, images):
                assert m is not None
                grouped.setdefault(m["case"], []).append((int(m["channel"]), p))
            cases = []
            for identifier, channels in sorted(grouped.items()):
                numbers = [c for c, _ in sorted(channels)]
                if numbers != list(range(len(numbers))):
                    raise InputFileError(
                        f"Case {identifier!r} in {folder} has channel files {numbers}; nnU-Net naming needs "
                        f"_0000 ... _{len(numbers) - 1:04d} without gaps."
                    )
                cases.append(Case(identifier, tuple(p for _, p in sorted(channels))))
            return cases
        return [Case(s, (p,)) for s, p in zip(stems, images)]
    if _is_dicom_folder(folder):
        return [Case(folder.name, (folder,))]
    series = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_dicom_folder(p)
    )
    if series:
        return [Case(p.name, (p,)) for p in series]
    raise InputFileError(
        f"{folder} holds no image files ({', '.join(IMAGE_ENDINGS)}) and no DICOM series. Give a folder of scans, "
        "scan files, or a DICOM series folder."
    )


def find_cases(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Case]:
    """The cases of ``inputs``: a folder, one file, a DICOM folder, or a list of those.

    Raises:
        InputFileError: a path does not exist, a folder holds no scans, two cases share an
            identifier (their outputs would collide) or a name cannot name files
            (:func:`medcam3d.batch.check_case_names`).
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputFileError("No inputs given: pass a folder, scan files or a DICOM series folder.")
    cases: list[Case] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise InputFileError(f"Input {path} does not exist.")
        if path.is_dir():
            cases.extend(_cases_in_folder(path))
        elif image_ending(path):
            cases.append(Case(strip_ending(path), (path,)))
        else:
            raise InputFileError(
                f"Input {path} is not an image file this command reads ({', '.join(IMAGE_ENDINGS)}) nor a DICOM folder."
            )
    check_case_names(cases)
    return cases


def find_masks(cases: Sequence[Case], masks: str | os.PathLike[str]) -> list[Case]:
    """The cases with their target mask: ``masks`` is one file (one case only) or a folder holding
    ``<case><ending>`` (or the input's own file name) for every case.

    Raises:
        InputFileError: a mask is missing (every missing case is named).
    """
    from dataclasses import replace

    path = Path(masks)
    if path.is_file():
        if len(cases) != 1:
            raise InputFileError(
                f"--target-mask {path} is one file but there are {len(cases)} cases: give a folder with one mask "
                "per case, named <case>.nii.gz."
            )
        return [replace(cases[0], mask=path)]
    if not path.is_dir():
        raise InputFileError(f"--target-mask {path} does not exist.")
    found = {strip_ending(p): p for p in path.iterdir() if p.is_file() and image_ending(p)}
    out, missing = [], []
    for case in cases:
        mask = found.get(case.identifier) or found.get(strip_ending(case.files[0]))
        if mask is None:
            missing.append(case.identifier)
        else:
            out.append(replace(case, mask=mask))
    if missing:
        raise InputFileError(
            f"--target-mask {path} has no mask for case(s) {', '.join(missing[:10])}: name each <case>.nii.gz "
            "(or like the input file)."
        )
    return out
