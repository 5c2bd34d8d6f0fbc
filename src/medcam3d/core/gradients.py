"""The pipeline's numeric steps between the forward pass and the method hook: target scores,
gradients with respect to the tapped activations only, and layer outputs as feature maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medcam3d.core.context import OutputIndex, Target
from medcam3d.errors import LayerOutputError

__all__ = [
    "DEFAULT_GRADIENT_MEMORY_BYTES",
    "as_feature_map",
    "batched_layer_gradients",
    "layer_gradients",
    "target_scores",
]

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


#: default memory budget for the gradients of several target sets taken in one batched backward pass
DEFAULT_GRADIENT_MEMORY_BYTES = 1 << 29


def batched_layer_gradients(
    score_sets: Sequence[torch.Tensor],
    activations: Sequence[torch.Tensor],
    layer_names: Sequence[str],
    *,
    memory_bytes: int = DEFAULT_GRADIENT_MEMORY_BYTES,
    output_index: OutputIndex = 0,
) -> list[list[torch.Tensor]] | None:
    """The gradients of several target sets, differentiated together.

    ``score_sets[k]`` is ``(N,)``, the scores of set ``k``; the result's ``[k][l]`` is
    ``∂ Σ score_sets[k] / ∂ activations[l]`` ``(N, K, *s)``, exactly what :func:`layer_gradients`
    gives set by set. The sets are stacked and differentiated in one vectorised backward pass
    (``torch.autograd.grad(..., is_grads_batched=True)``), in chunks of as many sets as
    ``memory_bytes`` holds (each set needs one copy of every tapped activation). The graph is kept
    (the caller drops it with the activations).

    Returns ``None`` when the batched pass cannot serve these sets — a set whose score has no
    gradient path (the per-set path raises the precise error), or a model operation without a
    vectorised backward rule — so the caller falls back to :func:`layer_gradients` per set.
    """
    if len(score_sets) < 2 or not all(s.requires_grad for s in score_sets):
        return None
    per_set = sum(a.numel() * a.element_size() for a in activations)
    chunk = max(1, int(memory_bytes) // max(1, per_set))
    totals = torch.stack([s.sum() for s in score_sets])  # (sets,)
    result: list[list[torch.Tensor]] = []
    for start in range(0, len(score_sets), chunk):
        stop = min(start + chunk, len(score_sets))
        selector = torch.zeros(stop - start, len(score_sets), dtype=totals.dtype, device=totals.device)
        selector[torch.arange(stop - start), torch.arange(start, stop)] = 1
        try:
            grads = torch.autograd.grad(
                totals,
                list(activations),
                grad_outputs=selector,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        except RuntimeError:  # no batching rule for an operation of this model: one pass per set
            return None
        for name, grad in zip(layer_names, grads):
            if grad is None:
                raise LayerOutputError(
                    f"The target score does not depend on layer {name!r} (it runs on a branch that does not "
                    f"reach the output selected by output_index={output_index!r}). Choose a layer on the "
                    f"path to the output; {_LIST_HINT}."
                )
        result += [[grad[k].detach() for grad in grads if grad is not None] for k in range(stop - start)]
    return result
