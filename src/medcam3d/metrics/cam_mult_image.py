"""Confidence change when the input is multiplied by its map: pytorch-grad-cam's
``pytorch_grad_cam.metrics.cam_mult_image`` (1.5.7) for any spatial rank, on the model's device.

``CamMultImageConfidenceChange()(input_tensor, cams, targets, model)`` returns, per sample,
``score(x ⊙ cam) - score(x)`` (float32 ``(N,)``); :class:`DropInConfidence` returns
``max(0, score(x) - score(x ⊙ cam))`` and :class:`IncreaseInConfidence` ``1.0`` where the score
rose, ``0.0`` elsewhere (Chattopadhay et al., Grad-CAM++ 2018; both without the division by the
original score that the paper's "average drop" applies, as in pytorch-grad-cam). See
:mod:`medcam3d.metrics.perturbation_confidence` for the batching, the device and the model state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medcam3d.metrics.perturbation_confidence import PerturbationConfidenceMetric

__all__ = [
    "multiply_tensor_with_cam",
    "CamMultImageConfidenceChange",
    "DropInConfidence",
    "IncreaseInConfidence",
]


def multiply_tensor_with_cam(input_tensor: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """One sample ``(C, *S)`` (after normalisation) times its map ``(*S)``, broadcast over channels."""
    return input_tensor * torch.as_tensor(cam, device=input_tensor.device, dtype=input_tensor.dtype)


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """``score(x ⊙ cam) - score(x)`` per sample (``return_diff=False``: ``score(x ⊙ cam)``)."""

    def __init__(self) -> None:
        super().__init__(multiply_tensor_with_cam)


def _map_scores(result: Any, transform: Any) -> Any:
    if isinstance(result, tuple):
        return (transform(result[0]), *result[1:])
    return transform(result)


class DropInConfidence(CamMultImageConfidenceChange):
    """``max(0, score(x) - score(x ⊙ cam))`` per sample, float32 ``(N,)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _map_scores(super().__call__(*args, **kwargs), lambda s: np.maximum(-s, 0).astype(np.float32))


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """``1.0`` where ``score(x ⊙ cam) > score(x)``, else ``0.0``; float32 ``(N,)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _map_scores(super().__call__(*args, **kwargs), lambda s: np.float32(s > 0))
