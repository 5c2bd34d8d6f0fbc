"""``medcam3d explain``: maps of any model on a folder of scans, in each scan's exact geometry.

The command line (:mod:`medcam3d.explain.cli`) is a thin adapter over :func:`explain_run`
(:func:`explain_folder` returns its per-case results): the cases go through the batch layer
(:mod:`medcam3d.batch`: manifest, resume, local or Ray engine), with the model loaded once per worker.
"""

from __future__ import annotations

from medcam3d.explain.cases import Case, find_cases, find_masks
from medcam3d.explain.folder import (
    ExplainCaseWorker,
    ExplainRun,
    ModelFacts,
    batch_settings,
    explain_folder,
    explain_run,
    model_fingerprint,
)
from medcam3d.explain.runner import (
    CaseResult,
    ExplainModel,
    MapRecord,
    expected_outputs,
    explain_case,
    explain_prepared,
    prepare_case,
    prepare_model,
)
from medcam3d.explain.settings import ExplainSettings, check_settings

__all__ = [
    "Case",
    "CaseResult",
    "ExplainCaseWorker",
    "ExplainModel",
    "ExplainRun",
    "ExplainSettings",
    "MapRecord",
    "ModelFacts",
    "batch_settings",
    "check_settings",
    "explain_case",
    "explain_folder",
    "explain_prepared",
    "explain_run",
    "expected_outputs",
    "find_cases",
    "find_masks",
    "model_fingerprint",
    "prepare_case",
    "prepare_model",
]
