"""pytorch-grad-cam 1.5's subclassing contract on top of the pipeline, kept in one place.

What code written for pytorch-grad-cam relies on, and where it meets the torch pipeline:

- ``get_cam_weights(input_tensor, target_layer, targets, activations, grads)`` → ``(N, K)`` and
  ``get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)`` →
  ``(N, *s)``. A subclass defined outside medcam3d that overrides them gets what
  pytorch-grad-cam hands them: numpy arrays (``np.mean(grads, axis=(2, 3))`` works). The arrays
  are :class:`HookArray` — plain ``numpy.ndarray`` that also answer ``.detach()``, ``.cpu()``
  and ``.numpy()``, so code that converts torch tensors itself runs too. An override that fails
  on numpy input with a ``TypeError``/``AttributeError`` (one written for torch tensors) is
  called again with the torch tensors, and keeps getting tensors. ``detach=False`` always hands
  tensors, as pytorch-grad-cam does. What the override returns (numpy or torch) is turned into a
  tensor on the model's device; the rest of the pipeline stays torch.
- ``aggregate_multi_layers(cam_per_target_layer)``: numpy ``(N, 1, *S)`` maps in, numpy
  ``(N, *S)`` out, as pytorch-grad-cam; the pipeline's own call ``aggregate_multi_layers(maps,
  normalize)`` with torch ``(N, *S)`` maps returns torch. A one-argument override gets numpy.
- ``get_target_width_height``, ``compute_cam_per_layer``, ``forward_augmentation_smoothing``,
  the context-manager protocol, and two attributes that, as in pytorch-grad-cam, describe the
  latest call: ``outputs`` and ``activations_and_grads`` (its ``activations``/``gradients``:
  each target layer's output and gradient, after ``reshape_transform``, detached references on
  the model's device, set before the method hooks run; leaving a ``with`` block drops them).
  With several threads, read :class:`~medcam3d.core.context.CAMResult` instead.
- ``tta_transforms`` accepts ttach's ``Compose`` (or anything iterable whose items have
  ``augment_image``/``deaugment_mask``) as well as :mod:`medcam3d.core.augment` transforms.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.augment import TTATransform
from medcam3d.core.context import CallContext, Target
from medcam3d.core.tensors import minmax_normalize

__all__ = [
    "ActivationsAndGradients",
    "HookArray",
    "PytorchGradCAMHooks",
    "TtachTransform",
    "as_tta_transforms",
    "legacy_positional",
]

logger = logging.getLogger(__name__)


class HookArray(np.ndarray):
    """A numpy array that also answers torch's ``.detach()``, ``.cpu()`` and ``.numpy()``.

    pytorch-grad-cam hands numpy arrays to ``get_cam_weights``/``get_cam_image``; code written
    for it sometimes converts them as if they were tensors (``grads.detach().cpu().numpy()``).
    Both styles work on this array. ``.numpy()`` returns a plain ``numpy.ndarray``.
    """

    def detach(self) -> HookArray:
        return self

    def cpu(self) -> HookArray:
        return self

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


def _to_hook_array(tensor: torch.Tensor | None) -> HookArray | None:
    if tensor is None:
        return None
    array = tensor.detach().to("cpu", torch.float32).numpy().copy()
    return array.view(HookArray)


def _as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A hook's result (numpy, HookArray, list or tensor) as a float tensor on ``like``'s device."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device)
    return torch.as_tensor(np.asarray(value), device=like.device).to(like.dtype)


def _defining_class(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    return None


def legacy_positional(
    reshape_transform: Any, compute_input_gradient: Any, use_cuda: bool | None
) -> tuple[Any, Any, bool | None]:
    """The original medcam3d's ``GradCAM(model, target_layers, use_cuda, reshape_transform)``.

    A bool in ``reshape_transform``'s place is that ``use_cuda``; a callable in
    ``compute_input_gradient``'s place is then the reshape transform. Returns
    ``(reshape_transform, compute_input_gradient, use_cuda)``.
    """
    if isinstance(reshape_transform, bool):
        use_cuda = reshape_transform
        if callable(compute_input_gradient) or compute_input_gradient is None:
            reshape_transform, compute_input_gradient = compute_input_gradient, False
        else:
            reshape_transform = None
    return reshape_transform, compute_input_gradient, use_cuda


class TtachTransform(TTATransform):
    """A ttach transform (``augment_image``/``deaugment_mask`` on ``(B, C, H, W)``) as a :class:`TTATransform`."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        if lead == 2:
            return self.transform.augment_image(x)
        return self.transform.augment_image(x.unsqueeze(1)).squeeze(1)

    def inverse(self, x: torch.Tensor, lead: int = 1) -> torch.Tensor:
        if lead == 2:
            return self.transform.deaugment_mask(x)
        return self.transform.deaugment_mask(x.unsqueeze(1)).squeeze(1)

    def __repr__(self) -> str:
        return f"TtachTransform({self.transform!r})"


