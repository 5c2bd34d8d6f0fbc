"""The Ray engine: ``workers`` Ray actors, each loading the model once and processing whole cases.

Why actors (and not Ray Data with an actor pool): a case is one volume whose outputs are files
written by the worker itself, so there is no dataset to stream through the object store; what is
needed is a long-lived process per GPU that keeps the model loaded, one case in flight on it plus
the next one being read, and to know exactly which case a dead worker was holding (to retry it
once). Plain actors give all three with a few lines; Ray Data would add a dependency on
``ray[data]``, move the prepared volumes through the object store and hide which block a failed
worker held.

Each actor runs two threads (``max_concurrency=2``): ``prepare(next case)`` (reading,
preprocessing) overlaps ``process(current case)`` (compute, atomic writes into the shared output
folder). The prepared data stay inside the actor. Only the driver (this process) hashes inputs,
checks outputs and writes the manifest. A worker that dies (killed, out of memory, its node lost)
is replaced; the case it was computing is tried again up to ``retries`` times, then reported as
failed; a case prepared beside it is queued again without being charged. Both then run alone on a
worker (no case prepared beside them), so that a second death is blamed on the right case.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcam3d.batch.worker import (
    CaseContext,
    WorkerError,
    WorkerFactory,
    call_factory,
    describe_error,
    worker_name,
)
from medcam3d.errors import ConfigurationError, require_extra

if TYPE_CHECKING:
    from medcam3d.batch.options import BatchOptions
    from medcam3d.batch.run import Driver

__all__ = ["CaseActor", "connect", "run_ray"]

logger = logging.getLogger(__name__)


def _portable(exc: BaseException) -> dict[str, Any]:
    """The error of a case as a message, plus the exception itself when it can travel back."""
    try:
        pickle.dumps(exc)
        carried: BaseException | None = exc
    except Exception:  # noqa: BLE001 - an unpicklable exception travels as text only
        carried = None
    return {"ok": False, "error": describe_error(exc), "exception": carried}


class CaseActor:
    """One Ray worker: makes the worker once, then prepares and processes cases (two threads)."""

    def __init__(
        self,
        worker_factory: WorkerFactory,
        threads: int | None,
        output_dir: str,
        working_dir: str | None = None,
    ) -> None:
        self._error: str | None = None
        self._worker: Any = None
        self._prepared: dict[str, Any] = {}
        self._output_dir = Path(output_dir)
        try:
            if working_dir and os.path.isdir(working_dir):
                os.chdir(
                    working_dir
                )  # relative input paths mean what they mean to the driver (shared storage)
            if threads is not None:
                import torch

                torch.set_num_threads(int(threads))
            self._worker = call_factory(worker_factory)
        except Exception as exc:  # noqa: BLE001 - reported by ready()
            self._error = describe_error(exc) + "\n" + "".join(traceback.format_exc(limit=8))

    def ready(self) -> dict[str, Any]:
        import torch

        return {"error": self._error, "worker": worker_name(), "threads": torch.get_num_threads()}

    def prepare(self, case: Any) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            self._prepared[case.identifier] = self._worker.prepare(case)
        except Exception as exc:  # noqa: BLE001 - the case's failure
            return {**_portable(exc), "prepare_s": time.perf_counter() - start}
        return {"ok": True, "prepare_s": time.perf_counter() - start}

    def process(self, case: Any, attempt: int) -> dict[str, Any]:
        prepared = self._prepared.pop(case.identifier)
        context = CaseContext(self._output_dir, progress=False, worker=worker_name(), attempt=attempt)
        start = time.perf_counter()
        try:
            written = self._worker.process(case, prepared, context)
            if isinstance(written, (str, os.PathLike)):
                outputs: Any = written
            else:
                outputs = [str(p) for p in written]
        except Exception as exc:  # noqa: BLE001 - the case's failure
            return {**_portable(exc), "worker": worker_name()}
        finally:
            del prepared
        return {
            "ok": True,
            "outputs": outputs,
            "process_s": time.perf_counter() - start,
            "worker": worker_name(),
        }


# ------------------------------------------------------------------ connecting
def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (a clear error instead of Ray's long retries) when the head's port does not answer."""
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(
            f"ray_address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, as `ray start --head` printed it), "
            "'ray://HOST:10001' or 'auto'."
        )
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot reach the Ray cluster at {address}: {exc.strerror or exc}. Start it first (`ray start --head "
            "--port=6379` on the head node, `ray start --address=HEAD:6379` on the others), check the address and "
            "that the port is open from this machine, or leave ray_address out (--ray-address) to start a local "
            "Ray for this run."
        ) from exc


