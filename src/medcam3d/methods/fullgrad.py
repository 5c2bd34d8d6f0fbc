"""FullGrad (Srinivas & Fleuret, 2019): input-gradient term plus the bias-gradients of every layer, N-D.

``S(x) = ψ(|∇ₓf ⊙ x|) + Σ_layers Σ_channels ψ(|∇_z f ⊙ b|)`` where ``z`` is a layer's output, ``b``
its (effective) bias broadcast over the layer's spatial axes, and ``ψ`` rescales each
(sample, channel) map to [0, 1] and resizes it to the input (linear interpolation, any number of
spatial axes). Here ``ψ`` rescales at the layer's own resolution, sums the channels, then resizes
(the same as resizing each channel first, up to interpolation at the extremes; K times less memory).

Layers with a bias: every convolution with ``bias`` (``Conv1d/2d/3d`` and transposed) and every
normalisation layer (``BatchNorm*``, ``InstanceNorm*``, ``GroupNorm``, with or without affine
parameters). A normalisation ``y = γ (x − μ) / σ + β`` has the effective bias ``β − γ μ / σ``
(``γ = 1, β = 0`` without affine parameters), with ``μ, σ`` the statistics the layer used in this
forward pass: running statistics, or the per-sample statistics of instance and group norms.
Linear layers act on vectors without spatial axes: their term is constant over space and is
left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from medcam3d.core.base import BaseCAM
from medcam3d.core.checks import select_output
from medcam3d.core.context import CallContext
from medcam3d.core.layers import LayerSpec
from medcam3d.core.projection import first_component_projection
from medcam3d.core.taps import LayerTaps
from medcam3d.core.tensors import minmax_normalize

__all__ = ["FullGrad", "FullGradContext", "bias_layers"]

logger = logging.getLogger(__name__)

_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """Every convolution with a bias and every batch/instance/group normalisation of ``model``."""
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, _ConvNd) and module.bias is not None:
            found.append(module)
        elif isinstance(module, _NORMS):
            found.append(module)
    return found


def _channels(module: nn.Module) -> int:
    for attribute in ("out_channels", "num_features", "num_channels"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"Cannot tell the number of channels of {type(module).__name__}.")


def _per_channel_minmax_sum(x: torch.Tensor) -> torch.Tensor:
    """ψ then channel sum: ``(N, K, *s)`` → ``(N, *s)``, each (sample, channel) map scaled to [0, 1]."""
    n, k = x.shape[:2]
    return minmax_normalize(x.reshape(n * k, *x.shape[2:])).reshape(x.shape).sum(dim=1)


@dataclass
class FullGradContext(CallContext):
    """FullGrad's call state: the statistics each normalisation layer used in this forward pass, and
    the input-gradient term of the target set being processed."""

    norm_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    input_term: torch.Tensor | None = None


def _full_grad_context(context: CallContext) -> FullGradContext:
    if not isinstance(context, FullGradContext):
        raise TypeError("FullGrad's hooks run inside FullGrad's own pipeline (a FullGradContext).")
    return context


class FullGrad(BaseCAM):
    """FullGrad saliency (Srinivas & Fleuret, 2019) for networks of any dimensionality.

    ``target_layers`` is ignored (as pytorch-grad-cam): every bias layer of the model is used
    (:func:`bias_layers`). Bias layers that do not run in the forward pass or do not reach the
    chosen output (deep-supervision heads) contribute nothing. Output ``(N, *S)``; the layer maps
    are the raw per-layer terms (not rescaled). ``eigen_smooth=True`` projects the stack of
    per-layer terms (and the input term) on its first principal component instead of summing it.
    """

    #: the terms are summed raw; only the sum is normalised
    normalize_layer_maps = False
    context_type = FullGradContext

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        if target_layers:
            logger.warning("FullGrad ignores target_layers: it uses every bias layer of the model.")
        layers = bias_layers(model)
        if not layers:
            raise ValueError(
                "FullGrad found no convolution with a bias and no normalisation layer in the model."
            )
        kwargs.pop("compute_input_gradient", None)
        super().__init__(model, layers, reshape_transform, compute_input_gradient=True, **kwargs)

    # ------------------------------------------------------------------ effective biases
    @staticmethod
    def _layer_stats(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, var)`` a normalisation layer uses for its input ``x`` ``(N, K, *s)``."""
        x = x.detach().float()
        n, k = x.shape[:2]
        if isinstance(module, nn.GroupNorm):
            grouped = x.reshape(n, module.num_groups, -1)
            mean = grouped.mean(dim=2).repeat_interleave(k // module.num_groups, dim=1)
            var = grouped.var(dim=2, unbiased=False).repeat_interleave(k // module.num_groups, dim=1)
            return mean, var
        assert isinstance(module, (_BatchNorm, _InstanceNorm))
        flat = x.reshape(n, k, -1)
        per_sample = isinstance(module, _InstanceNorm)
        uses_batch_stats = module.training or module.running_mean is None
        if isinstance(module, _InstanceNorm):
            uses_batch_stats = module.training or not module.track_running_stats
        if not uses_batch_stats:
            assert module.running_mean is not None and module.running_var is not None
            return module.running_mean.float()[None], module.running_var.float()[None]
        if per_sample:
            return flat.mean(dim=2), flat.var(dim=2, unbiased=False)
        mean = flat.mean(dim=(0, 2))[None]
        return mean, flat.transpose(0, 1).reshape(k, -1).var(dim=1, unbiased=False)[None]

    def effective_bias(self, module: nn.Module, context: FullGradContext) -> torch.Tensor:
        """Bias of ``module`` in this call's forward pass, ``(1, K)`` or ``(N, K)`` (per-sample statistics)."""
        if isinstance(module, _ConvNd):
            assert module.bias is not None
            return module.bias.detach().float()[None]
        mean, var = context.norm_stats[id(module)]
        eps = float(getattr(module, "eps", 1e-5))
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        gamma = weight.detach().float()[None] if weight is not None else torch.ones_like(mean)
        beta = bias.detach().float()[None] if bias is not None else torch.zeros_like(mean)
        return beta - gamma * mean / torch.sqrt(var + eps)

    # ------------------------------------------------------------------ pipeline hooks
    def _forward(self, context: CallContext, taps: LayerTaps) -> tuple[torch.Tensor, Any]:
        state = _full_grad_context(context)
        x = context.input_tensor

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            state.norm_stats[id(module)] = self._layer_stats(module, inputs[0])

        handles = [m.register_forward_pre_hook(record) for _, m in self.layers if isinstance(m, _NORMS)]
        try:
            with taps:
                raw_output = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        output = select_output(raw_output, self.output_index)
        shape_tail = [1] * (x.ndim - 2)
        for name, module in self.layers:
            if name not in taps.activations:  # did not run: contributes nothing
                taps.activations[name] = torch.zeros(
                    (x.shape[0], _channels(module), *shape_tail), device=x.device, requires_grad=True
                )
        return output, raw_output

    def _gradients(
        self,
        context: CallContext,
        scores: torch.Tensor,
        activations: list[torch.Tensor],
        retain_graph: bool = False,
    ) -> list[torch.Tensor]:
        state = _full_grad_context(context)
        x = context.input_tensor
        grads = torch.autograd.grad(
            scores.sum(), [*activations, x], allow_unused=True, retain_graph=True if retain_graph else None
        )
        input_grad = grads[-1] if grads[-1] is not None else torch.zeros_like(x)
        state.input_term = _per_channel_minmax_sum((input_grad.detach() * x.detach()).abs().float())
        return [
            g.detach() if g is not None else torch.zeros_like(a).detach()
            for g, a in zip(grads[:-1], activations)
        ]

    def layer_map(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        bias = self.effective_bias(context.current_layer(), _full_grad_context(context)).to(grads.device)
        bias = bias.reshape(*bias.shape, *([1] * (grads.ndim - 2)))
        return _per_channel_minmax_sum((grads.float() * bias).abs())

    def _aggregate(self, context: CallContext, layer_maps: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the input term and every layer's term ``(N, *S)`` (or their first principal component)."""
        input_term = _full_grad_context(context).input_term
        assert input_term is not None
        terms = [input_term, *(m.clamp_min(0) for m in layer_maps)]
        if context.eigen_smooth:
            total = first_component_projection(torch.stack(terms, dim=1)).clamp_min(0)
        else:
            total = torch.stack(terms, dim=0).sum(dim=0)
        return minmax_normalize(total) if context.normalize else total
