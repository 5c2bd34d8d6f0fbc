"""The pipeline's numeric steps between the forward pass and the method hook: target scores,
gradients with respect to the tapped activations only, and layer outputs as feature maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medcam3d.core.context import OutputIndex, Target
from medcam3d.errors import LayerOutputError

__all__ = ["as_feature_map", "layer_gradients", "target_scores"]

_LIST_HINT = (
    "list candidate layers with medcam3d.utils.find_layers.list_layers (or --list-layers on the command line)"
)


def target_scores(output: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """``(N,)``: ``targets[i](output[i])`` summed to one score per sample (non-tensors converted)."""
    scores = []
    for i, target in enumerate(targets):
        value = target(output[i])
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, device=output.device, dtype=output.dtype)
        scores.append(value.sum())
    return torch.stack(scores)


def layer_gradients(
    scores: torch.Tensor,
    activations: Sequence[torch.Tensor],
    layer_names: Sequence[str],
    *,
    create_graph: bool = False,
    retain_graph: bool = False,
    output_index: OutputIndex = 0,
) -> list[torch.Tensor]:
    """``∂ Σ scores / ∂ activations`` ``(N, K, *s)`` for each tapped layer, with ``torch.autograd.grad``.

    The graph is kept when ``retain_graph`` (another target set follows) or ``create_graph``
    (second-order methods, whose gradients keep their graph); otherwise it is freed. A layer the
    score does not depend on is a :class:`LayerOutputError` naming it.
    """
    if not scores.requires_grad:
        raise LayerOutputError(
            "The target score does not depend on the target layers (no gradient path). Check that the "
            "targets read the model output, that the layers come before the output selected by "
            f"output_index={output_index!r}, and {_LIST_HINT}."
        )
    grads = torch.autograd.grad(
        scores.sum(),
        list(activations),
        allow_unused=True,
        create_graph=create_graph,
        retain_graph=True if (retain_graph or create_graph) else None,
    )
    result = []
    for name, grad in zip(layer_names, grads):
        if grad is None:
            raise LayerOutputError(
                f"The target score does not depend on layer {name!r} (it runs on a branch that does not "
                f"reach the output selected by output_index={output_index!r}). Choose a layer on the path "
                f"to the output; {_LIST_HINT}."
            )
        result.append(grad if create_graph else grad.detach())
    return result


def as_feature_map(
    name: str,
    tensor: torch.Tensor,
    spatial_rank: int,
    batch: int,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A layer's output (or its gradient) as a feature map ``(N, K, *s)`` with ``spatial_rank`` axes.

    ``reshape_transform`` (transformer tokens → maps) is applied first; anything else is a
    :class:`LayerOutputError` that says which layer and what to do.
    """
    if reshape_transform is not None:
        tensor = reshape_transform(tensor)
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
