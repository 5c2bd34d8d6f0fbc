"""The CAM pipeline shared by every method.

::

    input (N, C, *S) ──forward──▶ model output ──targets──▶ one score per sample
            │                                                  │
            └── taps on target layers: activations A (N, K, *s) ◀─ autograd.grad(score, A) → G
                   method hook: weights(A, G) → (N, K)  or  weighted_activations(A, G) → (N, K, *s)
                                or layer_map(A, G) → (N, *s)
                   ReLU → resize to *S on the model's device → per-sample min-max (optional)
                   mean over layers → min-max (optional) → (N, *S)

Everything between the input and the returned array is a torch tensor on the model's device.

A CAM object holds configuration only: the state of one call travels in a
:class:`~medcam3d.core.context.CallContext` handed to the hooks. A hook receives it when it
declares a parameter named ``context``; formula methods that need only ``A`` and ``G`` may leave it
out (``def weights(self, activations, grads)``), so methods written for earlier versions work as
they are.

Hooks a method may override, from the most common to the rarest:

- ``weights(activations, grads, context)`` → ``(N, K)`` channel weights;
- ``weighted_activations(activations, grads, context)`` → ``(N, K, *s)``;
- ``layer_map(activations, grads, context)`` → ``(N, *s)`` (``context.eigen_smooth`` says whether
  to project on the first principal component);
- ``get_cam_weights`` / ``get_cam_image`` / ``aggregate_multi_layers``: pytorch-grad-cam's names;
- the protected pipeline hooks ``_forward(context, taps)``, ``_gradients(context, scores,
  activations, retain_graph)``, ``_aggregate(context, layer_maps)``, ``_finalize(context, result)``
  and ``_release(context)`` (always called at the end of a call, also when it raises), for methods
  that change the passes themselves (FullGrad, Guided Grad-CAM, ShapleyCAM);
- the class attributes ``uses_gradients``, ``create_graph``, ``normalize_layer_maps``,
  ``shares_forward_pass`` and ``context_type``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.augment import TTATransform, default_tta_transforms, smooth_over_transforms
from medcam3d.core.checks import (
    check_gradients_allowed,
    check_input,
    check_targets,
    default_targets,
    resolve_normalize,
    select_output,
)
from medcam3d.core.compat import ActivationsAndGradients, PytorchGradCAMHooks, legacy_positional
from medcam3d.core.context import CallContext, CAMResult, OutputIndex, Target
from medcam3d.core.gradients import (
    DEFAULT_GRADIENT_MEMORY_BYTES,
    as_feature_map,
    batched_layer_gradients,
    layer_gradients,
    target_scores,
)
from medcam3d.core.layers import LayerSpec, resolve_layers
from medcam3d.core.model import conv_spatial_rank, model_device, model_state
from medcam3d.core.projection import first_component_projection
from medcam3d.core.taps import LayerTaps
from medcam3d.core.tensors import broadcast_channels, finish_layer_map
from medcam3d.errors import LayerNotReachedError, TargetError

__all__ = ["BaseCAM", "CAMResult", "CallContext", "Target", "model_device", "select_output"]

logger = logging.getLogger(__name__)


_HOOK_PARAMETERS: dict[Any, frozenset[str]] = {}


def _hook_parameters(hook: Callable[..., Any]) -> frozenset[str]:
    """The parameter names a hook declares (cached per function)."""
    key = getattr(hook, "__func__", hook)
    found = _HOOK_PARAMETERS.get(key)
    if found is None:
        found = frozenset(inspect.signature(hook).parameters)
        _HOOK_PARAMETERS[key] = found
    return found


class BaseCAM(PytorchGradCAMHooks):
    """Base class of every CAM method (pytorch-grad-cam 1.5 compatible signature).

    Args:
        model: any ``torch.nn.Module``; the input goes to the device of its parameters.
        target_layers: modules or dotted names (``"encoder.stages.4"``), one or several; maps of
            several layers are averaged (each normalised first when ``normalize=True``).
        reshape_transform: turns a layer output into ``(N, K, *s)`` (e.g. transformer tokens);
            applied to activations and gradients.
        compute_input_gradient: let the input require grad (FullGrad's input term).
        uses_gradients: whether the method needs gradients (default: the class's own setting).
        tta_transforms: transforms for ``aug_smooth`` (default: identity, flips along each spatial
            axis, in-plane rotations for square planes); see :mod:`medcam3d.core.augment`.
        detach: accepted for compatibility with pytorch-grad-cam; results are always detached.
        output_index: which element of a tuple/list (index) or dict (key) model output holds
            the logits the targets apply to (deep supervision, ``(logits, aux)``). Default ``0``.
        normalize: per-sample min-max normalisation to [0, 1] (default, pytorch-grad-cam
            behaviour). ``False`` returns raw maps that stay comparable across cases.
        return_tensor: return torch tensors on the model's device instead of numpy arrays.
        use_cuda: accepted for compatibility with the original medcam3d and ignored with a
            warning: the device always follows the model.
        eval_mode: put the model in eval mode for the duration of each call (restored after).
            With ``eval_mode=False`` a model in training mode stays so, and its BatchNorm layers
            update their running statistics in the CAM's forward passes, as in any training-mode
            forward.
        gradient_memory_bytes: memory budget for the gradients of several target sets taken in one
            batched backward pass (:meth:`compute_multi`; default 512 MiB).

    Calls are safe from several threads: the per-call state lives in the call's context, and
    calls on one model are serialised by a per-model lock (:func:`medcam3d.core.model.model_state`).
    """

    #: whether the method needs gradients with respect to the target layers
    uses_gradients: bool = True
    #: whether the method reads the targets (``False``: ``targets=None`` is fine on any output, e.g.
    #: EigenCAM on a segmenter)
    uses_targets: ClassVar[bool] = True
    #: whether the gradients must keep their graph (second-order methods)
    create_graph: ClassVar[bool] = False
    #: min-max normalise each layer's map before the layers are aggregated
    normalize_layer_maps: ClassVar[bool] = True
    #: whether :meth:`compute_multi` may serve several target sets from one forward pass
    shares_forward_pass: ClassVar[bool] = True
    #: the per-call context this method needs (a dataclass subclass of :class:`CallContext`)
    context_type: ClassVar[type[CallContext]] = CallContext

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        compute_input_gradient: bool = False,
        uses_gradients: bool | None = None,
        tta_transforms: Sequence[TTATransform] | None = None,
        detach: bool = True,
        *,
        output_index: OutputIndex = 0,
        normalize: bool = True,
        return_tensor: bool = False,
        use_cuda: bool | None = None,
        eval_mode: bool = True,
        gradient_memory_bytes: int = DEFAULT_GRADIENT_MEMORY_BYTES,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        reshape_transform, compute_input_gradient, use_cuda = legacy_positional(
            reshape_transform, compute_input_gradient, use_cuda
        )
        if use_cuda is not None:
            warnings.warn(
                "use_cuda is ignored: medcam3d computes on the device of the model. "
                "Move the model (model.cuda() / model.to(device)) to choose the device.",
                UserWarning,
                stacklevel=2,
            )
        self.model = model
        self.layers = resolve_layers(model, target_layers)
        self.target_layers = [module for _, module in self.layers]
        self.layer_names = [name for name, _ in self.layers]
        self.reshape_transform = reshape_transform
        self.compute_input_gradient = compute_input_gradient
        if uses_gradients is not None:
            self.uses_gradients = uses_gradients
        self.tta_transforms = list(tta_transforms) if tta_transforms is not None else None
        self.detach = detach
        self.output_index = output_index
        self.normalize = normalize
        self.return_tensor = return_tensor
        self.eval_mode = eval_mode
        if not isinstance(gradient_memory_bytes, int) or gradient_memory_bytes <= 0:
            raise ValueError(
                f"gradient_memory_bytes must be a positive integer, got {gradient_memory_bytes!r}."
            )
        self.gradient_memory_bytes = gradient_memory_bytes
        #: the model output of the latest call (pytorch-grad-cam compatibility; with several
        #: threads, read ``CAMResult.output`` instead)
        self.outputs: torch.Tensor | None = None
        #: pytorch-grad-cam's recorder: the target layers' outputs and gradients of the latest call
        self.activations_and_grads = ActivationsAndGradients(
            model, self.target_layers, reshape_transform, detach
        )
        self._expected_spatial_rank = conv_spatial_rank(model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    # ------------------------------------------------------------------ method hooks
    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        """Channel weights ``(N, K)`` from activations and gradients ``(N, K, *s)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement weights(), weighted_activations() or layer_map()."
        )

    def weighted_activations(
        self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext
    ) -> torch.Tensor:
        """``(N, K, *s)`` activations weighted per channel (or element-wise) before the channel sum."""
        if self._overrides("get_cam_weights"):
            weights: Any = self._pgc_cam_weights(context, activations, grads)
        else:
            weights = self._call_hook("weights", activations, grads, context)
        weights_t = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
        return broadcast_channels(weights_t, activations) * activations

    def layer_map(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        """The map of one layer at feature resolution ``(N, *s)`` (before ReLU and resizing)."""
        weighted = self._call_hook("weighted_activations", activations, grads, context)
        return first_component_projection(weighted) if context.eigen_smooth else weighted.sum(dim=1)

    def default_targets(self, output: torch.Tensor) -> list[Target]:
        """Targets when ``targets=None``: the highest-scoring class of a classifier output."""
        return default_targets(output)

    # ------------------------------------------------------------------ hook dispatch
    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(BaseCAM, name)

    def _call_hook(self, name: str, activations: torch.Tensor, grads: Any, context: CallContext) -> Any:
        """Call the hook ``name`` with the arguments it declares (``context``, ``eigen_smooth``)."""
        hook = getattr(self, name)
        declared = _hook_parameters(hook)
        kwargs: dict[str, Any] = {}
        if "context" in declared:
            kwargs["context"] = context
        if "eigen_smooth" in declared:
            kwargs["eigen_smooth"] = context.eigen_smooth
        return hook(activations, grads, **kwargs)

    # ------------------------------------------------------------------ protected pipeline hooks
    def _forward(self, context: CallContext, taps: LayerTaps) -> tuple[torch.Tensor, Any]:
        """The forward pass with the taps on: ``(selected output, raw model output)``."""
        with taps:
            raw_output = self.model(context.input_tensor)
        output = select_output(raw_output, self.output_index)
        missing = [name for name in self.layer_names if name not in taps.activations]
        if missing:
            raise LayerNotReachedError(
                f"Target layer(s) {missing} did not run during the forward pass. Choose layers that are "
                "used by model.forward (list them with medcam3d.utils.find_layers.list_layers)."
            )
        return output, raw_output

    def _gradients(
        self,
        context: CallContext,
        scores: torch.Tensor,
        activations: list[torch.Tensor],
        retain_graph: bool = False,
    ) -> list[torch.Tensor]:
        """``∂ Σ scores / ∂ activations`` for every target layer (the graph kept if ``retain_graph``)."""
        return layer_gradients(
            scores,
            activations,
            self.layer_names,
            create_graph=self.create_graph,
            retain_graph=retain_graph,
            output_index=self.output_index,
        )

    def _aggregate(self, context: CallContext, layer_maps: list[torch.Tensor]) -> torch.Tensor:
        """The final ``(N, *S)`` map from the per-layer maps."""
        return self._pgc_aggregate(layer_maps, context.normalize)

    def _finalize(self, context: CallContext, result: CAMResult) -> CAMResult:
        """Last change to one target set's result, inside the call (default: none)."""
        return result

    def _release(self, context: CallContext) -> None:
        """Free what the method kept in ``context``; called at the end of every call, also on errors."""
        return None

    # ------------------------------------------------------------------ pipeline
    def _layer_maps(
        self,
        context: CallContext,
        activations: list[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        spatial: tuple[int, ...],
    ) -> list[torch.Tensor]:
        """One ``(N, *S)`` map per target layer: the method's hook, then ReLU, resize, normalise."""
        batch = context.input_tensor.shape[0]
        normalize = context.normalize and self.normalize_layer_maps
        custom_image = self._overrides("get_cam_image")
        self._record_call(activations, grads)
        maps = []
        for (name, module), act, grad in zip(self.layers, activations, grads):
            rank, reshape = len(spatial), self.reshape_transform
            act_p = as_feature_map(name, act if self.create_graph else act.detach(), rank, batch, reshape)
            grad_p = as_feature_map(name, grad, rank, batch, reshape) if grad is not None else None
            context.layer_name, context.layer = name, module
            if custom_image:
                cam = self._pgc_cam_image(context, act_p, grad_p)
            else:
                cam = self._call_hook("layer_map", act_p, grad_p, context)
            maps.append(finish_layer_map(cam, spatial, normalize, act_p.device))
        context.layer_name, context.layer = "", None
        return maps

    def _compute_sets(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[list[Target] | None],
        eigen_smooth: bool,
        normalize: bool,
        output_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[CAMResult]:
        """One forward pass, then the maps of each target set (one gradient pass per set)."""
        spatial = tuple(input_tensor.shape[2:])
        batch = input_tensor.shape[0]
        track = self.uses_gradients
        context = self.context_type(
            input_tensor=input_tensor,
            eigen_smooth=eigen_smooth,
            normalize=normalize,
            output_transform=output_transform,
        )
        taps = LayerTaps(self.layers, track_gradients=track)
        with model_state(self.model, self.eval_mode, freeze_parameters=True):
            try:
                with torch.enable_grad() if track else torch.no_grad():
                    if self.compute_input_gradient:
                        context.input_tensor = input_tensor.detach().requires_grad_(True)
                    output, _ = self._forward(context, taps)
                    self.outputs = output.detach()
                    target_output = output_transform(output) if output_transform is not None else output
                    context.output = target_output.detach()
                    activations = [taps.activations[name] for name in self.layer_names]
                    prepared = [
                        self._targets_and_scores(given, context.output, target_output, batch)
                        for given in target_sets
                    ]
                    batched = self._batched_gradients(prepared, activations) if track else None
                    results = []
                    for index, (targets, scores) in enumerate(prepared):
                        context.targets, context.scores = targets, scores
                        grads: Sequence[torch.Tensor | None] = [None] * len(activations)
                        if batched is not None:
                            grads = batched[index]
                        elif track:
                            if scores is None:
                                raise TargetError(
                                    f"{type(self).__name__} needs targets; pass one per sample."
                                )
                            more = index < len(prepared) - 1
                            grads = self._gradients(context, scores, activations, retain_graph=more)
                        layer_maps = self._layer_maps(context, activations, grads, spatial)
                        result = CAMResult(
                            maps=self._aggregate(context, layer_maps),
                            layer_maps=layer_maps,
                            output=output.detach(),
                            scores=scores.detach() if scores is not None else None,
                            layer_names=list(self.layer_names),
                        )
                        results.append(self._finalize(context, result))
                return results
            finally:
                taps.remove()
                taps.clear()
                self._release(context)

    def _targets_and_scores(
        self, given: list[Target] | None, output: torch.Tensor, target_output: torch.Tensor, batch: int
    ) -> tuple[list[Target], torch.Tensor | None]:
        """One set's targets (the defaults when ``None``) and their ``(N,)`` scores (with graph)."""
        if given is None and not self.uses_targets:
            return [], None  # the method never reads a target
        targets = check_targets(self.default_targets(output) if given is None else given, batch)
        return targets, target_scores(target_output, targets)

    def _batched_gradients(
        self, prepared: list[tuple[list[Target], torch.Tensor | None]], activations: list[torch.Tensor]
    ) -> list[list[torch.Tensor]] | None:
        """Every target set's gradients from one batched backward pass, when the method takes plain
        gradients and there are several sets (:func:`~medcam3d.core.gradients.batched_layer_gradients`);
        ``None`` means one :meth:`_gradients` pass per set, interleaved with that set's maps (methods
        with their own gradient pass keep per-set state in the context between the two)."""
        scores = [s for _, s in prepared]
        plain = type(self)._gradients is BaseCAM._gradients and not self.create_graph
        if not plain or len(prepared) < 2 or any(s is None for s in scores):
            return None
        return batched_layer_gradients(
            [s for s in scores if s is not None],
            activations,
            self.layer_names,
            memory_bytes=self.gradient_memory_bytes,
            output_index=self.output_index,
        )

    def _resolve_normalize(self, normalize: bool | None) -> bool:
        return resolve_normalize(self.normalize, normalize)

    def compute_multi(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[Sequence[Target] | None],
        *,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> list[CAMResult]:
        """Maps for several target sets (e.g. several classes) from **one** forward pass.

        Each element of ``target_sets`` is what :meth:`compute` takes as ``targets`` (one target per
        sample, or ``None``). The forward pass runs once. For methods that take plain gradients, the
        sets' scores are then differentiated together in one batched backward pass (chunked by
        ``gradient_memory_bytes``), so K classes cost far less than K backward passes; methods with
        their own gradient pass (FullGrad, Guided Grad-CAM) take one backward pass per set from the
        same forward. Every result shares ``output``. Methods that declare
        ``shares_forward_pass = False`` (ShapleyCAM, whose second-order graphs are per set) run one
        :meth:`compute` per set instead: same results, one forward each.
        """
        check_gradients_allowed()
        sets = [None if t is None else list(t) for t in target_sets]
        if not sets:
            raise TargetError("target_sets is empty: pass at least one list of targets.")
        normalize = self._resolve_normalize(normalize)
        if not self.shares_forward_pass:
            return [
                self.compute(input_tensor, t, eigen_smooth=eigen_smooth, normalize=normalize) for t in sets
            ]
        x = check_input(input_tensor, self.model, self._expected_spatial_rank)
        return self._compute_sets(x, sets, eigen_smooth, normalize)

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> CAMResult:
        """Compute maps and return everything as torch tensors on the model's device.

        Args:
            input_tensor: ``(N, C, *S)``, 1 to 3 spatial axes (``(N, C, D, H, W)`` for volumes).
            targets: one callable per sample applied to ``output[i]``; ``None`` picks the top class
                of a classifier output.
            aug_smooth: average over :attr:`tta_transforms`, each map transformed back first; an
                output with the input's spatial shape is transformed back before the targets see it,
                so segmentation targets with masks stay aligned.
            eigen_smooth: project the weighted activations on their first principal component.
            normalize: override the instance's ``normalize`` setting for this call.
        """
        check_gradients_allowed()
        normalize = self._resolve_normalize(normalize)
        x = check_input(input_tensor, self.model, self._expected_spatial_rank)
        given: Any = targets if targets is None or callable(targets) else list(targets)
        if not aug_smooth:
            return self._compute_sets(x, [given], eigen_smooth, normalize)[0]
        transforms = self.tta_transforms or default_tta_transforms(x.shape[2:])
        inner_normalize = normalize and self.normalize_layer_maps
        return smooth_over_transforms(
            lambda x_t, back: self._compute_sets(x_t, [given], eigen_smooth, inner_normalize, back)[0],
            x,
            transforms,
            normalize,
        )

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """pytorch-grad-cam's ``forward``: maps without augmentation smoothing."""
        return self(input_tensor, targets, aug_smooth=False, eigen_smooth=eigen_smooth)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Maps ``(N, *S)``: float32 numpy in [0, 1] by default, or torch tensors on the model's
        device when ``return_tensor=True``."""
        result = self.compute(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        if self.return_tensor:
            return result.maps
        return result.maps.detach().to("cpu", torch.float32).numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_layers={self.layer_names})"
