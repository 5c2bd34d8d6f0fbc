"""nnU-Net v2 integration: CAMs computed in the same forward passes as nnU-Net's prediction.

Needs the ``nnunet`` extra (``pip install 'medcam3d[nnunet]'``). Importing this package is cheap
(the command line registers itself without torch or nnunetv2); the names below are loaded on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CaseResult", "NnUNetCAM", "load_predictor", "run_cam_for_prediction", "suggested_layers"]

if TYPE_CHECKING:  # pragma: no cover
    from medcam3d.nnunet.predictor import (
        CaseResult,
        NnUNetCAM,
        load_predictor,
        run_cam_for_prediction,
        suggested_layers,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from medcam3d.nnunet import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'medcam3d.nnunet' has no attribute {name!r}")
