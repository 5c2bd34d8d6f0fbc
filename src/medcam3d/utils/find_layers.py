"""Find target layers: list every layer with its output shape, suggest a default.

Also provides pytorch-grad-cam's ``find_layer_types_recursive`` and friends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from medcam3d.core.checks import select_output
from medcam3d.core.context import OutputIndex
from medcam3d.core.layers import resolve_layers, strip_compile_prefix
from medcam3d.core.model import conv_spatial_rank, model_device, model_state, unwrap_compiled
from medcam3d.errors import InputShapeError, LayerNotFoundError

__all__ = [
    "LayerInfo",
    "LayerSuggestion",
    "list_layers",
    "suggest_target_layer",
    "suggest_target_layers",
    "format_layers",
    "find_layer_types_recursive",
    "find_layer_predicate_recursive",
    "replace_layer_recursive",
    "replace_all_layer_type_recursive",
]


@dataclass(frozen=True)
class LayerInfo:
    """One layer: dotted name, class name, output shape (``None`` if not a tensor), call order.

    ``on_gradient_path`` says whether the selected model output (``output_index``) depends on the
    layer's output (``False``: a branch such as a deep-supervision head that does not reach it, a
    detached tensor, a layer that did not run); ``is_model_output`` that the layer's output *is*
    the selected output (the head, or a container ending with it), whose map explains nothing.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    order: int
    on_gradient_path: bool = True
    is_model_output: bool = False

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.output_shape[2:]) if self.output_shape is not None else ()


@dataclass(frozen=True)
class LayerSuggestion:
    """A suggested target layer: its dotted name, its role (``"bottleneck"``, ``"last decoder
    stage"``, ``"last feature map"``) and why, with its output shape."""

    name: str
    role: str
    reason: str
    output_shape: tuple[int, ...]


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
    return x.detach().to(model_device(model), dtype=torch.float32)