def as_tta_transforms(transforms: Iterable[Any] | None) -> list[TTATransform] | None:
    """Test-time transforms as :class:`TTATransform`: ours as they are, ttach's (a ``Compose``
    or its items) wrapped in :class:`TtachTransform`; anything else is a ``TypeError``."""
    if transforms is None:
        return None
    result: list[TTATransform] = []
    for item in transforms:
        if isinstance(item, TTATransform):
            result.append(item)
        elif hasattr(item, "augment_image") and hasattr(item, "deaugment_mask"):
            result.append(TtachTransform(item))
        else:
            raise TypeError(
                f"tta_transforms must hold medcam3d.core.augment transforms (Flip, Rot90, ...) or ttach "
                f"transforms (augment_image / deaugment_mask); got {type(item).__name__}."
            )
    return result


class ActivationsAndGradients:
    """pytorch-grad-cam's recorder of the activations and gradients of target layers.

    ``recorder(x)`` runs ``model(x)`` with forward hooks on ``target_layers`` (removed before it
    returns) and records each layer's output in ``activations``; when the output requires grad, a
    backward through it records the gradient in ``gradients`` (in layer order, as
    pytorch-grad-cam). With ``detach=True`` (default) both are detached CPU tensors, after
    ``reshape_transform``. A CAM's own recorder (``cam.activations_and_grads``) holds the feature
    maps ``(N, K, *s)`` of its latest call instead, on the model's device.

    Unlike pytorch-grad-cam's, no hook outlives a call: :meth:`release` only drops the recorded
    tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.detach = detach
        self.activations: list[torch.Tensor] = []
        self.gradients: list[torch.Tensor] = []
        self.handles: list[Any] = []

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.detach:
            if self.reshape_transform is not None:
                tensor = self.reshape_transform(tensor)
            return tensor.detach().cpu()
        return tensor

    def _hook(self, position: int) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                return
            self.activations.append(self._keep(output))
            if output.requires_grad:

                def store(grad: torch.Tensor) -> None:
                    self.gradients.insert(0, self._keep(grad))  # gradients arrive in reverse order

                output.register_hook(store)

        return hook

    def __call__(self, x: torch.Tensor) -> Any:
        self.activations, self.gradients = [], []
        self.handles = [
            layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.target_layers)
        ]
        try:
            return self.model(x)
        finally:
            self.release()

    def release(self) -> None:
        """Remove any hook still registered (none outlives a call)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


