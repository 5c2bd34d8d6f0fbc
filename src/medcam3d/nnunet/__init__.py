"""nnU-Net v2 integration: CAMs computed in the same forward passes as nnU-Net's prediction.

Needs the ``nnunet`` extra (``pip install 'medcam3d[nnunet]'``); nnunetv2 is imported lazily.
"""

from medcam3d.nnunet.predictor import (
    CaseResult,
    NnUNetCAM,
    load_predictor,
    run_cam_for_prediction,
    suggested_layers,
)

__all__ = ["CaseResult", "NnUNetCAM", "load_predictor", "run_cam_for_prediction", "suggested_layers"]
