"""nnU-Net v2 integration: CAMs computed in the same forward passes as nnU-Net's prediction.

Needs the ``nnunet`` extra (``pip install 'medcam3d[nnunet]'``). Importing this package is cheap
(the command line registers itself without torch or nnunetv2); the names below are loaded on
first use.

Files, one job each: ``loading`` (model folders, predictors, devices), ``layers`` (suggested
target layers), ``engine`` (the patch engine with nnU-Net's geometry and logit arithmetic),
``runner`` (one case, :class:`NnUNetCAM`), ``batch`` (the front door :func:`segment_and_explain`
and :func:`run_cam_for_prediction`), ``files`` (grouping, name checks, matching, writing), ``cli``
(the command line). ``predictor`` re-exports the names it has always offered.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BatchResult",
    "CaseFailure",
    "CaseResult",
    "NnUNetCAM",
    "load_predictor",
    "run_cam_for_prediction",
    "segment_and_explain",
    "suggested_layers",
]

_HOME = {
    "BatchResult": "batch",
    "CaseFailure": "batch",
    "run_cam_for_prediction": "batch",
    "segment_and_explain": "batch",
    "CaseResult": "runner",
    "NnUNetCAM": "runner",
    "load_predictor": "loading",
    "suggested_layers": "layers",
}

if TYPE_CHECKING:  # pragma: no cover
    from medcam3d.nnunet.batch import BatchResult, CaseFailure, run_cam_for_prediction, segment_and_explain
    from medcam3d.nnunet.layers import suggested_layers
    from medcam3d.nnunet.loading import load_predictor
    from medcam3d.nnunet.runner import CaseResult, NnUNetCAM


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"medcam3d.nnunet.{_HOME[name]}"), name)
    raise AttributeError(f"module 'medcam3d.nnunet' has no attribute {name!r}")
