"""Guided backpropagation and Guided Grad-CAM, for inputs of any dimensionality and batches.

Guided backpropagation (Springenberg et al., 2015) passes a gradient back through a rectifier
only where both the gradient and the rectifier's input are positive:
``∂ᵍ/∂x = ReLU(∂ᵍ/∂y) · [x > 0]``. It is applied with hooks, never by replacing modules: a
forward pre-hook on every ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ELU`` (and ``ReLU6``, ``CELU``,
``SELU``) records where its input is positive (before an ``inplace=True`` activation overwrites
it), and a forward hook registers a tensor hook on its output that replaces the incoming
gradient by ``ReLU(g) · [x > 0]``. The activation's own backward then multiplies by its
derivative, which is 1 wherever ``x > 0``. Activations called as functions (``F.relu``) inside
``forward`` cannot be hooked and keep their ordinary gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.checks import check_gradients_allowed, check_input, select_output
from medcam3d.core.context import CallContext, CAMResult, Target
from medcam3d.core.layers import LayerSpec
from medcam3d.core.model import conv_spatial_rank, model_device, model_state
from medcam3d.core.taps import LayerTaps
from medcam3d.core.targets import ClassifierOutputTarget
from medcam3d.core.tensors import minmax_normalize
from medcam3d.errors import TargetError
from medcam3d.methods.gradient import GradCAM

__all__ = [
    "GuidedBackpropHooks",
    "GuidedBackpropReLU",
    "GuidedBackpropReLUasModule",
    "guided_backprop",
    "GuidedBackpropReLUModel",
    "GuidedGradCAM",
]

#: activation modules whose backward pass is guided
GUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.ReLU6,
    nn.CELU,
    nn.SELU,
)


class GuidedBackpropHooks:
    """Context manager: guided backward passes through every rectifier module of ``model``."""

    def __init__(
        self,
        model: nn.Module,
        activation_types: tuple[type[nn.Module], ...] = GUIDED_ACTIVATIONS,
        active: bool = True,
    ) -> None:
        self.model = model
        self.activation_types = activation_types
        #: whether backward passes are guided now; the tensor hooks installed during the forward
        #: pass read it when the gradient flows, so one forward can serve an ordinary backward pass
        #: (active=False) and a guided one (active=True)
        self.active = active
        self._masks: dict[int, list[torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _pre_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._masks.setdefault(id(module), []).append((inputs[0].detach() > 0).to(inputs[0].dtype))

    def _hook(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        stack = self._masks.get(id(module))
        if not stack:
            return
        mask = stack.pop()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(
                lambda grad, positive=mask: grad.clamp_min(0) * positive if self.active else None
            )

    def __enter__(self) -> GuidedBackpropHooks:
        for module in self.model.modules():
            if isinstance(module, self.activation_types):
                self._handles.append(module.register_forward_pre_hook(self._pre_hook))
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._masks.clear()


def _as_targets(target_category: Any, output: torch.Tensor) -> list[Target]:
    n = output.shape[0]
    if target_category is None:
        if output.ndim != 2:
            raise TargetError(
                f"target_category=None picks the top class of a classifier output (N, classes); this output has "
                f"shape {tuple(output.shape)}. Pass one target per sample."
            )
        top = output.detach().argmax(dim=1)
        return [ClassifierOutputTarget(top[i]) for i in range(n)]
    if isinstance(target_category, (int, np.integer)):
        return [ClassifierOutputTarget(int(target_category)) for _ in range(n)]
    items = list(target_category)
    if len(items) != n:
        raise TargetError(f"Got {len(items)} targets for a batch of {n} samples: pass one per sample.")
    return [t if callable(t) else ClassifierOutputTarget(int(t)) for t in items]


def guided_backprop(
    model: nn.Module,
    input_tensor: torch.Tensor,
    targets: Sequence[Target] | int | None = None,
    output_index: int | str = 0,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Guided-backpropagation gradient of each sample's target score with respect to its input.

    Args:
        model: any module; rectifier modules are guided through hooks.
        input_tensor: ``(N, C, *S)``, any number of spatial axes.
        targets: one callable per sample (as for the CAM methods), a class index for all samples,
            or ``None`` for the top class of a classifier output.
        output_index: element of a tuple/list/dict output holding the logits.
        eval_mode: run the model in eval mode (restored afterwards).

    Returns:
        ``(N, C, *S)`` gradient image on the model's device (detached). The model's flags,
        ``requires_grad`` and hooks are restored, also when this raises.
    """
    check_gradients_allowed()
    x = check_input(input_tensor, model, conv_spatial_rank(model))
    with model_state(model, eval_mode, freeze_parameters=True), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        with GuidedBackpropHooks(model):
            output = select_output(model(x), output_index)
            target_list = _as_targets(targets, output)
            score = torch.stack(
                [torch.as_tensor(t(output[i])).sum() for i, t in enumerate(target_list)]
            ).sum()
            (grad,) = torch.autograd.grad(score, x)
    return grad.detach()


class GuidedBackpropReLU(torch.autograd.Function):
    """pytorch-grad-cam's guided ReLU as an autograd function: ``ReLU`` forward, backward
    ``ReLU(g) · [x > 0]`` (any shape). medcam3d itself guides rectifier modules with hooks."""

    @staticmethod
    def forward(ctx: Any, input_img: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input_img)
        return input_img.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (input_img,) = ctx.saved_tensors
        return grad_output.clamp_min(0) * (input_img > 0).to(grad_output.dtype)


