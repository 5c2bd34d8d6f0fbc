"""``medcam3d explain``: maps of any model on a folder of scans, in each scan's exact geometry.

The command line (:mod:`medcam3d.explain.cli`) is a thin adapter over :func:`explain_folder`,
which loads the model once and calls :func:`explain_case` per scan.
"""

from __future__ import annotations

from medcam3d.explain.cases import Case, find_cases, find_masks
from medcam3d.explain.runner import (
    CaseResult,
    ExplainModel,
    MapRecord,
    expected_outputs,
    explain_case,
    explain_folder,
    prepare_case,
    prepare_model,
)
from medcam3d.explain.settings import ExplainSettings, check_settings

__all__ = [
    "Case",
    "CaseResult",
    "ExplainModel",
    "ExplainSettings",
    "MapRecord",
    "check_settings",
    "explain_case",
    "explain_folder",
    "expected_outputs",
    "find_cases",
    "find_masks",
    "prepare_case",
    "prepare_model",
]