class PytorchGradCAMHooks:
    """pytorch-grad-cam 1.5's hook names, helpers and context-manager protocol (mixed into ``BaseCAM``)."""

    context_type: ClassVar[type[CallContext]] = CallContext
    #: pytorch-grad-cam's ``detach``: ``False`` hands torch tensors to overrides (second-order methods)
    detach: bool = True
    model: nn.Module
    target_layers: list[nn.Module]
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    #: pytorch-grad-cam's recorder: the feature maps and gradients of the latest call (set by BaseCAM)
    activations_and_grads: ActivationsAndGradients
    _tta: list[TTATransform] | None = None
    #: override name → True (numpy works) / False (needs torch), learnt at the first call
    _numpy_mode: ClassVar[dict[Any, bool]] = {}

    def _call_hook(self, name: str, activations: torch.Tensor, grads: Any, context: CallContext) -> Any:
        raise NotImplementedError  # BaseCAM's dispatch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # BaseCAM's entry point

    # ------------------------------------------------------------------ test-time transforms
    @property
    def tta_transforms(self) -> list[TTATransform] | None:
        """The ``aug_smooth`` transforms (``None``: the defaults of :mod:`medcam3d.core.augment`)."""
        return self._tta

    @tta_transforms.setter
    def tta_transforms(self, transforms: Iterable[Any] | None) -> None:
        self._tta = as_tta_transforms(transforms)

    # ------------------------------------------------------------------ pytorch-grad-cam hooks
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: Any,
        grads: Any,
    ) -> Any:
        """pytorch-grad-cam's hook: channel weights ``(N, K)`` from ``(N, K, *s)``. Defaults to
        the method's :meth:`weights`; numpy in, numpy out."""
        acts, grads_t, numpy_in = self._as_torch_inputs(activations, grads)
        context = self.context_type(
            input_tensor=input_tensor, targets=list(targets or []), layer=target_layer
        )
        result = self._call_hook("weights", acts, grads_t, context)
        return result.detach().cpu().numpy() if numpy_in else result

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: Any,
        grads: Any,
        eigen_smooth: bool = False,
    ) -> Any:
        """pytorch-grad-cam's name for :meth:`layer_map`: ``(N, K, *s)`` → ``(N, *s)``; numpy in, numpy out."""
        acts, grads_t, numpy_in = self._as_torch_inputs(activations, grads)
        context = self.context_type(
            input_tensor=input_tensor,
            eigen_smooth=eigen_smooth,
            targets=list(targets or []),
            layer=target_layer,
        )
        result = self._call_hook("layer_map", acts, grads_t, context)
        return result.detach().cpu().numpy() if numpy_in else result

    @staticmethod
    def _as_torch_inputs(activations: Any, grads: Any) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        numpy_in = isinstance(activations, np.ndarray)
        acts = torch.as_tensor(np.asarray(activations)) if numpy_in else activations
        if grads is not None and isinstance(grads, np.ndarray):
            grads = torch.as_tensor(np.asarray(grads))
        return acts, grads, numpy_in

    # ------------------------------------------------------------------ the boundary (used by BaseCAM)
    def _user_override(self, name: str) -> bool:
        """Whether ``name`` is overridden by a class defined outside medcam3d (pytorch-grad-cam style)."""
        klass = _defining_class(type(self), name)
        if klass is None or klass is PytorchGradCAMHooks:
            return False
        return not klass.__module__.startswith("medcam3d.")

    def _call_override(self, name: str, context: CallContext, activations: torch.Tensor, grads: Any) -> Any:
        """Call the override ``name`` with numpy (pytorch-grad-cam) or torch arguments, see the module."""
        hook = getattr(self, name)
        key = getattr(hook, "__func__", hook)
        layer = context.current_layer()
        extra: tuple[Any, ...] = (context.eigen_smooth,) if name == "get_cam_image" else ()
        numpy_mode = self.detach and self._user_override(name) and self._numpy_mode.get(key, True)
        if numpy_mode:
            try:
                value = hook(
                    context.input_tensor,
                    layer,
                    context.targets,
                    _to_hook_array(activations),
                    _to_hook_array(grads),
                    *extra,
                )
                self._numpy_mode[key] = True
                return value
            except (TypeError, AttributeError) as numpy_error:
                if key in self._numpy_mode:  # it worked with numpy before: a genuine error
                    raise
                try:
                    value = hook(context.input_tensor, layer, context.targets, activations, grads, *extra)
                except Exception:
                    raise numpy_error from None
                logger.debug("%s.%s takes torch tensors; calling it with tensors.", type(self).__name__, name)
                self._numpy_mode[key] = False
                return value
        return hook(context.input_tensor, layer, context.targets, activations, grads, *extra)

    def _pgc_cam_weights(
        self, context: CallContext, activations: torch.Tensor, grads: torch.Tensor | None
    ) -> torch.Tensor:
        """``(N, K)`` weights from an overridden ``get_cam_weights``, as a tensor on the device."""
        return _as_tensor(self._call_override("get_cam_weights", context, activations, grads), activations)

    def _pgc_cam_image(
        self, context: CallContext, activations: torch.Tensor, grads: torch.Tensor | None
    ) -> torch.Tensor:
        """``(N, *s)`` map from an overridden ``get_cam_image``, as a tensor on the device."""
        return _as_tensor(self._call_override("get_cam_image", context, activations, grads), activations)

    def _pgc_aggregate(self, layer_maps: list[torch.Tensor], normalize: bool) -> torch.Tensor:
        """The pipeline's aggregation: ``aggregate_multi_layers(maps, normalize)``, or a
        pytorch-grad-cam-style one-argument override called with numpy ``(N, 1, *S)`` maps."""
        hook = self.aggregate_multi_layers
        klass = _defining_class(type(self), "aggregate_multi_layers")
        parameters = inspect.signature(hook).parameters
        if klass is not PytorchGradCAMHooks and len(parameters) == 1:
            arrays = [m.detach().to("cpu", torch.float32).numpy()[:, None] for m in layer_maps]
            return _as_tensor(hook(arrays), layer_maps[0]).to(torch.float32)
        return hook(layer_maps, normalize)

    def _record_call(self, activations: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
        """Keep this call's layer outputs and gradients in :attr:`activations_and_grads` (detached
        references, after ``reshape_transform``, no copy), before the method hooks run."""
        recorder = self.activations_and_grads
        keep = self.reshape_transform or (lambda t: t)
        recorder.activations = [keep(a.detach()) for a in activations]
        recorder.gradients = [keep(g.detach()) for g in grads if g is not None]

    # ------------------------------------------------------------------ pytorch-grad-cam helpers
    def aggregate_multi_layers(
        self, cam_per_target_layer: Sequence[Any], normalize: bool | None = None
    ) -> Any:
        """Mean over layers (each ReLU'd), min-max normalised unless ``normalize=False``.

        pytorch-grad-cam style: a list of numpy ``(N, 1, *S)`` maps → numpy ``(N, *S)``. The
        pipeline's style: a list of torch ``(N, *S)`` maps → torch ``(N, *S)``.
        """
        normalize = True if normalize is None else bool(normalize)
        if all(isinstance(m, torch.Tensor) for m in cam_per_target_layer):
            stacked = torch.stack(list(cam_per_target_layer), dim=1).clamp_min(0).mean(dim=1)
            return minmax_normalize(stacked) if normalize else stacked
        arrays = [np.asarray(m, dtype=np.float32) for m in cam_per_target_layer]
        mean = np.maximum(np.concatenate(arrays, axis=1), 0).mean(axis=1)
        if not normalize:
            return mean
        return minmax_normalize(torch.from_numpy(np.ascontiguousarray(mean))).numpy()

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, ...]:
        """The input's spatial size in pytorch-grad-cam's (OpenCV) order, the reverse of the
        tensor's: ``(W, H)`` for ``(N, C, H, W)``, ``(W, H, D)`` for ``(N, C, D, H, W)``."""
        return tuple(int(s) for s in reversed(tuple(input_tensor.shape[2:])))

    def compute_cam_per_layer(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None, eigen_smooth: bool
    ) -> list[np.ndarray]:
        """One numpy ``(N, 1, *S)`` map per target layer (ReLU, resized, normalised), as
        pytorch-grad-cam's. Runs its own forward pass (pytorch-grad-cam reads the previous one)."""
        result = self.compute(input_tensor, targets, eigen_smooth=eigen_smooth)  # type: ignore[attr-defined]
        return [m.detach().to("cpu", torch.float32).numpy()[:, None] for m in result.layer_maps]

    def forward_augmentation_smoothing(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None, eigen_smooth: bool = False
    ) -> Any:
        """``cam(input_tensor, targets, aug_smooth=True, eigen_smooth=eigen_smooth)``."""
        return self(input_tensor, targets, aug_smooth=True, eigen_smooth=eigen_smooth)

    def __enter__(self) -> PytorchGradCAMHooks:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        # Hooks live only for the duration of a call: drop what the recorder kept.
        self.activations_and_grads.activations, self.activations_and_grads.gradients = [], []
        return None
