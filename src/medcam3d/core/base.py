"""The CAM pipeline shared by every method.

::

    input (N, C, *S) ──forward──▶ model output ──targets──▶ one score per sample
            │                                                  │
            └── taps on target layers: activations A (N, K, *s) ◀─ autograd.grad(score, A) → G
                   method hook: weights(A, G) → (N, K)  or  weighted_activations(A, G) → (N, K, *s)
                                or layer_map(A, G, eigen_smooth) → (N, *s)
                   ReLU → resize to *S on the model's device → per-sample min-max (optional)
                   mean over layers → min-max (optional) → (N, *S)

Everything between the input and the returned array is a torch tensor on the model's device.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.augment import TTATransform, default_tta_transforms
from medcam3d.core.layers import LayerSpec, resolve_layers
from medcam3d.core.projection import first_component_projection
from medcam3d.core.taps import LayerTaps
from medcam3d.core.tensors import broadcast_channels, minmax_normalize, resize_maps
from medcam3d.errors import (
    InputShapeError,
    LayerNotReachedError,
    LayerOutputError,
    ModelOutputError,
    NonFiniteInputError,
    TargetError,
)

__all__ = ["BaseCAM", "CAMResult", "CallContext", "model_device", "select_output"]

logger = logging.getLogger(__name__)

Target = Callable[[torch.Tensor], torch.Tensor]
OutputIndex = Union[int, str]


@dataclass
class CAMResult:
    """What one CAM computation produced; every tensor is on the model's device.

    Attributes:
        maps: ``(N, *S)`` final maps (normalised to [0, 1] unless ``normalize=False``).
        layer_maps: one ``(N, *S)`` map per target layer, after ReLU and resizing
            (normalised per sample when ``normalize=True``).
        output: the model output the targets were applied to (the element chosen by
            ``output_index`` for tuple/list/dict outputs), detached, e.g. ``(N, classes)`` or
            ``(N, classes, *S)``.
        scores: ``(N,)`` the target score of each sample, detached.
        layer_names: the dotted names of the target layers.
    """

    maps: torch.Tensor
    layer_maps: list[torch.Tensor]
    output: torch.Tensor
    scores: torch.Tensor | None
    layer_names: list[str] = field(default_factory=list)


@dataclass
class CallContext:
    """What a method hook may need besides activations and gradients, for the current layer."""

    input_tensor: torch.Tensor
    targets: list[Target]
    layer_name: str
    layer: nn.Module
    output: torch.Tensor
    #: maps a model output of this pass back to the frame the targets expect (``aug_smooth``);
    #: perturbation methods apply it to the outputs of their extra forward passes
    output_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _first_conv_rank(model: nn.Module) -> int | None:
    """Spatial rank shared by all the model's convolutions (None if none, or if ranks are mixed)."""
    ranks = {len(m.kernel_size) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}
    return ranks.pop() if len(ranks) == 1 else None


def model_device(model: nn.Module, fallback: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback`` or CPU if it has none)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return fallback if fallback is not None else torch.device("cpu")


def select_output(raw_output: Any, output_index: OutputIndex = 0) -> torch.Tensor:
    """The tensor of logits in a model output: the output itself, or the element ``output_index``
    picks from a tuple/list (index) or dict (key, or position); a clear error otherwise."""
    out = raw_output
    if isinstance(out, dict):
        key = output_index
        if key not in out:
            if isinstance(key, int) and 0 <= key < len(out):
                key = list(out.keys())[key]
            else:
                raise ModelOutputError(
                    f"The model returns a dict with keys {list(out.keys())}; output_index={output_index!r} "
                    "is not one of them. Pass output_index=<key>."
                )
        out = out[key]
    elif isinstance(out, (tuple, list)):
        index = output_index
        if not isinstance(index, int) or not -len(out) <= index < len(out):
            raise ModelOutputError(
                f"The model returns a {type(out).__name__} of {len(out)} elements; output_index="
                f"{output_index!r} does not pick one. Pass an index from 0 to {len(out) - 1} "
                "(0 is the full-resolution output for deep supervision)."
            )
        out = out[index]
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(
            f"The selected model output is a {type(out).__name__}, not a tensor. "
            "Use output_index to pick the tensor of logits."
        )
    return out


