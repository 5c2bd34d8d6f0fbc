"""The CAM pipeline: the base class, the per-call context, targets, taps, checks, model helpers
and N-D tensor helpers. Nothing here imports from ``medcam3d.methods``, ``medcam3d.utils`` or an
integration."""

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext, CAMResult, Target
from medcam3d.core.layers import resolve_layers
from medcam3d.core.model import conv_spatial_rank, model_device, model_state, unwrap_compiled
from medcam3d.core.protocol import CAMMethod

__all__ = [
    "BaseCAM",
    "CAMMethod",
    "CAMResult",
    "CallContext",
    "Target",
    "conv_spatial_rank",
    "model_device",
    "model_state",
    "resolve_layers",
    "unwrap_compiled",
]
