"""How a batch runs (not what it computes): resume or overwrite, engine, workers, progress.

:class:`BatchOptions` is the Python form; :func:`add_batch_arguments` adds the same options as
command-line flags to any ``argparse`` parser and :func:`options_from_args` reads them back.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Literal

from medcam3d.errors import ConfigurationError

__all__ = ["BatchOptions", "Engine", "add_batch_arguments", "options_from_args"]

Engine = Literal["local", "ray"]


@dataclass(frozen=True)
class BatchOptions:
    """Options of :func:`medcam3d.batch.run_batch`.

    Attributes:
        overwrite: recompute every case and replace its outputs, starting a new manifest (also when
            the folder's manifest has other settings). Default: resume — skip finished cases.
        engine: ``"local"`` (one worker in this process, default) or ``"ray"`` (``workers`` Ray
            actors, on this machine or a cluster; needs ``pip install 'medcam3d[ray]'``).
        ray_address: the Ray cluster to use: ``None`` starts a local one for the run (stopped at
            the end), ``"auto"`` the one ``ray start`` started on this machine (or ``RAY_ADDRESS``),
            ``"HOST:PORT"`` / ``"ray://HOST:PORT"`` a cluster's head. Ignored when this process already
            called ``ray.init``.
        workers: how many workers process cases at the same time (``1`` for ``engine="local"``).
        gpus_per_worker: GPUs each Ray worker reserves (``1`` on a GPU machine: Ray then shows each
            worker only its own GPU, as ``cuda:0``); fractions share a GPU.
        cpus_per_worker: CPU cores each Ray worker reserves.
        torch_threads: ``torch.set_num_threads`` in each worker; ``None``: one thread per reserved
            CPU core for Ray workers (``cpus_per_worker``, at least 1), unchanged for the local engine.
        quiet: no progress bars (log messages still go to ``logging``).
        prefetch: read and preprocess the next case in a background thread while the current one
            is computed (one case ahead per worker).
        continue_on_error: a case that fails is reported in the summary and the others go on
            (``False``: the first failure is raised once the manifest holds the finished cases).
        retries: how often a case whose Ray worker died is tried again before it counts as failed.
        verify_hashes: re-read every input of a finished case to compare its SHA-256 (default: a
            file whose path, size and modification time are unchanged is taken as unchanged).
        start_timeout_s: how long to wait for the Ray workers to start (a cluster without the
            requested resources would wait for ever).
    """

    overwrite: bool = False
    engine: Engine = "local"
    ray_address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None
    quiet: bool = False
    prefetch: bool = True
    continue_on_error: bool = True
    retries: int = 1
    verify_hashes: bool = False
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ConfigurationError(f"engine must be 'local' or 'ray', got {self.engine!r}.")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigurationError(
                f"workers must be a whole number of at least 1, got {self.workers!r}: give how many cases run "
                "at the same time (--workers 2)."
            )
        if self.engine == "local" and self.workers != 1:
            raise ConfigurationError(
                f"The local engine runs one worker, got workers={self.workers}. Use engine='ray' "
                "(--engine ray) to spread the cases over several workers, GPUs or machines."
            )
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}.")
        if self.engine == "ray" and self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ConfigurationError(
                "A Ray worker must reserve something: give cpus_per_worker > 0 or gpus_per_worker > 0."
            )
        if self.torch_threads is not None and (
            isinstance(self.torch_threads, bool)
            or not isinstance(self.torch_threads, int)
            or self.torch_threads < 1
        ):
            raise ConfigurationError(
                f"torch_threads must be a whole number >= 1 or None, got {self.torch_threads!r}."
            )
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be a whole number >= 0, got {self.retries!r}.")
        if not self.start_timeout_s > 0:
            raise ConfigurationError(f"start_timeout_s must be > 0, got {self.start_timeout_s!r}.")
        if self.engine == "local" and self.ray_address is not None:
            raise ConfigurationError(
                f"ray_address={self.ray_address!r} was given with the local engine; add engine='ray' (--engine ray)."
            )

    def worker_threads(self) -> int | None:
        """The torch thread count each worker sets (``None``: leave it as it is)."""
        if self.torch_threads is not None:
            return self.torch_threads
        if self.engine == "ray":
            return max(1, int(self.cpus_per_worker))
        return None


def _existing_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def add_batch_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the batch flags to ``parser`` (a flag the parser already has is left as it is).

    ``--overwrite``, ``--continue_prediction`` (``--continue-prediction``; nnU-Net's flag: resume, the
    default), ``--engine local|ray``, ``--ray-address``, ``--workers N``, ``--gpus-per-worker G``,
    ``--cpus-per-worker C``, ``--torch-threads T``, ``--verify-hashes`` and ``--quiet``.
    Read them back with :func:`options_from_args`. Returns the argument group.
    """
    existing = _existing_flags(parser)
    group = parser.add_argument_group("batch", "resuming, overwriting, and spreading cases over workers")

    def add(*flags: str, **kwargs: Any) -> None:
        free = [f for f in flags if f not in existing]
        if len(free) == len(flags):
            group.add_argument(*flags, **kwargs)

    add(
        "--overwrite",
        action="store_true",
        help="recompute every case and replace its outputs (default: skip the cases the output folder's "
        "manifest lists as finished, recompute those whose inputs changed)",
    )
    add(
        "--continue_prediction",
        "--continue-prediction",
        dest="continue_prediction",
        action="store_true",
        help="resume an interrupted run: only the missing cases are computed (the default; nnU-Net's flag)",
    )
    add(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="'local': one worker in this process (default); 'ray': --workers Ray workers (pip install "
        "'medcam3d[ray]')",
    )
    add(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster: HOST:PORT of its head, 'auto' for the one `ray start` started here; default: a "
        "local one for this run",
    )
    add(
        "--workers", type=int, default=1, metavar="N", help="cases processed at once (Ray workers; default 1)"
    )
    add("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per Ray worker (default 0)")
    add(
        "--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPU cores per Ray worker (default 1)"
    )
    add(
        "--torch-threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per worker (default: --cpus-per-worker for Ray workers, unchanged locally)",
    )
    add(
        "--verify-hashes",
        action="store_true",
        help="re-read every input of a finished case to compare its SHA-256 before skipping it",
    )
    add("--quiet", action="store_true", help="no progress bars")
    return group


def options_from_args(args: argparse.Namespace, **overrides: Any) -> BatchOptions:
    """The :class:`BatchOptions` of parsed flags (see :func:`add_batch_arguments`); ``overrides``
    win (e.g. ``quiet=args.no_progress or args.quiet``).

    Raises:
        ConfigurationError: ``--overwrite`` with ``--continue_prediction``, or an invalid value.
    """
    overwrite = bool(getattr(args, "overwrite", False))
    if overwrite and getattr(args, "continue_prediction", False):
        raise ConfigurationError(
            "--overwrite and --continue_prediction contradict each other: --continue_prediction keeps the finished "
            "cases (the default), --overwrite recomputes them. Give one."
        )
    values: dict[str, Any] = {
        "overwrite": overwrite,
        "engine": getattr(args, "engine", "local") or "local",
        "ray_address": getattr(args, "ray_address", None),
        "workers": getattr(args, "workers", 1),
        "gpus_per_worker": getattr(args, "gpus_per_worker", 0.0),
        "cpus_per_worker": getattr(args, "cpus_per_worker", 1.0),
        "torch_threads": getattr(args, "torch_threads", None),
        "verify_hashes": bool(getattr(args, "verify_hashes", False)),
        "quiet": bool(getattr(args, "quiet", False)),
    }
    values.update(overrides)
    return BatchOptions(**values)
