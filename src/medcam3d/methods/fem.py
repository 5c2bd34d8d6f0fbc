"""FEM, the Feature Explanation Method (Fuad et al., 2020): gradient-free, N-D."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext
from medcam3d.core.layers import LayerSpec
from medcam3d.core.tensors import broadcast_channels, spatial_axes

__all__ = ["FEM"]


class FEM(BaseCAM):
    """FEM: each channel is thresholded with the k-sigma rule, ``A_k > mean(A_k) + k·std(A_k)``; the
    channel weight is the fraction of voxels above the threshold; the map is ``Σ_k w_k A_k``.

    Statistics are over the spatial axes of each (sample, channel), population standard
    deviation (as pytorch-grad-cam). ``(N, K, *s)`` → ``(N, *s)``. Gradient-free: one forward pass.
    """

    uses_gradients = False
    uses_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        k: float = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.k = k

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        axes = spatial_axes(activations)
        mean = activations.mean(dim=axes, keepdim=True)
        std = activations.std(dim=axes, keepdim=True, unbiased=False)
        above = (activations > mean + self.k * std).to(activations.dtype)
        weights = above.mean(dim=axes)
        return broadcast_channels(weights, activations) * activations