def connect(ray: Any, options: BatchOptions) -> bool:
    """Connect to (or start) Ray as ``options`` say; returns whether this call did (and so must shut it down).

    A process that already called ``ray.init`` keeps its connection.
    """
    if ray.is_initialized():
        if options.ray_address not in (None, "local"):
            logger.info(
                "Ray is already initialised in this process; using it (ray_address=%r ignored)",
                options.ray_address,
            )
        return False
    address = options.ray_address
    quiet = {"log_to_driver": not options.quiet}
    if address in (None, "local"):
        cores = os.cpu_count() or 1
        logger.info("Starting a local Ray instance for this run (%d CPU cores)", cores)
        ray.init(address="local", num_cpus=cores, include_dashboard=False, **quiet)
        return True
    if address != "auto":
        _reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ConfigurationError(
            f"Cannot connect to the Ray cluster at {address!r}: {describe_error(exc)}. Check that the cluster runs "
            "(`ray status` on the head node) and the address, or leave ray_address out to start a local Ray."
        ) from exc
    return True


def _check_resources(ray: Any, options: BatchOptions, started_here: bool) -> None:
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    need_cpu, need_gpu = options.workers * options.cpus_per_worker, options.workers * options.gpus_per_worker
    if need_cpu <= cpus + 1e-9 and need_gpu <= gpus + 1e-9:
        return
    message = (
        f"{options.workers} worker(s) x ({options.cpus_per_worker:g} CPU, {options.gpus_per_worker:g} GPU) need "
        f"{need_cpu:g} CPUs and {need_gpu:g} GPUs, but the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs. Use "
        "fewer --workers, lower --cpus-per-worker / --gpus-per-worker, or add nodes."
    )
    if started_here and options.ray_address in (None, "local"):
        raise WorkerError(message)
    logger.warning("%s Waiting up to %.0f s for an autoscaler.", message, options.start_timeout_s)


# ------------------------------------------------------------------ scheduling
@dataclass
class _Slot:
    """One worker position: its actor and the (at most two) cases it holds."""

    actor: Any
    alive: bool = False
    current: Any = None  # the case whose process() runs
    following: Any = None  # the case whose prepare() runs or is done
    following_ready: bool = False


