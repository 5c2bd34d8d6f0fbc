"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medcam3d.errors import OutputPathError

__all__ = ["atomic_path", "check_writable_dir"]


def _double_suffix(path: Path) -> str:
    name = path.name
    for ending in (".nii.gz", ".tar.gz"):
        if name.endswith(ending):
            return ending
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file keeps the final file's ending (``.nii.gz``, ``.png`` …) so that
    writers which pick the format from the name still work. On any exception the
    temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {final} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
    folder = final.parent if str(final.parent) else Path(".")
    check_writable_dir(folder)
    suffix = _double_suffix(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the permissions a normal open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def check_writable_dir(folder: str | os.PathLike[str], create: bool = True) -> Path:
    """Make sure ``folder`` exists (creating it if asked) and is writable, else raise OutputPathError."""
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create output folder {folder}: {exc}. Choose a writable location."
        ) from exc
    if not folder.is_dir():
        raise OutputPathError(f"Output folder {folder} does not exist or is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"Output folder {folder} is not writable. Choose a writable location.")
    return folder
