"""The local engine: one worker in this process, the next case prepared in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medcam3d.batch.worker import CaseContext, WorkerFactory, call_factory, torch_threads, worker_name

if TYPE_CHECKING:
    from medcam3d.batch.options import BatchOptions
    from medcam3d.batch.run import Driver

__all__ = ["run_local"]


@dataclass
class PreparedCase:
    """A case read and preprocessed: its input records, the worker's ``prepared`` value or the error."""

    case: Any
    inputs: list[dict[str, Any]] = field(default_factory=list)
    prepared: Any = None
    error: BaseException | None = None
    timings: dict[str, float] = field(default_factory=dict)


def prepare_case(driver: Driver, worker: Any, case: Any) -> PreparedCase:
    """Hash the inputs of ``case``, then ``worker.prepare(case)``; errors are kept, not raised."""
    job = PreparedCase(case)
    start = time.perf_counter()
    try:
        job.inputs = driver.input_records(case)
        hashed = time.perf_counter()
        job.timings["hash_s"] = hashed - start
        job.prepared = worker.prepare(case)
        job.timings["prepare_s"] = time.perf_counter() - hashed
    except Exception as exc:  # noqa: BLE001 - reported as the case's failure
        job.error = exc
    return job


class Background:
    """Run ``fn(arg)`` in a daemon thread (a killed or interrupted run does not wait for it)."""

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(fn, arg), name="medcam3d-prepare", daemon=True
        )
        self._thread.start()

    def _run(self, fn: Callable[[Any], Any], arg: Any) -> None:
        try:
            self._value = fn(arg)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def run_local(
    driver: Driver, cases: Sequence[Any], worker_factory: WorkerFactory, options: BatchOptions
) -> None:
    """Process ``cases`` in order with one worker made here; at most two cases in memory (the one
    computed and the next one prepared)."""
    with torch_threads(options.worker_threads()):
        start = time.perf_counter()
        worker = call_factory(worker_factory)
        driver.summary.startup_s = time.perf_counter() - start
        me = worker_name()

        def prepare(case: Any) -> PreparedCase:
            return prepare_case(driver, worker, case)

        ahead: Background | None = Background(prepare, cases[0]) if options.prefetch and cases else None
        for index, case in enumerate(cases):
            waited = time.perf_counter()
            job: PreparedCase | None = ahead.result() if ahead is not None else prepare(case)
            assert job is not None
            wait_s = time.perf_counter() - waited
            following = index + 1 < len(cases)
            ahead = Background(prepare, cases[index + 1]) if options.prefetch and following else None
            if job.error is not None:
                driver.fail(case, job.error)
                continue
            context = CaseContext(driver.output_dir, progress=not options.quiet, worker=me)
            start = time.perf_counter()
            try:
                written = worker.process(case, job.prepared, context)
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                job = None
                driver.fail(case, exc)
                continue
            timings = {**job.timings, "wait_s": wait_s, "process_s": time.perf_counter() - start}
            inputs = job.inputs
            job = None  # free the prepared data before recording
            driver.finish(case, written, inputs, timings, worker=me, engine="local")
