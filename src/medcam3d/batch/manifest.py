"""The manifest of an output folder: one record per finished case, written atomically after each.

``<output folder>/medcam3d_manifest.json`` holds the settings that shape the results (given by the
command: model, method, layers, classes ...) and, per finished case, its input files (path, size,
modification time, SHA-256 of the content), the outputs written (path relative to the output
folder, size), timings and where it ran. A record is added only after every output of the case was
written (atomically) and checked, and the manifest is replaced atomically
(:func:`medcam3d._atomic.write_json_atomic`), so a run killed at any moment leaves a manifest that
lists only complete cases.

A re-run with the same settings skips a case when its record matches: the same number of inputs
with the same content (a file whose path, size and modification time are unchanged is taken as
unchanged without reading it, unless ``verify_hashes``) and every recorded output still present
with its recorded size. Other cases are computed again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

from medcam3d._atomic import describe_os_error, write_json_atomic
from medcam3d.errors import ConfigurationError, InputFileError, OutputPathError

__all__ = [
    "MANIFEST_NAME",
    "check_manifest_name",
    "Manifest",
    "SettingsMismatchError",
    "fingerprint_files",
    "hash_input",
    "normalize_settings",
    "settings_differences",
]

logger = logging.getLogger(__name__)

#: The manifest's file name in the output folder.
MANIFEST_NAME = "medcam3d_manifest.json"
FORMAT = "medcam3d-batch-manifest"
VERSION = 1
_CHUNK = 1 << 20


class SettingsMismatchError(ConfigurationError):
    """The output folder's manifest was written with other settings; ``differences`` names them."""

    def __init__(self, message: str, differences: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differences: list[str] = list(differences)


def check_manifest_name(name: str) -> str:
    """A manifest's file name: ``medcam3d_manifest*.json`` in the output folder itself (several
    manifests can share a folder, e.g. one per CAM method of ``medcam3d nnunet``)."""
    if (
        not isinstance(name, str)
        or not name.startswith("medcam3d_manifest")
        or not name.endswith(".json")
        or any(sep in name for sep in ("/", "\\", "\0"))
    ):
        raise ConfigurationError(
            f"manifest_name must be a file name 'medcam3d_manifest<...>.json' in the output folder, got {name!r}."
        )
    return name


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ settings
def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # small numpy arrays
        return value.tolist()
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def normalize_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as plain JSON values (tuples → lists, paths → strings, classes → dotted names).

    Raises:
        ConfigurationError: ``settings`` is not a mapping with string keys, or holds a value that
            has no JSON form (NaN included).
    """
    if not isinstance(settings, Mapping):
        raise ConfigurationError(
            f"settings must be a mapping of the options that shape the results, got {type(settings).__name__}."
        )
    bad_keys = [k for k in settings if not isinstance(k, str)]
    if bad_keys:
        raise ConfigurationError(f"settings keys must be strings, got {bad_keys!r}.")
    try:
        text = json.dumps(dict(settings), sort_keys=True, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"The batch settings cannot be written to the manifest: {exc}. Give plain values (numbers, "
            "strings, lists, dicts, paths) that describe how the results are made."
        ) from exc
    result: dict[str, Any] = json.loads(text)
    return result


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


_ABSENT = object()


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"name: old -> new"`` for each (dotted, for nested dicts) setting that differs."""
    flat_old: dict[str, Any] = {}
    flat_new: dict[str, Any] = {}
    _flatten(dict(old), "", flat_old)
    _flatten(dict(new), "", flat_new)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        a, b = flat_old.get(key, _ABSENT), flat_new.get(key, _ABSENT)
        if a != b:
            shown_a = "(not set)" if a is _ABSENT else json.dumps(a)
            shown_b = "(not set)" if b is _ABSENT else json.dumps(b)
            lines.append(f"{key}: {shown_a} -> {shown_b}")
    return lines


def _settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ inputs
def _hash_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)