class GuidedBackpropReLUasModule(nn.Module):
    """:class:`GuidedBackpropReLU` as a module (pytorch-grad-cam's name)."""

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        return GuidedBackpropReLU.apply(input_img)


class GuidedBackpropReLUModel:
    """pytorch-grad-cam's guided-backpropagation entry point, N-D and batched.

    ``GuidedBackpropReLUModel(model, device)(input_img, target_category=None)`` returns the guided
    gradient as a float32 numpy array with the channels **last**, as pytorch-grad-cam:
    ``(H, W, C)`` for one 2D image ``(1, C, H, W)``, ``(D, H, W, C)`` for one volume, so
    ``cam_mask[..., None] * gb`` works. For a batch of ``N > 1`` the batch axis is kept:
    ``(N, *S, C)`` (pytorch-grad-cam explains only the first sample). ``target_category``: a class
    index for every sample, one per sample, targets, or ``None`` (each sample's top class).
    ``device`` moves the model there when given. :func:`guided_backprop` returns the torch
    ``(N, C, *S)`` gradient on the model's device.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None) -> None:
        self.model = model.to(device) if device is not None else model
        self.device = model_device(self.model)

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        return self.model(input_img)

    def __call__(self, input_img: torch.Tensor, target_category: Any = None) -> np.ndarray:
        grad = guided_backprop(self.model, input_img.to(self.device), target_category)
        channels_last = grad.to("cpu", torch.float32).movedim(1, -1).numpy()
        return channels_last[0] if channels_last.shape[0] == 1 else channels_last


@dataclass
class GuidedContext(CallContext):
    """Guided Grad-CAM's call state: the guidance hooks and the guided gradient of the current set."""

    hooks: GuidedBackpropHooks | None = None
    guided: torch.Tensor | None = None


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation × the Grad-CAM map, N-D.

    ``channel_reduction="abs-sum"`` (default) returns ``(N, *S)``: ``Σ_c |guided_c| · CAM``,
    min-max normalised per sample like every map (unless ``normalize=False``).
    ``channel_reduction=None`` returns the signed ``(N, C, *S)`` product ``guided · CAM`` (not
    normalised). ``CAMResult.layer_maps`` hold the Grad-CAM maps. Grad-CAM and the guided gradient
    come from **one** forward pass (two backward passes); with ``aug_smooth`` the Grad-CAM map is
    averaged over the test-time transforms and the guided gradient is taken once, on the
    untransformed input.
    """

    context_type = GuidedContext

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *args: Any,
        channel_reduction: Literal["abs-sum"] | None = "abs-sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        self.compute_input_gradient = True  # the guided pass differentiates with respect to the input
        if channel_reduction not in ("abs-sum", None):
            raise ValueError(f"channel_reduction must be 'abs-sum' or None, got {channel_reduction!r}.")
        self.channel_reduction = channel_reduction

    @staticmethod
    def _state(context: CallContext) -> GuidedContext:
        if not isinstance(context, GuidedContext):
            raise TypeError("GuidedGradCAM's hooks run inside its own pipeline (a GuidedContext).")
        return context

    def _forward(self, context: CallContext, taps: LayerTaps) -> tuple[torch.Tensor, Any]:
        # The forward pass installs the guidance hooks switched off: the Grad-CAM gradient flows
        # through ordinary rectifiers, then _gradients switches them on for the guided pass.
        state = self._state(context)
        state.hooks = GuidedBackpropHooks(self.model, active=False)
        with state.hooks:
            return super()._forward(context, taps)

    def _gradients(
        self,
        context: CallContext,
        scores: torch.Tensor,
        activations: list[torch.Tensor],
        retain_graph: bool = False,
    ) -> list[torch.Tensor]:
        state = self._state(context)
        grads = super()._gradients(context, scores, activations, retain_graph=True)
        hooks = state.hooks
        assert hooks is not None
        hooks.active = True
        try:
            (guided,) = torch.autograd.grad(
                scores.sum(), context.input_tensor, retain_graph=True if retain_graph else None
            )
        finally:
            hooks.active = False
        state.guided = guided.detach()
        return grads

    def _combine(self, guided: torch.Tensor, result: CAMResult, normalize: bool) -> CAMResult:
        product = guided * result.maps.unsqueeze(1).to(guided.dtype)
        if self.channel_reduction == "abs-sum":
            reduced = product.abs().sum(dim=1)
            result.maps = minmax_normalize(reduced) if normalize else reduced
        else:
            result.maps = product
        return result

    def _finalize(self, context: CallContext, result: CAMResult) -> CAMResult:
        state = self._state(context)
        if context.output_transform is not None:  # an aug_smooth pass: combined once, after smoothing
            return result
        assert state.guided is not None
        return self._combine(state.guided, result, context.normalize)

    def _release(self, context: CallContext) -> None:
        state = self._state(context)
        state.hooks, state.guided = None, None

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> CAMResult:
        """As :meth:`BaseCAM.compute`; maps are guided gradient × Grad-CAM (see the class)."""
        result = super().compute(
            input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, normalize=normalize
        )
        if not aug_smooth:
            return result
        target_list = list(targets) if targets is not None else self.default_targets(result.output)
        guided = guided_backprop(self.model, input_tensor, target_list, self.output_index, self.eval_mode)
        return self._combine(guided, result, self._resolve_normalize(normalize))
