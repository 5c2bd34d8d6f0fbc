"""Dataset runs shared by every command: manifest, resume, progress, engines (local, Ray).

A command (``medcam3d nnunet``, ``medcam3d explain``, a user's script) gives

- its cases (objects with ``identifier`` and ``files``, see :class:`Case`),
- a picklable ``worker_factory()`` making a :class:`CaseWorker` (loads the model once) whose
  ``prepare(case)`` reads and preprocesses and whose ``process(case, prepared, context)`` computes
  and writes the case's outputs atomically into ``context.output_dir``,
- the settings that shape the results,

and :func:`run_batch` does the rest: checks the case names, skips the cases the output folder's
manifest lists as finished, runs the others on the local engine (one worker, the next case
prepared in a background thread) or on Ray actors (``engine="ray"``, several GPUs or machines),
records each case after its outputs were checked, shows one progress bar over cases and returns a
:class:`BatchSummary`. See docs/scale.md.

Ray is optional (``pip install 'medcam3d[ray]'``) and imported only for ``engine="ray"``.
"""

from __future__ import annotations

from medcam3d.batch.cases import Case, CaseLike, case_inputs, check_case_names, unsafe_case_name
from medcam3d.batch.manifest import (
    MANIFEST_NAME,
    Manifest,
    SettingsMismatchError,
    fingerprint_files,
    hash_input,
    normalize_settings,
    settings_differences,
)
from medcam3d.batch.options import BatchOptions, add_batch_arguments, options_from_args
from medcam3d.batch.run import BatchPlan, plan_batch, run_batch
from medcam3d.batch.summary import BatchSummary, CaseFailure, format_summary
from medcam3d.batch.worker import CaseContext, CaseWorker, WorkerError, WorkerFactory, torch_threads

__all__ = [
    "MANIFEST_NAME",
    "BatchOptions",
    "BatchPlan",
    "BatchSummary",
    "Case",
    "CaseContext",
    "CaseFailure",
    "CaseLike",
    "CaseWorker",
    "Manifest",
    "SettingsMismatchError",
    "WorkerError",
    "WorkerFactory",
    "add_batch_arguments",
    "case_inputs",
    "check_case_names",
    "fingerprint_files",
    "format_summary",
    "hash_input",
    "normalize_settings",
    "options_from_args",
    "plan_batch",
    "run_batch",
    "settings_differences",
    "torch_threads",
    "unsafe_case_name",
]