def hash_input(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A record of one input: ``{"path", "size", "mtime_ns", "sha256"}``.

    A folder (a DICOM series) is hashed over its files, sorted by their relative path (names and
    contents), its size is their total and its time the newest.

    Raises:
        InputFileError: the input is missing or cannot be read.
    """
    source = Path(path)
    try:
        resolved = source.resolve()
        if resolved.is_dir():
            digest = hashlib.sha256()
            size, mtime = 0, 0
            members = sorted(p for p in resolved.rglob("*") if p.is_file())
            for member in members:
                stat = member.stat()
                size += stat.st_size
                mtime = max(mtime, stat.st_mtime_ns)
                digest.update(member.relative_to(resolved).as_posix().encode("utf-8") + b"\0")
                _hash_file(member, digest)
            return {"path": str(resolved), "size": size, "mtime_ns": mtime, "sha256": digest.hexdigest()}
        stat = resolved.stat()
        digest = hashlib.sha256()
        _hash_file(resolved, digest)
    except FileNotFoundError as exc:
        raise InputFileError(f"Input {source} does not exist.") from exc
    except OSError as exc:
        raise InputFileError(f"Cannot read input {source}: {describe_os_error(exc)}") from exc
    return {
        "path": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest.hexdigest(),
    }


def fingerprint_files(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``[{"name", "size", "sha256"}]`` of files that shape every result of a run (a checkpoint,
    ``plans.json``): put it in the settings so that a retrained model refuses to resume."""
    out = []
    for p in paths:
        record = hash_input(p)
        out.append({"name": Path(p).name, "size": record["size"], "sha256": record["sha256"]})
    return out


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        resolved = path.resolve()
        if resolved.is_dir():
            return None  # folders are always re-hashed (a file inside may change)
        stat = resolved.stat()
    except OSError:
        return None
    return str(resolved), stat.st_size, stat.st_mtime_ns


# ------------------------------------------------------------------ the manifest
CaseState = Literal["finished", "new", "inputs changed", "outputs missing", "overwrite"]


@dataclass
class Manifest:
    """The manifest of one output folder (see the module docstring for the format).

    Attributes:
        path: ``<output folder>/medcam3d_manifest.json``.
        settings: the normalised settings of the run that owns the folder.
        records: case identifier → record (``inputs``, ``outputs``, ``timings`` ...).
        created: when the first run with these settings started (ISO 8601, UTC).
    """

    path: Path
    settings: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    #: the records of the manifest an ``overwrite`` run replaces (their outputs are cleaned up case by case)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)
    _owners: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._reindex()

    def _reindex(self) -> None:
        self._owners = {
            str(o.get("path")): identifier
            for identifier, record in self.records.items()
            for o in record.get("outputs", [])
            if isinstance(o, dict)
        }

    @property
    def folder(self) -> Path:
        return self.path.parent

    # -------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest | None:
        """The manifest at ``path``, or ``None`` when there is none.

        Raises:
            OutputPathError: the file exists but is not a medcam3d manifest (damaged or foreign).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputPathError(f"Cannot read the manifest {path}: {describe_os_error(exc)}") from exc
        try:
            payload = json.loads(text)
            if payload.get("format") != FORMAT:
                raise ValueError(f"its 'format' is {payload.get('format')!r}, not {FORMAT!r}")
            if int(payload.get("version", 0)) > VERSION:
                raise ValueError(f"it has version {payload['version']}; this medcam3d reads up to {VERSION}")
            settings = payload["settings"]
            records = payload["cases"]
            if not isinstance(settings, dict) or not isinstance(records, dict):
                raise ValueError("'settings' and 'cases' must be objects")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OutputPathError(
                f"{path} is not a medcam3d batch manifest that can be read ({exc}). Pass overwrite=True "
                "(--overwrite) to recompute every case and start a new one, or choose another output folder."
            ) from exc
        return cls(path, settings, records, str(payload.get("created") or _now()))

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        settings: Mapping[str, Any],
        overwrite: bool,
        name: str = MANIFEST_NAME,
    ) -> Manifest:
        """The manifest of ``folder`` for a run with ``settings`` (nothing is written).

        Without ``overwrite``: the existing manifest when its settings equal ``settings`` (a
        resume), a new one when there is none. With ``overwrite``: a new, empty one, keeping the
        old records in :attr:`previous` (:func:`~medcam3d.batch.run_batch` writes it at once, so
        that a re-run after a crash resumes the overwriting run, not the old one).

        Raises:
            SettingsMismatchError: the existing manifest has other settings (each difference named).
            OutputPathError: the existing manifest cannot be read (and not ``overwrite``).
        """
        normalized = normalize_settings(settings)
        path = Path(folder) / check_manifest_name(name)
        if overwrite:
            try:
                old = cls.read(path)
            except OutputPathError:
                old = None
            return cls(path, normalized, previous=dict(old.records) if old is not None else {})
        existing = cls.read(path)
        if existing is None:
            return cls(path, normalized)
        differences = settings_differences(existing.settings, normalized)
        if differences:
            raise SettingsMismatchError(
                f"The output folder {path.parent} holds results made with other settings "
                f"({len(existing.records)} finished case(s) in {path.name}): "
                + "; ".join(differences)
                + ". Pass overwrite=True (--overwrite) to recompute every case with the new settings, or "
                "choose another output folder.",
                differences,
            )
        return existing

    # -------------------------------------------------------------- deciding
    def state(self, identifier: str, inputs: Sequence[Path], verify_hashes: bool = False) -> CaseState:
        """Whether the case is ``"finished"`` (skip it) or why it must run."""
        record = self.records.get(identifier)
        if record is None:
            return "new"
        if not self._inputs_match(record.get("inputs", []), inputs, verify_hashes):
            return "inputs changed"
        if not self.outputs_present(record):
            return "outputs missing"
        return "finished"

    @staticmethod
    def _inputs_match(
        recorded: Sequence[Mapping[str, Any]], inputs: Sequence[Path], verify_hashes: bool
    ) -> bool:
        if len(recorded) != len(inputs):
            return False
        for old, path in zip(recorded, inputs):
            key = _stat_key(path)
            if (
                not verify_hashes
                and key is not None
                and (old.get("path"), old.get("size"), old.get("mtime_ns")) == key
            ):
                continue  # same file, same size, same time: taken as unchanged without reading it
            try:
                now = hash_input(path)
            except InputFileError:
                return False  # missing now: run the case, whose own reading reports it
            if (now["size"], now["sha256"]) != (old.get("size"), old.get("sha256")):
                return False
        return True

    def output_path(self, recorded: str) -> Path:
        path = Path(recorded)
        return path if path.is_absolute() else self.folder / path

    def outputs_present(self, record: Mapping[str, Any]) -> bool:
        """Every recorded output exists as a file of its recorded size."""
        for output in record.get("outputs", []):
            try:
                stat = self.output_path(output["path"]).stat()
            except (OSError, KeyError, TypeError):
                return False
            if stat.st_size != output.get("size"):
                return False
        return True

    # -------------------------------------------------------------- recording
    def relative(self, path: Path) -> str:
        """``path`` relative to the output folder when inside it (the folder may move), else absolute."""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(Path(os.path.abspath(self.folder))).as_posix()
        except ValueError:
            return str(absolute)

    def owner_of(self, relative: str) -> str | None:
        """The case whose record lists the output ``relative`` (``None``: no case)."""
        return self._owners.get(relative)

    def add(self, identifier: str, record: dict[str, Any]) -> None:
        """Add (or replace) the record of a finished case and write the manifest atomically."""
        record = {**record, "settings_sha256": _settings_digest(self.settings), "finished": _now()}
        for output in self.records.get(identifier, {}).get("outputs", []):
            self._owners.pop(str(output.get("path")), None)
        self.records[identifier] = record
        for output in record.get("outputs", []):
            self._owners[str(output["path"])] = identifier
        self.write()

    def payload(self) -> dict[str, Any]:
        from medcam3d import __version__

        return {
            "format": FORMAT,
            "version": VERSION,
            "written_by": f"medcam3d {__version__}",
            "created": self.created,
            "updated": _now(),
            "settings": self.settings,
            "cases": self.records,
        }

    def write(self) -> Path:
        """Replace the manifest file atomically (verified read-back)."""
        return write_json_atomic(self.path, self.payload(), indent=1)