class _ModelState:
    """Saves and restores train/eval flags and parameters' ``requires_grad``."""

    def __init__(self, model: nn.Module, eval_mode: bool, freeze_parameters: bool) -> None:
        self.training = [(m, m.training) for m in model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        if eval_mode:
            model.eval()
        if freeze_parameters:
            for p, _ in self.requires_grad:
                p.requires_grad_(False)

    def restore(self) -> None:
        for module, flag in self.training:
            module.training = flag
        for p, flag in self.requires_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


class BaseCAM:
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
    """

    #: whether the method needs gradients with respect to the target layers
    uses_gradients: bool = True
    #: whether the gradients must keep their graph (second-order methods)
    create_graph: bool = False

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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
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
        self.outputs: torch.Tensor | None = None
        self.context: CallContext | None = None
        self._input: torch.Tensor | None = None
        self._expected_spatial_rank = _first_conv_rank(model)

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    # ------------------------------------------------------------------ hooks
    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(N, K)`` from activations and gradients ``(N, K, *s)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement weights(), weighted_activations() or layer_map()."
        )

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor | np.ndarray:
        """pytorch-grad-cam's hook: channel weights ``(N, K)``. Defaults to :meth:`weights`."""
        return self.weights(activations, grads)

    def weighted_activations(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``(N, K, *s)`` activations weighted per channel (or element-wise) before the channel sum."""
        ctx = self.context
        assert ctx is not None
        weights = self.get_cam_weights(ctx.input_tensor, ctx.layer, ctx.targets, activations, grads)
        weights_t = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
        return broadcast_channels(weights_t, activations) * activations

    def layer_map(
        self, activations: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool = False
    ) -> torch.Tensor:
        """The map of one layer at feature resolution ``(N, *s)`` (before ReLU and resizing)."""
        weighted = self.weighted_activations(activations, grads)
        if eigen_smooth:
            return first_component_projection(weighted)
        return weighted.sum(dim=1)

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        """pytorch-grad-cam's name for :meth:`layer_map`."""
        return self.layer_map(activations, grads, eigen_smooth)

    def aggregate_multi_layers(self, layer_maps: list[torch.Tensor], normalize: bool) -> torch.Tensor:
        """Mean over layers of ``(N, *S)`` maps, normalised again if asked."""
        stacked = torch.stack(layer_maps, dim=1).clamp_min(0).mean(dim=1)
        return minmax_normalize(stacked) if normalize else stacked

    def default_targets(self, output: torch.Tensor) -> list[Target]:
        """Targets when ``targets=None``: the highest-scoring class of a classifier output."""
        from medcam3d.core.targets import ClassifierOutputTarget

        if output.ndim == 2:
            categories = output.argmax(dim=1)
            return [ClassifierOutputTarget(categories[i]) for i in range(output.shape[0])]
        if output.ndim == 1:
            return [ClassifierOutputTarget(None) for _ in range(output.shape[0])]
        raise TargetError(
            f"targets=None picks the top class of a classifier output (N, classes), but this model's "
            f"output has shape {tuple(output.shape)} with spatial axes. Pass one target per sample, e.g. "
            "targets=[SemanticSegmentationTarget(category=1, mask=None)] * N (the voxels predicted as class 1) "
            "or [ClassifierOutputTarget(1)] * N (the whole class-1 channel), from medcam3d.utils.model_targets."
        )

    # ------------------------------------------------------------------ validation
    def _check_input(self, input_tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_tensor, torch.Tensor):
            raise InputShapeError(
                f"input_tensor must be a torch.Tensor of shape (N, C, D, H, W) or (N, C, H, W), "
                f"got {type(input_tensor).__name__}. Convert with torch.as_tensor(array)."
            )
        if not 3 <= input_tensor.ndim <= 5:
            hint = ""
            if input_tensor.ndim in (2, 3, 4) and input_tensor.ndim < 5:
                hint = " For a single image or volume add the batch and channel axes, e.g. x[None, None]."
            raise InputShapeError(
                f"input_tensor must be (N, C, *spatial) with 1 to 3 spatial axes — (N, C, D, H, W) for a "
                f"volume, (N, C, H, W) for an image — but has shape {tuple(input_tensor.shape)}.{hint}"
            )
        expected = self._expected_spatial_rank
        if expected is not None and input_tensor.ndim - 2 != expected:
            names = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
            raise InputShapeError(
                f"The model's convolutions have {expected} spatial axes, so input_tensor must be "
                f"{names[expected]}, but it has shape {tuple(input_tensor.shape)}. For a single "
                f"{'volume' if expected == 3 else 'image'} add the batch and channel axes, e.g. x[None, None]."
            )
        if input_tensor.shape[0] == 0 or any(s == 0 for s in input_tensor.shape[1:]):
            raise InputShapeError(f"input_tensor has an empty axis: shape {tuple(input_tensor.shape)}.")
        if not input_tensor.is_floating_point():
            raise InputShapeError(
                f"input_tensor must be floating point, got {input_tensor.dtype}. Convert with x.float()."
            )
        if not bool(torch.isfinite(input_tensor).all()):
            raise NonFiniteInputError(
                "input_tensor contains NaN or Inf values. Clean it first, e.g. torch.nan_to_num(x)."
            )
        return input_tensor.to(self.device)

    def _select_output(self, raw_output: Any) -> torch.Tensor:
        return select_output(raw_output, self.output_index)

    def _check_targets(self, targets: Any, batch: int) -> list[Target]:
        if callable(targets) and not isinstance(targets, (list, tuple)):
            raise TargetError(
                f"targets must be a list with one target per sample; got a single {type(targets).__name__}. "
                f"Use [target] * {batch} to apply it to every sample."
            )
        targets = list(targets)
        if len(targets) != batch:
            raise TargetError(
                f"Got {len(targets)} targets for a batch of {batch} samples: pass exactly one target per "
                f"sample (e.g. [ClassifierOutputTarget(k)] * {batch})."
            )
        for t in targets:
            if not callable(t):
                raise TargetError(
                    f"Each target must be callable on one sample's output (got {type(t).__name__}). "
                    "Use medcam3d.utils.model_targets.ClassifierOutputTarget(k) for class k."
                )
        return targets

    # ------------------------------------------------------------------ pipeline
    def _forward(self, input_tensor: torch.Tensor, taps: LayerTaps) -> tuple[torch.Tensor, Any]:
        with taps:
            raw_output = self.model(input_tensor)
        output = self._select_output(raw_output)
        missing = [name for name, _ in self.layers if name not in taps.activations]
        if missing:
            raise LayerNotReachedError(
                f"Target layer(s) {missing} did not run during the forward pass. Choose layers that are "
                "used by model.forward (list them with medcam3d.utils.find_layers.list_layers)."
            )
        return output, raw_output

    def _scores(self, output: torch.Tensor, targets: list[Target]) -> torch.Tensor:
        scores = []
        for i, target in enumerate(targets):
            value = target(output[i])
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(value, device=output.device, dtype=output.dtype)
            scores.append(value.sum())
        return torch.stack(scores)

    def _gradients(
        self, scores: torch.Tensor, activations: list[torch.Tensor], retain_graph: bool = False
    ) -> list[torch.Tensor]:
        if not scores.requires_grad:
            raise LayerOutputError(
                "The target score does not depend on the target layers (no gradient path). Check that the "
                "targets read the model output and that the layers come before the output."
            )
        grads = torch.autograd.grad(
            scores.sum(),
            activations,
            allow_unused=True,
            create_graph=self.create_graph,
            retain_graph=True if (retain_graph or self.create_graph) else None,
        )
        result = []
        for name, grad in zip(self.layer_names, grads):
            if grad is None:
                raise LayerOutputError(
                    f"The target score does not depend on layer {name!r} (it runs on a branch that does not "
                    "reach the chosen output). Choose a layer on the path to the output."
                )
            result.append(grad if self.create_graph else grad.detach())
        return result

    def _prepare(self, name: str, tensor: torch.Tensor, spatial_rank: int, batch: int) -> torch.Tensor:
        if self.reshape_transform is not None:
            tensor = self.reshape_transform(tensor)
        if tensor.ndim != spatial_rank + 2 or tensor.shape[0] != batch:
            tip = (
                " It looks like transformer tokens (N, tokens, C): pass a reshape_transform from "
                "medcam3d.utils.reshape_transforms."
                if tensor.ndim == 3 and spatial_rank > 1
                else " Choose a layer before global pooling, or pass a reshape_transform."
            )
            raise LayerOutputError(
                f"Target layer {name!r} gives a tensor of shape {tuple(tensor.shape)}, but a feature map "
                f"(N={batch}, channels, {spatial_rank} spatial axes) is needed.{tip}"
            )
        return tensor

    def _compute_once(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        normalize: bool,
        output_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> CAMResult:
        return self._compute_sets(input_tensor, [targets], eigen_smooth, normalize, output_inverse)[0]

    def _compute_sets(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[list[Target] | None],
        eigen_smooth: bool,
        normalize: bool,
        output_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[CAMResult]:
        """One forward pass, then the maps of each target set (one gradient pass per set)."""
        spatial = tuple(input_tensor.shape[2:])
        batch = input_tensor.shape[0]
        track = self.uses_gradients
        state = _ModelState(self.model, self.eval_mode, freeze_parameters=True)
        taps = LayerTaps(self.layers, track_gradients=track)
        try:
            grad_mode = torch.enable_grad() if track else torch.no_grad()
            with grad_mode:
                x = input_tensor
                if self.compute_input_gradient:
                    x = input_tensor.detach().requires_grad_(True)
                self._input = x
                output, _ = self._forward(x, taps)
                self.outputs = output.detach()
                target_output = output_inverse(output) if output_inverse is not None else output
                activations = [taps.activations[name] for name in self.layer_names]
                results = []
                for index, given in enumerate(target_sets):
                    more = index < len(target_sets) - 1
                    targets = self._check_targets(
                        self.default_targets(target_output.detach()) if given is None else given, batch
                    )
                    scores = self._scores(target_output, targets)
                    grads: list[torch.Tensor | None] = [None] * len(activations)
                    if track:
                        computed = (
                            self._gradients(scores, activations, retain_graph=True)
                            if more
                            else self._gradients(scores, activations)
                        )
                        grads = list(computed)
                    layer_maps = []
                    for (name, module), act, grad in zip(self.layers, activations, grads):
                        act_p = self._prepare(
                            name, act if self.create_graph else act.detach(), len(spatial), batch
                        )
                        grad_p = self._prepare(name, grad, len(spatial), batch) if grad is not None else None
                        self.context = CallContext(
                            input_tensor, targets, name, module, target_output.detach(), output_inverse
                        )
                        cam = self.get_cam_image(input_tensor, module, targets, act_p, grad_p, eigen_smooth)  # type: ignore[arg-type]
                        cam = torch.as_tensor(cam, device=act_p.device).detach().to(torch.float32)
                        cam = torch.nan_to_num(cam.clamp_min(0), nan=0.0, posinf=0.0)
                        cam = resize_maps(cam, spatial)
                        layer_maps.append(minmax_normalize(cam) if normalize else cam)
                    results.append(
                        CAMResult(
                            maps=self.aggregate_multi_layers(layer_maps, normalize),
                            layer_maps=layer_maps,
                            output=output.detach(),
                            scores=scores.detach(),
                            layer_names=list(self.layer_names),
                        )
                    )
            return results
        finally:
            taps.remove()
            taps.clear()
            state.restore()
            self.context = None
            self._input = None

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
        sample, or ``None``). The forward pass runs once; each set then gets its own gradient pass
        (the graph is kept between sets and freed after the last). Every result shares ``output``.
        Methods that replace :meth:`compute` (FullGrad, Guided Grad-CAM) or need second-order graphs
        (ShapleyCAM) run one :meth:`compute` per set instead: same results, one forward each.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "CAMs need gradients, which torch.inference_mode() forbids. Call the CAM outside "
                "inference_mode (torch.no_grad() is fine)."
            )
        sets = [None if t is None else list(t) for t in target_sets]
        if not sets:
            raise TargetError("target_sets is empty: pass at least one list of targets.")
        normalize = self.normalize if normalize is None else normalize
        if type(self).compute is not BaseCAM.compute or self.create_graph:
            return [
                self.compute(input_tensor, t, eigen_smooth=eigen_smooth, normalize=normalize) for t in sets
            ]
        x = self._check_input(input_tensor)
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
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "CAMs need gradients, which torch.inference_mode() forbids. Call the CAM outside "
                "inference_mode (torch.no_grad() is fine)."
            )
        normalize = self.normalize if normalize is None else normalize
        x = self._check_input(input_tensor)
        target_list = list(targets) if targets is not None and not callable(targets) else targets
        if not aug_smooth:
            return self._compute_once(x, target_list, eigen_smooth, normalize)  # type: ignore[arg-type]
        transforms = self.tta_transforms or default_tta_transforms(x.shape[2:])
        sums: torch.Tensor | None = None
        layer_sums: list[torch.Tensor] = []
        first: CAMResult | None = None
        for transform in transforms:
            x_t = transform.forward(x, lead=2)

            def back(
                out: torch.Tensor, t: TTATransform = transform, shape: tuple[int, ...] = tuple(x_t.shape[2:])
            ) -> torch.Tensor:
                if out.ndim == x.ndim and tuple(out.shape[2:]) == shape:
                    return t.inverse(out, lead=2)
                return out

            result = self._compute_once(x_t, target_list, eigen_smooth, normalize, output_inverse=back)  # type: ignore[arg-type]
            maps = transform.inverse(result.maps, lead=1)
            layers = [transform.inverse(m, lead=1) for m in result.layer_maps]
            if first is None:
                first, sums, layer_sums = result, maps, layers
            else:
                assert sums is not None
                sums = sums + maps
                layer_sums = [a + b for a, b in zip(layer_sums, layers)]
        assert first is not None and sums is not None
        count = float(len(transforms))
        maps = sums / count
        first.maps = minmax_normalize(maps) if normalize else maps
        first.layer_maps = [m / count for m in layer_sums]
        return first

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

    # ------------------------------------------------------------------ compatibility
    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        # Hooks live only for the duration of a call: nothing to release.
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_layers={self.layer_names})"
