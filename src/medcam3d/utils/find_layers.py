"""Find target layers: list every layer with its output shape, suggest a default.

Also provides pytorch-grad-cam's ``find_layer_types_recursive`` and friends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from medcam3d.core.layers import strip_compile_prefix
from medcam3d.core.model import conv_spatial_rank, model_device, unwrap_compiled
from medcam3d.errors import InputShapeError, LayerNotFoundError

__all__ = [
    "LayerInfo",
    "list_layers",
    "suggest_target_layer",
    "format_layers",
    "find_layer_types_recursive",
    "find_layer_predicate_recursive",
    "replace_layer_recursive",
    "replace_all_layer_type_recursive",
]


@dataclass(frozen=True)
class LayerInfo:
    """One layer: dotted name, class name, output shape (``None`` if not a tensor), call order."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    order: int

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.output_shape[2:]) if self.output_shape is not None else ()


def _as_input(model: nn.Module, input_shape: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(input_shape, torch.Tensor):
        x = input_shape
    else:
        shape = tuple(int(s) for s in input_shape)
        x = torch.zeros(shape)
    expected = conv_spatial_rank(model)
    if not 3 <= x.ndim <= 5 or (expected is not None and x.ndim - 2 != expected):
        raise InputShapeError(
            f"Give the full input shape, with batch and channel axes: (N, C, D, H, W) for a 3D model, "
            f"(N, C, H, W) for a 2D one; got {tuple(x.shape)}."
        )
    return x.to(model_device(model), dtype=torch.float32)


def list_layers(model: nn.Module, input_shape: Sequence[int] | torch.Tensor) -> list[LayerInfo]:
    """Run one forward pass (no gradients, eval mode restored after) and list every named layer
    in the order its forward finished, with its output shape for an input of ``input_shape``
    (e.g. ``(1, 1, 64, 64, 64)``). Layers that did not run are listed last with ``order=-1``."""
    x = _as_input(model, input_shape)
    root = unwrap_compiled(model)
    seen: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    counter = [0]
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            seen[name] = (shape, counter[0])
            counter[0] += 1

        return hook

    modules = [(n, m) for n, m in root.named_modules() if n]
    training = [(m, m.training) for m in root.modules()]
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        root.eval()
        with torch.no_grad():
            root(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    infos = []
    for name, module in modules:
        shape, order = seen.get(name, (None, -1))
        infos.append(LayerInfo(strip_compile_prefix(name), type(module).__name__, shape, order))
    ran = sorted((i for i in infos if i.order >= 0), key=lambda i: i.order)
    return ran + [i for i in infos if i.order < 0]


def suggest_target_layer(model: nn.Module, input_shape: Sequence[int] | torch.Tensor) -> str:
    """A sensible default: the last layer (in execution order) whose output is a feature map
    with the input's number of spatial axes and more than one voxel. Containers finish after
    their children, so this is typically the last convolutional stage (``layer4``, ``features``)."""
    x = _as_input(model, input_shape)
    candidates = [
        info
        for info in list_layers(model, x)
        if info.order >= 0
        and info.output_shape is not None
        and len(info.output_shape) == x.ndim
        and math.prod(info.spatial_shape) > 1
        and info.output_shape[0] == x.shape[0]
    ]
    if not candidates:
        raise LayerNotFoundError(
            "No layer of this model outputs a feature map with spatial extent > 1 for this input shape. "
            "For a transformer, pick a block and pass a reshape_transform."
        )
    return candidates[-1].name


def format_layers(infos: Sequence[LayerInfo], mark: Sequence[str] = ()) -> str:
    """A text table of :func:`list_layers`' result; names in ``mark`` get a ``*``."""
    width = max([len(i.name) for i in infos] + [4])
    lines = [f"  {'name':<{width}}  {'type':<24} output shape"]
    for info in infos:
        shape = (
            "(not run)"
            if info.order < 0
            else (str(info.output_shape) if info.output_shape else "(not a tensor)")
        )
        flag = "*" if info.name in mark else " "
        lines.append(f"{flag} {info.name:<{width}}  {info.type:<24} {shape}")
    return "\n".join(lines)


def find_layer_types_recursive(model: nn.Module, layer_types: Sequence[type]) -> list[nn.Module]:
    """All sub-modules that are instances of ``layer_types``, in definition order."""
    types = tuple(layer_types)
    return [m for m in model.modules() if isinstance(m, types)]


def find_layer_predicate_recursive(
    model: nn.Module, predicate: Callable[[nn.Module], bool]
) -> list[nn.Module]:
    """All sub-modules for which ``predicate(module)`` is true."""
    return [m for m in model.modules() if predicate(m)]


def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Replace the sub-module ``old_layer`` by ``new_layer`` wherever it is a child; True if found."""
    found = False
    for name, child in model.named_children():
        if child is old_layer:
            setattr(model, name, new_layer)
            found = True
        elif replace_layer_recursive(child, old_layer, new_layer):
            found = True
    return found


def replace_all_layer_type_recursive(model: nn.Module, old_layer_type: type, new_layer: nn.Module) -> None:
    """Replace every child of type ``old_layer_type`` by ``new_layer``."""
    for name, child in model.named_children():
        if isinstance(child, old_layer_type):
            setattr(model, name, new_layer)
        replace_all_layer_type_recursive(child, old_layer_type, new_layer)