def run_ray(
    driver: Driver, cases: Sequence[Any], worker_factory: WorkerFactory, options: BatchOptions
) -> None:
    """Spread ``cases`` over ``options.workers`` Ray actors (see the module docstring)."""
    ray: Any = require_extra("ray", "ray", "the Ray engine (engine='ray', --engine ray)")
    from ray import exceptions as ray_errors

    deaths = (
        ray_errors.RayActorError,
        ray_errors.WorkerCrashedError,
        ray_errors.NodeDiedError,
        ray_errors.OutOfMemoryError,
    )
    import ray.cloudpickle as cloudpickle

    try:
        cloudpickle.dumps(worker_factory)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        raise ConfigurationError(
            f"The worker factory cannot be sent to Ray workers ({describe_error(exc)}): give a top-level class or "
            "a functools.partial of a top-level function or class with picklable arguments."
        ) from exc

    begin = time.perf_counter()
    started = connect(ray, options)
    slots: list[_Slot] = []
    try:
        _check_resources(ray, options, started)
        remote = ray.remote(
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_concurrency=2 if options.prefetch else 1,
            max_restarts=0,
            max_task_retries=0,
        )(CaseActor)
        threads = options.worker_threads()
        output_dir = str(driver.output_dir.resolve())

        def spawn() -> Any:
            return remote.remote(worker_factory, threads, output_dir, os.getcwd())

        slots = [_Slot(spawn()) for _ in range(options.workers)]
        try:
            infos = ray.get([s.actor.ready.remote() for s in slots], timeout=options.start_timeout_s)
        except ray_errors.GetTimeoutError as exc:
            raise WorkerError(
                f"The {options.workers} Ray worker(s) did not start within {options.start_timeout_s:g} s: the cluster "
                "lacks the requested CPUs/GPUs (`ray status` shows them), or is overloaded."
            ) from exc
        except deaths as exc:
            hint = ""
            if "No module named" in str(exc):
                hint = (
                    " The module of the worker factory must be importable on every Ray worker: install it there (pip "
                    "install), or start Ray with ray.init(runtime_env={'py_modules': [your_module]}) (or "
                    "{'working_dir': ...}) before run_batch."
                )
            raise WorkerError(f"A Ray worker died while starting: {describe_error(exc)}{hint}") from exc
        errors = [i["error"] for i in infos if i["error"]]
        if errors:
            raise WorkerError(f"worker_factory() failed on a Ray worker: {errors[0]}")
        for slot in slots:
            slot.alive = True
        driver.summary.startup_s = time.perf_counter() - begin
        logger.info(
            "Ray workers: %s", ", ".join(f"{i['worker']} ({i['threads']} torch threads)" for i in infos)
        )
        _schedule(ray, deaths, driver, list(cases), slots, spawn, options)
    finally:
        for slot in slots:
            try:
                ray.kill(slot.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()


def _schedule(
    ray: Any,
    deaths: tuple[type[BaseException], ...],
    driver: Driver,
    cases: list[Any],
    slots: list[_Slot],
    spawn: Any,
    options: BatchOptions,
) -> None:
    queue: deque[Any] = deque(cases)
    charged: dict[str, int] = {}  # deaths while the case was running on the worker
    hashed: dict[str, tuple[list[dict[str, Any]], float]] = {}
    prepare_s: dict[str, float] = {}
    isolated: set[str] = set()  # cases held by a worker that died beside another one: run alone
    inflight: dict[Any, tuple[_Slot, str, Any]] = {}
    replacements = 2 * options.workers + len(cases)

    def attempt(case: Any) -> int:
        return charged.get(case.identifier, 0) + 1

    def submit_prepare(slot: _Slot) -> None:
        while queue:
            case = queue.popleft()
            if case.identifier not in hashed:
                start = time.perf_counter()
                try:
                    records = driver.input_records(case)
                except Exception as exc:  # noqa: BLE001 - a missing or unreadable input
                    driver.fail(case, exc)
                    continue
                hashed[case.identifier] = (records, time.perf_counter() - start)
            slot.following, slot.following_ready = case, False
            inflight[slot.actor.prepare.remote(case)] = (slot, "prepare", case)
            return

    def feed(slot: _Slot) -> None:
        if not slot.alive:
            return
        if slot.current is None and slot.following is not None and slot.following_ready:
            case, slot.following = slot.following, None
            slot.current = case
            inflight[slot.actor.process.remote(case, attempt(case))] = (slot, "process", case)
        if slot.following is not None:
            return
        if slot.current is None:
            submit_prepare(slot)
        elif options.prefetch and slot.current.identifier not in isolated and queue:
            if queue[0].identifier not in isolated:  # an isolated case waits for a worker of its own
                submit_prepare(slot)

    def died(slot: _Slot, exc: BaseException) -> None:
        nonlocal replacements
        slot.alive = False
        for ref in [r for r, (s, _, _) in inflight.items() if s is slot]:
            del inflight[ref]
        # Who killed the worker? The case being processed is charged; a case whose prepare was still
        # running beside it is not, but both run alone from now on, where the blame is exact.
        held = []
        if slot.current is not None:
            held.append((slot.current, True))
            if slot.following is not None and not slot.following_ready:
                isolated.add(slot.current.identifier)
                isolated.add(slot.following.identifier)
        if slot.following is not None:
            held.append((slot.following, slot.current is None and not slot.following_ready))
        slot.current = slot.following = None
        for case, was_running in reversed(held):
            if not was_running:
                queue.appendleft(case)
                continue
            isolated.add(case.identifier)
            charged[case.identifier] = charged.get(case.identifier, 0) + 1
            tries = charged[case.identifier]
            if tries > options.retries:
                driver.fail(
                    case,
                    f"WorkerDiedError: the Ray worker running this case died {tries} time(s) (killed, out of memory, "
                    f"a crash in native code, or its node was lost): {describe_error(exc)}",
                    attempts=tries,
                )
            else:
                logger.warning(
                    "The Ray worker running case %s died (%s); trying it again (attempt %d of %d)",
                    case.identifier,
                    type(exc).__name__,
                    tries + 1,
                    options.retries + 1,
                )
                queue.appendleft(case)
        if replacements > 0:
            replacements -= 1
            slot.actor = spawn()
            inflight[slot.actor.ready.remote()] = (slot, "ready", None)
        else:
            logger.error("No Ray worker replacement left; going on with the remaining workers")

    for slot in slots:
        feed(slot)
    while inflight:
        done, _ = ray.wait(list(inflight), num_returns=1)
        ref = done[0]
        if ref not in inflight:  # dropped when its worker died
            continue
        slot, kind, case = inflight.pop(ref)
        try:
            result = ray.get(ref)
        except deaths as exc:
            died(slot, exc)
            for other in slots:
                feed(other)
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a BaseException the worker did not catch
            result = _portable(exc)
        if kind == "ready":
            if result.get("error"):
                logger.error("A replacement Ray worker failed to start: %s", result["error"])
            else:
                slot.alive = True
                logger.info("Replacement Ray worker %s started", result.get("worker"))
                feed(slot)
        elif kind == "prepare":
            slot.following_ready = True
            prepare_s[case.identifier] = float(result.get("prepare_s", 0.0))
            if not result["ok"]:
                slot.following = None
                driver.fail(case, result.get("exception") or result["error"], attempts=attempt(case))
            feed(slot)
        else:
            slot.current = None
            if result["ok"]:
                records, hash_s = hashed.pop(case.identifier)
                timings = {
                    "hash_s": hash_s,
                    "prepare_s": prepare_s.pop(case.identifier, 0.0),
                    "process_s": result["process_s"],
                }
                driver.finish(
                    case,
                    result["outputs"],
                    records,
                    timings,
                    worker=result["worker"],
                    engine="ray",
                    attempts=attempt(case),
                )
            else:
                driver.fail(case, result.get("exception") or result["error"], attempts=attempt(case))
        for other in slots:  # a retried case may wait in the queue while a worker idles
            feed(other)
    for case in queue:
        driver.fail(case, "WorkerDiedError: no Ray worker was left to run this case", attempts=attempt(case))
