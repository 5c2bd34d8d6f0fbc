"""Atomic, verified file writes.

Every file medcam3d writes goes through :func:`atomic_path`:

1. the writer writes into a hidden temporary **folder** beside the final file,
   ``.medcam3d-tmp-<host>-<pid>-<random>-<name>.part/<name>``. The file inside keeps the final
   name, so writers that pick the format from the ending (ITK, nibabel, matplotlib) still work,
   while no non-recursive listing of the output folder (``glob("*.nii.gz")``, nnU-Net's
   ``subfiles(folder, suffix=".nii.gz")``, ``os.listdir`` + ``endswith``) ever sees a temporary:
   the folder's name ends with ``.part`` and it is a folder, not a file;
2. the written file is **verified** (by default: it exists and is not empty; writers pass their own
   check, e.g. :mod:`medcam3d.io` re-reads images and compares them with what was meant to be written);
3. only then is it renamed onto the final name (``os.replace``: readers see the old file or the new
   one, never half of one), and the temporary folder is removed.

A failed write (full disk ``ENOSPC``, file size limit ``EFBIG``, no permission, a writer that
only printed an error, a file that fails verification) raises
:class:`~medcam3d.errors.OutputPathError` naming the file and the cause, and leaves the final
path untouched. A process killed in the middle (``SIGKILL``, power loss) leaves a temporary folder
behind; :func:`clean_stale_temporaries` removes those (commands call it at start-up).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medcam3d.errors import NonFiniteInputError, OutputPathError

__all__ = [
    "SPACE_HINT",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "Verifier",
    "atomic_path",
    "check_output_file",
    "check_writable_dir",
    "clean_stale_temporaries",
    "describe_os_error",
    "is_temporary",
    "verify_nonempty",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

#: Name start of every temporary folder :func:`atomic_path` creates (hidden: it starts with a dot).
TEMP_PREFIX = ".medcam3d-tmp-"
#: Name end of every temporary folder :func:`atomic_path` creates (no reader's pattern ends so).
TEMP_SUFFIX = ".part"

#: A check of a freshly written temporary file: raise (or return ``False``) when it is not right.
Verifier = Callable[[Path], object]

# temporaries of medcam3d <= 0.x: mkstemp(prefix=".<name>.", suffix=".tmp<ending>") -> 8 random characters
_LEGACY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
_CURRENT = re.compile(
    "^" + re.escape(TEMP_PREFIX) + r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-.*" + re.escape(TEMP_SUFFIX) + "$"
)

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another output folder",
    errno.EFBIG: "the file is larger than allowed (a file size limit such as `ulimit -f`, or the file "
    "system's maximum file size)",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another output folder",
    errno.EACCES: "permission denied; choose a writable location",
    errno.EPERM: "operation not permitted; choose a writable location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EISDIR: "a folder is in the way",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter name",
}


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def describe_os_error(exc: OSError) -> str:
    """A one-line description of an ``OSError``: the system's message, the errno name and a hint."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = f"{reason} ({code})" if code else reason
    if exc.filename:
        text += f" [{exc.filename}]"
    hint = _HINTS.get(exc.errno) if exc.errno is not None else None
    return f"{text}: {hint}" if hint else text


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a name or a path) is a temporary made by :func:`atomic_path` (or an older medcam3d)."""
    name = Path(path).name
    return bool(_CURRENT.match(name) or _LEGACY.match(name))


def check_output_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Raise :class:`OutputPathError` if ``path`` is a folder, or exists and ``overwrite`` is false."""
    final = Path(path)
    if final.is_dir():
        raise OutputPathError(
            f"Output path {final} is a folder, not a file; give a file name (e.g. {final / 'cam.nii.gz'}) "
            "or remove the folder."
        )
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise OutputPathError(
            f"Output file {final} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
    return final


def verify_nonempty(path: Path) -> None:
    """The default check of :func:`atomic_path`: ``path`` is a regular file with at least one byte."""
    if not path.is_file():
        raise OutputPathError(f"the writer did not create {path.name}.")
    if path.stat().st_size == 0:
        raise OutputPathError(f"{path.name} was written empty (0 bytes). {SPACE_HINT}")


#: The advice every failed write ends with.
SPACE_HINT = "Check free disk space and file size limits (`df -h`, `ulimit -f`)."


def _run_verify(verify: Verifier | None, tmp: Path, final: Path) -> None:
    """Run ``verify`` on ``tmp``; any failure becomes an OutputPathError naming ``final``.

    A verifier's own :class:`OutputPathError` message is kept as it is (it may carry its own
    advice); other exceptions (a reader that chokes on the file, ``False``) get the disk-space hint.
    """
    if not tmp.is_file():
        raise OutputPathError(f"Could not write {final}: the writer did not create the file.")
    if verify is None:
        return
    try:
        ok = verify(tmp)
    except OutputPathError as exc:
        raise OutputPathError(
            f"Could not write {final}: the written file failed verification: {exc}"
        ) from exc
    except OSError as exc:
        raise OutputPathError(
            f"Could not write {final}: checking the written file failed: {describe_os_error(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failed check means the file is not what was meant
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise OutputPathError(
            f"Could not write {final}: the written file failed verification ({detail}); nothing was written. "
            f"{SPACE_HINT}"
        ) from exc
    if ok is False:
        raise OutputPathError(
            f"Could not write {final}: the written file does not read back as written; nothing was written. "
            f"{SPACE_HINT}"
        )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str],
    overwrite: bool = True,
    *,
    verify: Verifier | None = verify_nonempty,
) -> Iterator[Path]:
    """Yield a temporary path to write to; verify it, then rename it onto ``path``.

    The yielded path is ``<folder>/.medcam3d-tmp-<host>-<pid>-<random>-<name>.part/<name>``: the file
    keeps the final name (writers that pick the format from the ending still work) inside a hidden
    temporary folder that no listing of ``*.nii.gz``, ``*.png`` … matches.

    Args:
        path: the final file.
        overwrite: replace an existing file (default, for backward compatibility); ``False`` raises
            :class:`OutputPathError` if ``path`` exists.
        verify: called with the temporary file after the block ends and before the rename; it
            raises (any exception) or returns ``False`` if the file is not what was meant. Default:
            :func:`verify_nonempty`. ``None`` only requires that the file exists.

    Raises:
        OutputPathError: ``path`` is a folder, exists without ``overwrite``, its folder is not
            writable, the block raised an ``OSError`` (ENOSPC, EFBIG, EACCES …), the writer created
            no file or the file failed ``verify``. ``path`` is then left untouched and the
            temporary is removed. Other exceptions from the block propagate unchanged.
    """
    final = check_output_file(path, overwrite)
    folder = final.parent if str(final.parent) else Path(".")
    check_writable_dir(folder)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", final.name)[:80]
    try:
        workdir = Path(
            tempfile.mkdtemp(
                prefix=f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-",
                suffix=f"-{stem}{TEMP_SUFFIX}",
                dir=folder,
            )
        )
    except OSError as exc:
        raise OutputPathError(
            f"Could not write {final}: cannot create a temporary folder in {folder}: {describe_os_error(exc)}"
        ) from exc
    tmp = workdir / final.name
    try:
        try:
            yield tmp
            _run_verify(verify, tmp, final)
            check_output_file(final, overwrite)  # a folder (or, without overwrite, a file) appeared meanwhile
            os.replace(tmp, final)
        except OSError as exc:
            raise OutputPathError(f"Could not write {final}: {describe_os_error(exc)}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, overwrite: bool = True, *, fsync: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically; the written file is read back and compared byte for byte.

    ``fsync=True`` also flushes the file to the disk before the rename (survives a power loss).
    """
    final = Path(path)
    with atomic_path(final, overwrite, verify=lambda p: p.read_bytes() == data) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
    return final


def write_text_atomic(
    path: str | os.PathLike[str], text: str, overwrite: bool = True, *, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically (verified: read back and compared); returns ``Path(path)``.

    Raises:
        OutputPathError: as :func:`atomic_path` (folder in the way, existing file without
            ``overwrite``, disk full, size limit, no permission, the read-back differs).
    """
    return write_bytes_atomic(path, text.encode(encoding), overwrite)


def write_json_atomic(
    path: str | os.PathLike[str],
    payload: Any,
    overwrite: bool = True,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    allow_nan: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``payload`` as JSON (plus a final newline) atomically and verified; returns ``Path(path)``.

    NaN and Inf are refused by default (:class:`~medcam3d.errors.NonFiniteInputError`): they are not
    valid JSON and many readers reject them; pass ``allow_nan=True`` to write them as ``NaN``/``Infinity``.
    The written file is read back, compared with what was meant and parsed.
    """
    try:
        text = json.dumps(payload, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default)
    except ValueError as exc:
        if "JSON compliant" in str(exc) or "out of range float" in str(exc).lower():
            raise NonFiniteInputError(
                f"Cannot write {path}: the data holds NaN or Inf, which JSON cannot represent. Replace them "
                "(e.g. with None, or math.nan -> None) or pass allow_nan=True."
            ) from exc
        raise
    data = (text + "\n").encode("utf-8")
    final = Path(path)

    def _verify(tmp: Path) -> bool:
        written = tmp.read_bytes()
        json.loads(written.decode("utf-8"))
        return written == data

    with atomic_path(final, overwrite, verify=_verify) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - unusual platforms
        return True
    return True


def clean_stale_temporaries(
    folder: str | os.PathLike[str], *, max_age_s: float = 3600.0, everything: bool = False
) -> list[Path]:
    """Remove the temporaries that killed medcam3d processes left in ``folder`` (not recursive).

    A temporary (see :func:`atomic_path`) is stale when the process that made it is gone (same
    host, its process id no longer runs), or when it is older than ``max_age_s`` seconds (made on
    another host, or by a medcam3d version whose temporaries did not record the process:
    ``.<name>.<8 characters>.tmp<ending>``). Temporaries of running processes — another worker
    writing into the same folder — are kept. ``everything=True`` removes every medcam3d temporary
    in ``folder`` regardless (only when nothing else writes there). Nothing else is touched.
    A missing folder is fine; a temporary that cannot be removed is logged and skipped.

    Returns:
        the removed paths.
    """
    root = Path(folder)
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        logger.warning("Cannot list %s to remove stale temporaries: %s", root, describe_os_error(exc))
        return []
    host, me, now = _host_tag(), os.getpid(), time.time()
    removed: list[Path] = []
    for entry in entries:
        current, legacy = _CURRENT.match(entry.name), _LEGACY.match(entry.name)
        if not (current or legacy):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        stale = everything or age > max_age_s
        if current and not stale and current["host"] == host:
            pid = int(current["pid"])
            stale = pid != me and not _pid_alive(pid)
        if not stale:
            continue
        target = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target)
            else:
                target.unlink()
        except OSError as exc:
            logger.warning("Could not remove the stale temporary %s: %s", target, describe_os_error(exc))
            continue
        removed.append(target)
    if removed:
        logger.info(
            "Removed %d stale temporar%s in %s", len(removed), "y" if len(removed) == 1 else "ies", root
        )
    return removed


def check_writable_dir(folder: str | os.PathLike[str], create: bool = True) -> Path:
    """Make sure ``folder`` exists (creating it if asked) and is writable, else raise OutputPathError."""
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create output folder {folder}: {describe_os_error(exc)}. Choose a writable location."
        ) from exc
    if not folder.is_dir():
        raise OutputPathError(f"Output folder {folder} does not exist or is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"Output folder {folder} is not writable. Choose a writable location.")
    return folder


def check_output_location(folder: str | os.PathLike[str]) -> Path:
    """Check, without creating anything, that ``folder`` is or can become a writable folder: the
    nearest existing path on the way to it must be a writable folder. Raises OutputPathError."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == folder:
            raise OutputPathError(f"The output folder {folder} is a file; choose a folder.")
        raise OutputPathError(
            f"Cannot create the output folder {folder}: {existing} is a file. Choose a folder."
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        what = folder if existing == folder else f"{existing} (where {folder} would be created)"
        raise OutputPathError(f"The output folder {what} is not writable. Choose a writable location.")
    return folder
