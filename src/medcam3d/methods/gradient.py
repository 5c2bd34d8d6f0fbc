"""Gradient-based CAM methods: each is the formula of its paper, on any number of spatial axes.

``A`` are the activations ``(N, K, *s)`` of a target layer, ``G = ∂score/∂A`` their gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext
from medcam3d.core.layers import LayerSpec
from medcam3d.core.tensors import block_pool, block_unpool, spatial_mean, spatial_sum

__all__ = [
    "GradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "SegXResCAM",
    "RandomCAM",
]


class GradCAM(BaseCAM):
    """Channel weights = spatial mean of the gradients (Selvaraju et al., 2017): ``w_k = mean(G_k)``."""

    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        return spatial_mean(grads)


class HiResCAM(BaseCAM):
    """Element-wise gradient × activation, summed over channels (Draelos & Carin, 2020): ``Σ_k G_k ⊙ A_k``."""

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext
    ) -> torch.Tensor:
        return grads * activations


class GradCAMElementWise(BaseCAM):
    """Element-wise product with a ReLU before the channel sum: ``Σ_k ReLU(G_k ⊙ A_k)``."""

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext
    ) -> torch.Tensor:
        return torch.relu(grads * activations)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., 2018), eq. 19 of the paper.

    ``α_ij = G²_ij / (2 G²_ij + (Σ_ab A_ab) G³_ij)`` (0 where ``G = 0``), ``w_k = Σ_ij α_ij ReLU(G_ij)``.

    ``variant="monai"`` uses MONAI's denominator ``2 G²_ij + Σ_ab A_ab G³_ab`` instead, for
    agreement with ``monai.visualize.GradCAMpp`` (which also multiplies the gradients by
    ``exp(score)``, a positive per-sample factor that normalisation removes).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Any = None,
        *args: Any,
        variant: Literal["paper", "monai"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if variant not in ("paper", "monai"):
            raise ValueError(f"variant must be 'paper' or 'monai', got {variant!r}.")
        self.variant = variant

    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        shape = (*activations.shape[:2], *([1] * (activations.ndim - 2)))
        if self.variant == "paper":
            denominator = 2 * g2 + spatial_sum(activations).reshape(shape) * g3
            alpha = g2 / (denominator + 1e-6)
            alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        else:
            denominator = 2 * g2 + spatial_sum(activations * g3).reshape(shape)
            denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
            alpha = g2 / (denominator + 1e-7)
        return spatial_sum(alpha * torch.relu(grads))


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., 2020): ``w_k = Σ(G_k ⊙ A_k) / (Σ A_k + ε)``."""

    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        return spatial_sum(grads * activations) / (spatial_sum(activations) + 1e-7)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., 2021): ``Σ_k ReLU(G_k) ⊙ A_k``."""

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext
    ) -> torch.Tensor:
        return torch.relu(grads) * activations


class SegXResCAM(BaseCAM):
    """Seg-XRes-CAM (Hasany et al., 2023): HiResCAM with block-pooled gradients.

    The gradients are pooled in non-overlapping blocks of ``pool_size`` voxels (``pool_mode``
    ``"max"`` or ``"mean"``), brought back to the feature-map grid by nearest-neighbour
    repetition, and multiplied element-wise with the activations. ``pool_size=None`` (or 1)
    is HiResCAM.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Any = None,
        *args: Any,
        pool_size: int | None = None,
        pool_mode: Literal["max", "mean"] = "max",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if pool_size is not None and (not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"pool_size must be a positive integer or None, got {pool_size!r}.")
        if pool_mode not in ("max", "mean"):
            raise ValueError(f"pool_mode must be 'max' or 'mean', got {pool_mode!r}.")
        self.pool_size = pool_size
        self.pool_mode = pool_mode

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext
    ) -> torch.Tensor:
        if self.pool_size is not None and self.pool_size > 1:
            pooled = block_pool(grads, self.pool_size, self.pool_mode)
            grads = block_unpool(pooled, self.pool_size, tuple(grads.shape[2:]))
        return grads * activations


class RandomCAM(BaseCAM):
    """A baseline: channel weights drawn uniformly from [-1, 1] (pass ``seed`` for repeatable maps).

    It needs no gradients, so it runs only the forward pass.
    """

    uses_gradients = False
    uses_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Any = None,
        *args: Any,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        self.seed = seed

    def weights(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=activations.device).manual_seed(self.seed)
        shape = activations.shape[:2]
        return (
            torch.rand(shape, generator=generator, device=activations.device, dtype=activations.dtype) * 2 - 1
        )
