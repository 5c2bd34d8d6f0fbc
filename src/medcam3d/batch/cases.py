"""What a case is for the batch layer, and the one check of case names every command shares.

A case is anything with an ``identifier`` (a plain name: every output of the case is named after
it, ``<case>...`` in one output folder) and ``files`` (its input files or folders, e.g. the
channel files ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` of nnU-Net, or one DICOM series
folder). Both commands' own case classes (:class:`medcam3d.nnunet.files.Case`,
:class:`medcam3d.explain.cases.Case`) already have that shape; :class:`Case` here is a plain one for
Python users.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medcam3d.errors import InputFileError

__all__ = ["Case", "CaseLike", "InputsOf", "case_inputs", "check_case_names", "unsafe_case_name"]

PathLike = str | os.PathLike[str]


@runtime_checkable
class CaseLike(Protocol):
    """One unit of work: ``identifier`` names its outputs, ``files`` are its inputs (in order)."""

    @property
    def identifier(self) -> str: ...

    @property
    def files(self) -> Sequence[Any]: ...


#: Lists every input file of a case whose content shapes its result (hashed into the manifest).
InputsOf = Callable[[Any], Sequence[PathLike]]


@dataclass(frozen=True)
class Case:
    """A case: its identifier, its input files (or DICOM folders) and further inputs that shape the
    result without being images of the case (a target mask, a previous cascade stage's segmentation).

    ``extra_inputs`` are hashed into the manifest like ``files`` (a changed mask recomputes the case).
    """

    identifier: str
    files: tuple[Path, ...]
    extra_inputs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        object.__setattr__(self, "extra_inputs", tuple(Path(f) for f in self.extra_inputs))


def case_inputs(case: Any) -> list[Path]:
    """The inputs of ``case`` that the manifest hashes: ``case.files`` then ``case.extra_inputs``
    (when the case has that attribute; ``None`` entries are left out)."""
    files = [Path(f) for f in case.files if f is not None]
    extra = getattr(case, "extra_inputs", ()) or ()
    return files + [Path(f) for f in extra if f is not None]


_SEPARATORS = {"/", "\\", os.sep, os.altsep or "/"}


def unsafe_case_name(identifier: object) -> str | None:
    """Why ``identifier`` cannot name output files, or ``None`` when it can.

    Refused: a non-string, an empty name, ``.`` and ``..``, a name holding a path separator
    (``/``, ``\\``), a NUL or another control character (a newline in a file name breaks the
    line-based tools people use on output folders), and names with leading or trailing spaces.
    """
    if not isinstance(identifier, str):
        return f"not a string ({type(identifier).__name__})"
    if identifier in ("", ".", ".."):
        return "empty" if not identifier else f"{identifier!r} names a folder, not a file"
    if any(s in identifier for s in _SEPARATORS):
        return "holds a path separator"
    if any(unicodedata.category(ch) == "Cc" for ch in identifier):
        return "holds a control character (newline, tab, NUL ...)"
    if identifier != identifier.strip():
        return "starts or ends with a space"
    return None


def _describe(case: Any) -> str:
    try:
        files = [str(f) for f in case.files]
    except Exception:  # noqa: BLE001 - only for the message
        files = []
    return ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "") or "no files"


def check_case_names(cases: Sequence[Any]) -> None:
    """Refuse, before any work, case names that cannot name output files or that repeat.

    Outputs are named after the case (``<case><ending>``, ``<folder>/<case>/...``), so a case named
    ``.`` or ``..``, an empty name or a name holding a path separator would write outside its place,
    and two cases of one name (from two input folders) would overwrite each other's outputs and
    share one manifest record. Every offending case is listed, with its files.

    Args:
        cases: objects with ``identifier`` and ``files`` (:class:`CaseLike`).

    Raises:
        InputFileError: naming each unsafe and each repeated case name and how to fix it.
    """
    problems: list[str] = []
    bad = []
    for case in cases:
        if not hasattr(case, "identifier") or not hasattr(case, "files"):
            raise InputFileError(
                f"{case!r} is not a case: a case needs an 'identifier' (its name) and 'files' (its inputs); "
                "use medcam3d.batch.Case(identifier, files)."
            )
        why = unsafe_case_name(case.identifier)
        if why is not None:
            bad.append(f"{case.identifier!r} ({why}; files: {_describe(case)})")
    if bad:
        problems.append(
            "case name(s) that cannot name output files: "
            + "; ".join(bad)
            + ". Rename the inputs so that each case has a plain name (letters, digits, '_', '-', '.')"
        )
    by_name: dict[str, list[Any]] = {}
    for case in cases:
        if isinstance(case.identifier, str):
            by_name.setdefault(case.identifier, []).append(case)
    repeated = {name: group for name, group in by_name.items() if len(group) > 1}
    if repeated:
        listed = "; ".join(
            f"{name!r} {len(group)} times ({' and '.join(_describe(c) for c in group)})"
            for name, group in repeated.items()
        )
        problems.append(
            f"several cases share a name, so their outputs would overwrite each other: {listed}. Rename one "
            "of them, give each input only once, or run the input folders one at a time into different "
            "output folders"
        )
    if problems:
        raise InputFileError("Refusing the input: " + "; and ".join(problems) + ".")
