"""The front door of the batch layer: :func:`run_batch` (and :func:`plan_batch`, its dry run)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcam3d._atomic import (
    check_output_location,
    check_writable_dir,
    clean_stale_temporaries,
    describe_os_error,
    is_temporary,
)
from medcam3d.batch.cases import InputsOf, case_inputs, check_case_names
from medcam3d.batch.manifest import MANIFEST_NAME, Manifest, check_manifest_name, hash_input
from medcam3d.batch.options import BatchOptions
from medcam3d.batch.summary import BatchSummary, CaseFailure
from medcam3d.batch.worker import WorkerFactory, describe_error, resolve_output
from medcam3d.errors import OutputPathError

__all__ = ["BatchPlan", "plan_batch", "run_batch"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".medcam3d_manifest.lock"


@dataclass
class BatchPlan:
    """Which cases a run computes and why (:func:`plan_batch`).

    Attributes:
        manifest: the output folder's manifest as the run will use it.
        to_run: the cases to compute, in input order.
        reasons: case → ``"new"``, ``"inputs changed"``, ``"outputs missing"`` or ``"overwrite"``.
        skipped: the cases whose record matches (finished before).
    """

    manifest: Manifest
    to_run: list[Any] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def plan_batch(
    cases: Sequence[Any],
    output_dir: str | os.PathLike[str],
    settings: Mapping[str, Any],
    options: BatchOptions | None = None,
    *,
    inputs: InputsOf | None = None,
    manifest_name: str = MANIFEST_NAME,
) -> BatchPlan:
    """Decide, without computing or writing anything, which cases :func:`run_batch` would compute.

    Raises:
        InputFileError: unsafe or repeated case names.
        SettingsMismatchError: the folder's manifest has other settings (without ``overwrite``).
        OutputPathError: the folder cannot be made (a file is in the way, no write permission) or
            its manifest cannot be read.
    """
    options = options or BatchOptions()
    check_case_names(cases)
    check_output_location(output_dir)
    manifest = Manifest.open(output_dir, settings, options.overwrite, manifest_name)
    plan = BatchPlan(manifest)
    inputs_of = inputs or case_inputs
    for case in cases:
        if options.overwrite:
            state = "overwrite"
        else:
            state = manifest.state(case.identifier, [Path(p) for p in inputs_of(case)], options.verify_hashes)
        if state == "finished":
            plan.skipped.append(case.identifier)
        else:
            plan.to_run.append(case)
            plan.reasons[case.identifier] = state
    return plan


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Refuse a second run writing into the same folder at the same time (an advisory ``flock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = folder / LOCK_NAME
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        logger.warning("Cannot create the lock file %s (%s); not guarding against a parallel run", path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputPathError(
                f"Another medcam3d run is writing into {folder} right now (it holds {path}). Wait for it to "
                "finish, or choose another output folder: two runs would overwrite each other's manifest."
            ) from exc
        except OSError as exc:  # a file system without locks (some network mounts)
            logger.warning(
                "Cannot lock %s (%s); not guarding against a parallel run", path, describe_os_error(exc)
            )
        yield
    finally:
        handle.close()


def _clean_temporaries(folder: Path) -> int:
    """Stale temporaries of killed runs in ``folder`` and every folder below it."""
    removed = 0
    for root, dirs, _files in os.walk(folder):
        removed += len(clean_stale_temporaries(root))
        dirs[:] = [d for d in dirs if not is_temporary(d) and os.path.isdir(os.path.join(root, d))]
    return removed


class Driver:
    """The one place that hashes inputs, checks outputs, writes the manifest and counts (engines call it)."""

    def __init__(
        self,
        manifest: Manifest,
        output_dir: Path,
        options: BatchOptions,
        inputs_of: InputsOf,
        summary: BatchSummary,
        total: int,
        skipped: int,
    ) -> None:
        from tqdm.auto import tqdm

        self.manifest = manifest
        self.output_dir = output_dir
        self.options = options
        self.inputs_of = inputs_of
        self.summary = summary
        self.bar = tqdm(total=total, initial=skipped, desc="cases", unit="case", disable=options.quiet)

    # -------------------------------------------------------------- inputs
    def input_records(self, case: Any) -> list[dict[str, Any]]:
        """Hash the inputs of ``case`` (just before it is read, so the record describes what was read)."""
        return [hash_input(p) for p in self.inputs_of(case)]

    # -------------------------------------------------------------- outcomes
    def fail(self, case: Any, error: BaseException | str, attempts: int = 1) -> None:
        message = error if isinstance(error, str) else describe_error(error)
        logger.error("Case %s failed: %s", case.identifier, message)
        self.summary.failures.append(CaseFailure(case.identifier, message, attempts))
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.summary.failures), refresh=False)
        if not self.options.continue_on_error:
            if isinstance(error, BaseException):
                raise error
            from medcam3d.batch.worker import WorkerError

            raise WorkerError(f"Case {case.identifier} failed: {message}")

    def _check_outputs(self, case: Any, written: Sequence[Any]) -> list[dict[str, Any]]:
        if isinstance(written, (str, os.PathLike)) or not isinstance(written, Sequence):
            raise OutputPathError(
                f"process() returned {type(written).__name__} for case {case.identifier}; it must return the list "
                "of files it wrote."
            )
        outputs: list[dict[str, Any]] = []
        seen: set[str] = set()
        manifest_path = Path(os.path.abspath(self.manifest.path))
        for item in written:
            path = Path(os.path.abspath(resolve_output(item, self.output_dir)))
            if (
                path == manifest_path
                or path.name == LOCK_NAME
                or (
                    path.parent == manifest_path.parent
                    and path.name.startswith("medcam3d_manifest")
                    and path.suffix == ".json"
                )
            ):
                raise OutputPathError(
                    f"Case {case.identifier} returned {path}, a file of the batch layer itself."
                )
            if any(is_temporary(part) for part in path.parts):
                raise OutputPathError(
                    f"Case {case.identifier} returned the temporary {path}; return the final paths of the files."
                )
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise OutputPathError(
                    f"Case {case.identifier} reported writing {path}, but there is no such file here. (With the Ray "
                    "engine on several machines the output folder must be on storage that every worker and this "
                    "driver see under the same path, e.g. NFS.)"
                ) from None
            except OSError as exc:
                raise OutputPathError(f"Cannot check the output {path}: {describe_os_error(exc)}") from exc
            if not path.is_file():
                raise OutputPathError(f"Case {case.identifier} reported {path}, which is not a file.")
            relative = self.manifest.relative(path)
            owner = self.manifest.owner_of(relative)
            if owner is not None and owner != case.identifier:
                raise OutputPathError(
                    f"Case {case.identifier} wrote {relative}, which case {owner} wrote before: outputs must be named "
                    "after their case."
                )
            if relative not in seen:
                seen.add(relative)
                outputs.append({"path": relative, "size": stat.st_size})
        return outputs

    def finish(
        self,
        case: Any,
        written: Sequence[Any],
        inputs: list[dict[str, Any]],
        timings: Mapping[str, float],
        worker: str,
        engine: str,
        attempts: int = 1,
    ) -> None:
        """Check the outputs of a computed case and record it (manifest written atomically)."""
        identifier = case.identifier
        try:
            outputs = self._check_outputs(case, written)
        except OutputPathError as exc:
            self.fail(case, exc, attempts)
            return
        old = self.manifest.records.get(identifier) or self.manifest.previous.get(identifier)
        record = {
            "inputs": inputs,
            "outputs": outputs,
            "timings": {k: round(float(v), 4) for k, v in timings.items()},
            "engine": engine,
            "worker": worker,
            "attempts": attempts,
        }
        self.manifest.add(identifier, record)  # raises OutputPathError when the manifest cannot be written
        if old:
            self._remove_stale(identifier, old, {o["path"] for o in outputs})
        self.summary.done.append(identifier)
        self.summary.outputs[identifier] = [self.manifest.output_path(o["path"]) for o in outputs]
        self.bar.update(1)
        logger.debug("Case %s done: %d output(s), %s", identifier, len(outputs), record["timings"])

    def _remove_stale(self, identifier: str, old: Mapping[str, Any], kept: set[str]) -> None:
        """Outputs the previous record of this case listed and this run no longer writes."""
        for output in old.get("outputs", []):
            relative = str(output.get("path"))
            if relative in kept or self.manifest.owner_of(relative) not in (None, identifier):
                continue
            path = self.manifest.output_path(relative)
            try:
                path.unlink()
                logger.info("Removed %s: case %s no longer writes it", path, identifier)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("Could not remove the stale output %s: %s", path, describe_os_error(exc))

    def close(self) -> None:
        self.bar.close()


def run_batch(
    cases: Sequence[Any],
    worker_factory: WorkerFactory,
    output_dir: str | os.PathLike[str],
    settings: Mapping[str, Any],
    options: BatchOptions | None = None,
    *,
    inputs: InputsOf | None = None,
    manifest_name: str = MANIFEST_NAME,
) -> BatchSummary:
    """Run ``worker_factory()``'s ``prepare`` / ``process`` over every case that is not finished yet.

    Before any work: case names are checked (:func:`~medcam3d.batch.check_case_names`), the
    output folder is created and locked against a parallel run, stale temporaries of killed runs
    are removed (in the folder and below), and the folder's manifest is read. A case is skipped
    when its record matches (same settings, same inputs, outputs present with their sizes); the
    others run, one case in flight per worker, the next case prepared in a background thread. Each
    finished case is recorded in the manifest only after its outputs were checked, and the manifest
    is replaced atomically after each case, so a run killed at any moment resumes where it stopped.
    No worker is made (no model loaded) when every case is finished.

    Args:
        cases: objects with ``identifier`` and ``files`` (:class:`~medcam3d.batch.Case`, the nnU-Net
            or explain command's cases); picklable for the Ray engine.
        worker_factory: makes one :class:`~medcam3d.batch.CaseWorker` (loads the model). Called
            once for the local engine, once per Ray worker (then it must be picklable: a top-level
            class or a ``functools.partial``).
        output_dir: the output folder (created if missing); on a cluster, a shared file system.
        settings: everything that shapes the results (model, checkpoint fingerprint, method,
            layers, classes, save switches ...), as JSON-able values; not devices or progress.
        options: :class:`~medcam3d.batch.BatchOptions` (resume by default, local engine).
        inputs: lists the files of a case to hash (default: ``case.files`` + ``case.extra_inputs``);
            runs in this process only.
        manifest_name: the manifest's file name (``medcam3d_manifest<...>.json``): runs with other
            settings can share a folder through manifests of their own when their outputs have
            other names (``medcam3d nnunet`` keeps one per CAM method).

    Returns:
        a :class:`~medcam3d.batch.BatchSummary` (done / skipped / failed with the messages;
        ``exit_code`` 1 when any case failed).

    Raises:
        InputFileError: unsafe or repeated case names.
        SettingsMismatchError: the folder's manifest has other settings (without ``overwrite``).
        OutputPathError: the folder cannot be written, another run holds it, or the manifest
            cannot be read or written.
        WorkerError: the workers could not be started (the factory failed, too few resources).
        ConfigurationError: invalid options, an unreachable ``ray_address``.
        MissingExtraError: ``engine="ray"`` without Ray installed.
        Any exception of a case when ``continue_on_error=False``.
    """
    started = time.perf_counter()
    options = options or BatchOptions()
    if not isinstance(options, BatchOptions):
        from medcam3d.errors import ConfigurationError

        raise ConfigurationError(
            f"options must be a medcam3d.batch.BatchOptions, got {type(options).__name__}."
        )
    check_case_names(cases)
    check_manifest_name(manifest_name)
    out = Path(os.path.abspath(check_writable_dir(output_dir)))  # workers get an absolute folder
    inputs_of = inputs or case_inputs
    with _folder_lock(out):
        removed = _clean_temporaries(out)
        if removed:
            logger.info("Removed %d stale temporary file(s) of an interrupted run in %s", removed, out)
        plan = plan_batch(cases, out, settings, options, inputs=inputs_of, manifest_name=manifest_name)
        manifest = plan.manifest
        if options.overwrite or not manifest.path.exists():
            manifest.write()
        summary = BatchSummary(
            out, manifest.path, options.engine, 0, skipped=list(plan.skipped), reasons=dict(plan.reasons)
        )
        counts: dict[str, int] = {}
        for reason in plan.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        logger.info(
            "%d case(s): %d finished before (skipped), %d to compute%s",
            len(cases),
            len(plan.skipped),
            len(plan.to_run),
            " (" + ", ".join(f"{n} {r}" for r, n in counts.items()) + ")" if counts else "",
        )
        if plan.to_run:
            summary.workers = options.workers
            driver = Driver(manifest, out, options, inputs_of, summary, len(cases), len(plan.skipped))
            try:
                if options.engine == "ray":
                    from medcam3d.batch.ray_engine import run_ray

                    run_ray(driver, plan.to_run, worker_factory, options)
                else:
                    from medcam3d.batch.local import run_local

                    run_local(driver, plan.to_run, worker_factory, options)
            finally:
                driver.close()
    summary.elapsed_s = time.perf_counter() - started
    return summary


__all__ += ["Driver", "MANIFEST_NAME"]