def _reachable(output: torch.Tensor) -> set[Any]:
    """Every autograd node the selected output's gradient flows through."""
    seen: set[Any] = set()
    stack = [output.grad_fn] if output.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return seen


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` is ``b``, or a view of the same memory with the same layout (an in-place result)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


@dataclass
class _Seen:
    shape: tuple[int, ...] | None
    order: int
    node: Any = None
    tensor: torch.Tensor | None = None  # held until the end, so no later tensor reuses its memory
    requires_grad: bool = False


def list_layers(
    model: nn.Module,
    input_shape: Sequence[int] | torch.Tensor,
    output_index: OutputIndex = 0,
) -> list[LayerInfo]:
    """Run one forward pass (eval mode and ``requires_grad`` restored after) and list every named
    layer in the order its forward finished, with its output shape for an input of ``input_shape``
    (e.g. ``(1, 1, 64, 64, 64)``), whether the output selected by ``output_index`` depends on it
    (``on_gradient_path``, from the autograd graph of the pass) and whether its output *is* that
    output (``is_model_output``). Layers that did not run are listed last with ``order=-1``.

    The pass records an autograd graph from the input (the parameters stay frozen), so it needs
    about the memory of one training forward pass at this input size.
    """
    x = _as_input(model, input_shape).requires_grad_(True)
    root = unwrap_compiled(model)
    seen: dict[str, _Seen] = {}
    counter = [0]
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                seen[name] = _Seen(
                    tuple(output.shape), counter[0], output.grad_fn, output, output.requires_grad
                )
            else:
                seen[name] = _Seen(None, counter[0])
            counter[0] += 1

        return hook

    modules = [(n, m) for n, m in root.named_modules() if n]
    with model_state(model, eval_mode=True, freeze_parameters=True):
        try:
            for name, module in modules:
                handles.append(module.register_forward_hook(make_hook(name)))
            with torch.enable_grad():
                raw = root(x)
        finally:
            for h in handles:
                h.remove()
    selected = select_output(raw, output_index)
    reachable = _reachable(selected)
    infos = []
    for name, module in modules:
        entry = seen.get(name)
        if entry is None:
            infos.append(LayerInfo(strip_compile_prefix(name), type(module).__name__, None, -1, False, False))
            continue
        on_path = entry.requires_grad and entry.node is not None and entry.node in reachable
        is_output = entry.tensor is not None and _same_tensor(entry.tensor, selected)
        infos.append(
            LayerInfo(
                strip_compile_prefix(name),
                type(module).__name__,
                entry.shape,
                entry.order,
                on_path,
                is_output,
            )
        )
    seen.clear()
    ran = sorted((i for i in infos if i.order >= 0), key=lambda i: i.order)
    return ran + [i for i in infos if i.order < 0]


def _is_inplace(model: nn.Module, name: str) -> bool:
    try:
        module = resolve_layers(model, name)[0][1]
    except LayerNotFoundError:  # pragma: no cover - names come from the model itself
        return False
    return bool(getattr(module, "inplace", False))


def _channels(info: LayerInfo) -> int:
    return int(info.output_shape[1]) if info.output_shape is not None and len(info.output_shape) > 1 else 0


def _is_within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def suggest_target_layers(
    model: nn.Module,
    input_shape: Sequence[int] | torch.Tensor,
    output_index: OutputIndex = 0,
) -> list[LayerSuggestion]:
    """Target layers worth explaining, best first, for classifiers and segmenters alike.

    Only layers on the gradient path to the output selected by ``output_index``, whose output is
    a feature map ``(N, K, *s)`` with the input's number of spatial axes and more than one voxel,
    that are not in-place activations and whose output is not the selected output itself.

    * **Classifier** (output ``(N, classes)``): the last such layer in execution order — the last
      feature map before global pooling (``layer4``, ``features``).
    * **Segmenter** (output ``(N, classes, *S)``): the **bottleneck** (the coarsest feature map
      reached by downsampling; of those, the one with the most channels, then the last to run) and the **last decoder stage**
      (the last layer to run at the finest resolution left once the output head — every module
      whose output is the model output, and its sub-modules — is set aside).

    Raises:
        LayerNotFoundError: no layer qualifies (e.g. a transformer whose blocks give tokens: pick
            a block and pass a ``reshape_transform``).
    """
    x = _as_input(model, input_shape)
    infos = list_layers(model, x, output_index=output_index)
    root = unwrap_compiled(model)
    output_names = [i.name for i in infos if i.is_model_output]

    def feature_map(info: LayerInfo) -> bool:
        return (
            info.order >= 0
            and info.on_gradient_path
            and not info.is_model_output
            and info.output_shape is not None
            and len(info.output_shape) == x.ndim
            and info.output_shape[0] == x.shape[0]
            and math.prod(info.spatial_shape) > 1
            and not _is_inplace(root, info.name)
        )

    candidates = [i for i in infos if feature_map(i)]
    if not candidates:
        off_path = [i.name for i in infos if i.order >= 0 and not i.on_gradient_path]
        extra = (
            f" Layers off the gradient path to output_index={output_index!r}: {off_path[:5]}."
            if off_path
            else ""
        )
        raise LayerNotFoundError(
            "No layer of this model outputs a feature map with spatial extent > 1 on the gradient path to "
            f"the output selected by output_index={output_index!r} for this input shape.{extra} Try a larger "
            "input, another output_index, or, for a transformer, pick a block and pass a reshape_transform "
            "(list the layers with list_layers / --list-layers)."
        )
    raw_output = _selected_output_shape(infos, model, x, output_index)
    segmenter = len(raw_output) == x.ndim
    if not segmenter:
        last = candidates[-1]
        return [
            LayerSuggestion(
                last.name,
                "last feature map",
                "last feature map before pooling (spatial extent > 1)",
                tuple(last.output_shape or ()),
            )
        ]
    suggestions: list[LayerSuggestion] = []
    sizes = [math.prod(i.spatial_shape) for i in candidates]
    bottleneck: LayerInfo | None = None
    for index, info in enumerate(candidates):
        if index == 0 or max(sizes[:index]) <= sizes[index]:
            continue  # reached straight from the input, not by downsampling
        if bottleneck is None or (sizes[index], -_channels(info)) <= (
            math.prod(bottleneck.spatial_shape),
            -_channels(bottleneck),
        ):
            bottleneck = info  # coarsest, then most channels, then last to run
    if bottleneck is not None:
        suggestions.append(
            LayerSuggestion(
                bottleneck.name,
                "bottleneck",
                "bottleneck (coarsest feature map): most semantic, coarse",
                tuple(bottleneck.output_shape or ()),
            )
        )
    head = [n for n in output_names if bottleneck is None or not _is_within(bottleneck.name, n)]
    decoder = [c for c in candidates if not any(_is_within(c.name, h) for h in head)]
    if decoder:
        finest = max(math.prod(c.spatial_shape) for c in decoder)
        last = [c for c in decoder if math.prod(c.spatial_shape) == finest][-1]
        if bottleneck is None or last.name != bottleneck.name:
            suggestions.append(
                LayerSuggestion(
                    last.name,
                    "last decoder stage",
                    "last decoder stage (finest feature map): sharp",
                    tuple(last.output_shape or ()),
                )
            )
    if not suggestions:  # pragma: no cover - candidates is not empty
        last = candidates[-1]
        suggestions.append(
            LayerSuggestion(last.name, "last feature map", "last feature map", tuple(last.output_shape or ()))
        )
    return suggestions


def _selected_output_shape(
    infos: Sequence[LayerInfo], model: nn.Module, x: torch.Tensor, output_index: OutputIndex
) -> tuple[int, ...]:
    for info in infos:
        if info.is_model_output and info.output_shape is not None:
            return info.output_shape
    with model_state(model, eval_mode=True, freeze_parameters=True), torch.no_grad():
        return tuple(select_output(unwrap_compiled(model)(x), output_index).shape)


def suggest_target_layer(
    model: nn.Module,
    input_shape: Sequence[int] | torch.Tensor,
    output_index: OutputIndex = 0,
) -> str:
    """The first of :func:`suggest_target_layers`: for a classifier the last feature map before
    pooling (``layer4``, ``features``), for a segmenter the bottleneck; never a layer whose output
    is the selected model output or that lies off the gradient path to ``output_index``."""
    return suggest_target_layers(model, input_shape, output_index)[0].name


def format_layers(infos: Sequence[LayerInfo], mark: Sequence[str] | Mapping[str, str] = ()) -> str:
    """A text table of :func:`list_layers`' result; names in ``mark`` get a ``*`` (a mapping
    ``{name: why}`` also prints the reason). Layers off the gradient path and those whose output is
    the model output are flagged: they cannot be explained."""
    width = max([len(i.name) for i in infos] + [4])
    lines = [f"  {'name':<{width}}  {'type':<24} output shape"]
    for info in infos:
        shape = (
            "(not run)"
            if info.order < 0
            else (str(info.output_shape) if info.output_shape else "(not a tensor)")
        )
        flag = "*" if info.name in mark else " "
        note = ""
        if isinstance(mark, Mapping) and info.name in mark:
            note = f"  <- {mark[info.name]}"
        elif info.is_model_output:
            note = "  (the model output)"
        elif info.order >= 0 and info.output_shape is not None and not info.on_gradient_path:
            note = "  (off the gradient path)"
        lines.append(f"{flag} {info.name:<{width}}  {info.type:<24} {shape:<22}{note}".rstrip())
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
