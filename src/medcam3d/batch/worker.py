"""The per-case work a command plugs into the batch layer: a :class:`CaseWorker`.

A worker is made once per worker process (``worker_factory()``: it loads the model once) and then
handles whole cases in two steps:

- ``prepare(case) -> prepared``: reading and preprocessing (I/O, CPU). It runs in a background
  thread while the previous case's ``process`` runs, so it must not change state that ``process``
  reads (reading the model's configuration is fine).
- ``process(case, prepared, context) -> outputs``: compute and write every output of the case
  atomically (:func:`medcam3d._atomic.atomic_path`, ``medcam3d.io.write_map``) into
  ``context.output_dir``, and return the paths written. Only after it returns are the outputs
  checked and the case recorded in the manifest. Write with ``overwrite=True``: the batch layer
  already decided that this case runs (a case is only run when it has no valid record, so any file
  of its name is stale).

For the Ray engine the factory is sent to the workers, so it must be picklable: a top-level class,
or :func:`functools.partial` of a top-level function or class with picklable arguments.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["CaseContext", "CaseWorker", "WorkerError", "WorkerFactory", "torch_threads"]

from medcam3d.errors import MedCAMError


class WorkerError(MedCAMError, RuntimeError):
    """The workers could not be started (the factory failed, the cluster lacks the resources...)."""


@dataclass(frozen=True)
class CaseContext:
    """What ``process`` gets besides the case: where to write and how to show progress.

    Attributes:
        output_dir: the output folder (the same path on every Ray worker: a shared file system).
        progress: whether inner progress bars (over patches, classes ...) should be shown; pass it
            to runners that take a ``progress`` switch, or use :meth:`bar`. ``False`` when quiet and
            on Ray workers (their output would interleave).
        worker: where the case runs, ``"host:pid"``.
        attempt: 1 for the first try, 2 after a worker died during the first ...
    """

    output_dir: Path
    progress: bool = True
    worker: str = ""
    attempt: int = 1

    def bar(self, total: int | None = None, desc: str | None = None, unit: str = "it") -> Any:
        """An inner tqdm bar below the bar over cases (closed by the caller or used as a context manager)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, position=1, disable=not self.progress)


@runtime_checkable
class CaseWorker(Protocol):
    """The work on one case, split so that reading the next case overlaps computing this one."""

    def prepare(self, case: Any) -> Any:
        """Read and preprocess ``case`` (runs in a background thread)."""
        ...

    def process(self, case: Any, prepared: Any, context: CaseContext) -> Sequence[str | os.PathLike[str]]:
        """Compute and write the outputs of ``case``; return the files written (absolute, or
        relative to ``context.output_dir``)."""
        ...


#: Makes one worker (loads the model). Picklable for the Ray engine.
WorkerFactory = Callable[[], CaseWorker]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` for the block (``None``: leave it), restored after."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe_error(exc: BaseException) -> str:
    """``"ErrorType: message"`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def resolve_output(path: str | os.PathLike[str], output_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else output_dir / p


def call_factory(factory: Callable[[], Any]) -> Any:
    """Make the worker, checking that it has ``prepare`` and ``process``."""
    worker = factory()
    missing = [name for name in ("prepare", "process") if not callable(getattr(worker, name, None))]
    if missing:
        raise WorkerError(
            f"worker_factory() returned {type(worker).__name__}, which lacks {' and '.join(missing)}: a worker needs "
            "prepare(case) -> prepared and process(case, prepared, context) -> list of written files."
        )
    return worker
