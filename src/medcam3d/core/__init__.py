"""The CAM pipeline: taps, the base class, N-D tensor helpers."""

from medcam3d.core.base import BaseCAM, CAMResult
from medcam3d.core.layers import resolve_layers

__all__ = ["BaseCAM", "CAMResult", "resolve_layers"]
