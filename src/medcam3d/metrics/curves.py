"""Deletion and insertion curves (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation
of Black-box Models", BMVC 2018) for 1, 2 or 3 spatial axes, batched under a memory budget.

Voxels are ranked by their map value; **deletion** replaces the first ranked voxels (all channels
of a voxel at once) with a baseline, a growing fraction at a time, and scores the model after
each step; **insertion** starts from the baseline and puts the first ranked voxels of the input
back. The area under the score curve (trapezoidal rule over the fraction actually changed) is low
for a faithful map under most-relevant-first deletion and high under insertion.

- Steps: with ``V`` voxels and ``steps = T``, step ``k = 0..T`` changes the first
  ``floor(k · V / T)`` ranked voxels, so both curves have ``T + 1`` points from fraction 0 to 1.
- Ranking: ``order="most_relevant_first"`` sorts the map in decreasing order,
  ``"least_relevant_first"`` in increasing order; **ties are broken by the voxel's flat index**
  (C order over the spatial axes, ``z, y, x`` for a volume): the lower index comes first, in both
  orders (a stable sort), so the result is the same on every device and every run.
- Baselines: ``"zero"``; ``"blur"``, the input blurred by an N-D Gaussian of ``blur_sigma`` voxels
  on the device (``scipy.ndimage.gaussian_filter`` with ``mode="nearest"``, truncated at 4σ; RISE
  uses a blurred image for insertion); ``"mean"``, each sample's per-channel mean over the spatial
  axes; or a tensor broadcastable to the input ``(N, C, *S)``.
- Scores: any medcam3d (or pytorch-grad-cam) target per sample: ``ClassifierOutputTarget`` for a
  logit, ``ClassifierOutputSoftmaxTarget`` for a probability, ``SemanticSegmentationTarget`` or
  ``RegionTarget`` for a segmenter; ``targets=None`` is the softmax probability of each sample's
  predicted class (as RISE). A target returning several values is summed.
- Cost: ``(T + 1)`` forward passes per sample and curve; :func:`deletion_insertion` shares the
  two states both curves contain (the input itself and the all-baseline input), ``2T`` passes per
  sample for both. The passes run under ``torch.inference_mode()`` with the model in eval mode
  (restored afterwards), in chunks that follow ``batch_memory_bytes``: the budget divided by one
  sample's estimated forward memory (one probe pass of a single sample, cached per model and
  shape), or a fixed ``batch_size``. Chunks mix samples; building a chunk is one ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.model import model_device, model_state
from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.metrics._blur import gaussian_blur
from medcam3d.metrics._common import (
    DEFAULT_BATCH_MEMORY_BYTES,
    OutputIndex,
    Target,
    as_maps,
    check_batching,
    check_input,
    check_targets,
    chunk_size,
    predicted_targets,
    score_rows,
)

__all__ = [
    "CurveResult",
    "deletion_curve",
    "insertion_curve",
    "deletion_insertion",
    "voxel_order",
    "voxel_ranking",
]

Order = Literal["most_relevant_first", "least_relevant_first"]
Baseline = Literal["zero", "blur", "mean"] | torch.Tensor
_ORDERS = ("most_relevant_first", "least_relevant_first")
_BASELINES = ("zero", "blur", "mean")


@dataclass(frozen=True)
class CurveResult:
    """One deletion or insertion curve per sample.

    Attributes:
        fractions: ``(T + 1,)`` float64: the fraction of voxels changed at each step, 0 to 1.
        scores: ``(N, T + 1)`` float64: the model's score at each step.
        auc: ``(N,)`` float64: ``np.trapezoid(scores, fractions)`` per sample.
        kind: ``"deletion"`` or ``"insertion"``.
        order: ``"most_relevant_first"`` or ``"least_relevant_first"``.
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    kind: str
    order: str


def voxel_order(cams: torch.Tensor, order: Order = "most_relevant_first") -> torch.Tensor:
    """The voxels in the order they are changed: ``(N, *S)`` maps → ``(N, V)`` int64 flat
    (C-order) voxel indices, ``V = prod(S)``.

    Decreasing map value for most-relevant-first, increasing for least-relevant-first; ties by
    increasing flat index (a stable sort).
    """
    if order not in _ORDERS:
        raise ConfigurationError(f"order must be one of {_ORDERS}, got {order!r}.")
    flat = cams.reshape(cams.shape[0], -1)
    return torch.sort(flat, dim=1, descending=order == "most_relevant_first", stable=True).indices


def voxel_ranking(cams: torch.Tensor, order: Order = "most_relevant_first") -> torch.Tensor:
    """The rank of every voxel: ``(N, *S)`` maps → ``(N, V)`` int64, where ``rank[i, v] = r`` means
    voxel ``v`` (flat C-order index) is changed at position ``r`` (the inverse of :func:`voxel_order`)."""
    permutation = voxel_order(cams, order)
    ranks = torch.empty_like(permutation)
    positions = torch.arange(permutation.shape[1], device=permutation.device).expand_as(permutation)
    ranks.scatter_(1, permutation, positions)
    return ranks


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigurationError(
            f"steps must be a positive integer (the number of deletion steps), got {steps!r}."
        )
    return int(steps)


def _baseline(baseline: Baseline, x: torch.Tensor, blur_sigma: float | Sequence[float]) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(
                baseline.detach().to(device=x.device, dtype=x.dtype), x.shape
            ).contiguous()
        except RuntimeError:
            raise InputShapeError(
                f"The baseline tensor has shape {tuple(baseline.shape)}, which does not broadcast to the "
                f"input's {tuple(x.shape)}: give (N, C, *S), (C, *S) or another broadcastable shape."
            ) from None
    if isinstance(baseline, np.ndarray):
        return _baseline(torch.from_numpy(baseline), x, blur_sigma)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).contiguous()
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    raise ConfigurationError(
        f"Unknown baseline {baseline!r}: use 'zero', 'blur', 'mean' or a tensor broadcastable to the input."
    )


def _curves(
    model: nn.Module,
    input_tensor: torch.Tensor,
    cams: np.ndarray | torch.Tensor,
    targets: Sequence[Target] | Target | None,
    steps: int,
    baseline: Baseline,
    order: Order,
    kinds: tuple[str, ...],
    blur_sigma: float | Sequence[float],
    output_index: OutputIndex,
    batch_memory_bytes: int,
    batch_size: int | None,
    progress: bool,
) -> list[CurveResult]:
    steps = _check_steps(steps)
    check_batching(batch_memory_bytes, batch_size)
    if order not in _ORDERS:
        raise ConfigurationError(f"order must be one of {_ORDERS}, got {order!r}.")
    device = model_device(model)
    x = check_input(input_tensor).detach().to(device)
    maps = as_maps(cams, x)
    listed = check_targets(targets, x.shape[0])
    n = x.shape[0]
    voxels = int(np.prod(x.shape[2:]))
    counts = [(k * voxels) // steps for k in range(steps + 1)]
    # the distinct states of one sample: (is_insertion, step); both curves share the input itself
    # (deletion 0 = insertion T) and the all-baseline input (deletion T = insertion 0)
    states: list[tuple[bool, int]] = []  # (insertion, step k)
    where: dict[tuple[str, int], int] = {}
    for kind in kinds:
        for k, count in enumerate(counts):
            insertion = kind == "insertion"
            changed_to_baseline = voxels - count if insertion else count
            key = ("state", changed_to_baseline) if changed_to_baseline in (0, voxels) else (kind, k)
            canonical = (
                (False, 0 if changed_to_baseline == 0 else steps) if key[0] == "state" else (insertion, k)
            )
            if key not in where:
                where[key] = len(states)
                states.append(canonical)
            where[(kind, k)] = where[key]
    with model_state(model, eval_mode=True, freeze_parameters=False), torch.inference_mode():
        # the step at which each voxel is changed: voxel of rank r at the first k with floor(kV/T) > r
        count_tensor = torch.tensor(counts, device=device)
        ranks = voxel_ranking(maps, order)
        step_dtype = torch.int16 if steps < 2**15 else torch.int32
        step_of_voxel = torch.searchsorted(count_tensor, ranks, right=True).to(step_dtype)
        step_of_voxel = step_of_voxel.reshape(n, 1, *x.shape[2:])  # (N, 1, *S)
        del ranks
        base = _baseline(baseline, x, blur_sigma)
        size = chunk_size(model, x[:1], batch_memory_bytes, batch_size)
        if listed is None:
            listed = predicted_targets(model, x, size, output_index, probability=True)
        per_sample = len(states)
        state_steps = torch.tensor([k for _, k in states], device=device, dtype=step_dtype)
        spread = (-1, *([1] * (x.ndim - 1)))
        workspace = torch.empty((min(size, n * per_sample), *x.shape[1:]), dtype=x.dtype, device=device)

        def build(start: int, stop: int) -> tuple[torch.Tensor, list[int]]:
            # one workspace reused by every chunk (a chunk is scored before the next is built); each
            # run of rows of one sample and one curve is one broadcast compare and one torch.where
            batch = workspace[: stop - start]
            keys = [(index // per_sample, states[index % per_sample][0]) for index in range(start, stop)]
            row = 0
            while row < len(keys):
                end = row
                while end < len(keys) and keys[end] == keys[row]:
                    end += 1
                sample, insertion = keys[row]
                state = torch.arange(start + row, start + end, device=device) % per_sample
                thresholds = state_steps[state].reshape(spread)
                step = step_of_voxel[sample]  # (1, *S)
                # deletion: the voxels changed by step k are baseline; insertion: the others are
                take_base = step > thresholds if insertion else step <= thresholds
                torch.where(take_base, base[sample], x[sample], out=batch[row:end])
                row = end
            return batch, [sample for sample, _ in keys]

        scores = score_rows(
            model, n * per_sample, build, listed, size, output_index, progress, "deletion/insertion"
        )
    table = scores.reshape(n, per_sample).cpu().numpy()
    fractions = np.asarray(counts, dtype=np.float64) / voxels
    results = []
    for kind in kinds:
        columns = [where[(kind, k)] for k in range(steps + 1)]
        curve = table[:, columns].astype(np.float64)
        results.append(
            CurveResult(fractions, curve, np.asarray(np.trapezoid(curve, fractions, axis=1)), kind, order)
        )
    return results


def deletion_curve(
    model: nn.Module,
    input_tensor: torch.Tensor,
    cams: np.ndarray | torch.Tensor,
    targets: Sequence[Target] | Target | None = None,
    steps: int = 50,
    baseline: Baseline = "zero",
    *,
    order: Order = "most_relevant_first",
    blur_sigma: float | Sequence[float] = 5.0,
    output_index: OutputIndex = 0,
    batch_memory_bytes: int = DEFAULT_BATCH_MEMORY_BYTES,
    batch_size: int | None = None,
    progress: bool = True,
) -> CurveResult:
    """The deletion curve of each sample.

    Args:
        model: the network (eval mode during the call, its flags restored afterwards).
        input_tensor: ``(N, C, *S)``, 1 to 3 spatial axes (``(N, C, D, H, W)`` for volumes).
        cams: ``(N, *S)`` maps on the input's grid, numpy or torch.
        targets: one target per sample (or one callable for all); ``None``: the softmax
            probability of each sample's predicted class.
        steps: the number of steps ``T`` (``T + 1`` points).
        baseline: ``"zero"``, ``"blur"``, ``"mean"`` or a tensor broadcastable to ``(N, C, *S)``.
        order: ``"most_relevant_first"`` (RISE's deletion) or ``"least_relevant_first"``.
        blur_sigma: the Gaussian's standard deviation in voxels for ``baseline="blur"`` (one
            value or one per spatial axis).
        output_index: the element of a tuple/dict output that holds the scores.
        batch_memory_bytes: the memory budget of one chunk of forward passes, in bytes.
        batch_size: a fixed number of perturbed inputs per forward pass instead of the budget.
        progress: show a tqdm bar over the chunks.

    Returns:
        :class:`CurveResult` with ``fractions`` ``(T + 1,)``, ``scores`` ``(N, T + 1)``, ``auc`` ``(N,)``.
    """
    return _curves(
        model,
        input_tensor,
        cams,
        targets,
        steps,
        baseline,
        order,
        ("deletion",),
        blur_sigma,
        output_index,
        batch_memory_bytes,
        batch_size,
        progress,
    )[0]


def insertion_curve(
    model: nn.Module,
    input_tensor: torch.Tensor,
    cams: np.ndarray | torch.Tensor,
    targets: Sequence[Target] | Target | None = None,
    steps: int = 50,
    baseline: Baseline = "blur",
    *,
    order: Order = "most_relevant_first",
    blur_sigma: float | Sequence[float] = 5.0,
    output_index: OutputIndex = 0,
    batch_memory_bytes: int = DEFAULT_BATCH_MEMORY_BYTES,
    batch_size: int | None = None,
    progress: bool = True,
) -> CurveResult:
    """The insertion curve of each sample: from the baseline (default ``"blur"``, as RISE) to the
    input, the first ranked voxels put back first. Arguments as :func:`deletion_curve`."""
    return _curves(
        model,
        input_tensor,
        cams,
        targets,
        steps,
        baseline,
        order,
        ("insertion",),
        blur_sigma,
        output_index,
        batch_memory_bytes,
        batch_size,
        progress,
    )[0]


def deletion_insertion(
    model: nn.Module,
    input_tensor: torch.Tensor,
    cams: np.ndarray | torch.Tensor,
    targets: Sequence[Target] | Target | None = None,
    steps: int = 50,
    baseline: Baseline = "zero",
    *,
    order: Order = "most_relevant_first",
    blur_sigma: float | Sequence[float] = 5.0,
    output_index: OutputIndex = 0,
    batch_memory_bytes: int = DEFAULT_BATCH_MEMORY_BYTES,
    batch_size: int | None = None,
    progress: bool = True,
) -> tuple[CurveResult, CurveResult]:
    """``(deletion, insertion)`` with one ``baseline`` for both, in ``2 · steps`` forward passes per
    sample (the two states the curves share are scored once). Arguments as :func:`deletion_curve`."""
    deletion, insertion = _curves(
        model,
        input_tensor,
        cams,
        targets,
        steps,
        baseline,
        order,
        ("deletion", "insertion"),
        blur_sigma,
        output_index,
        batch_memory_bytes,
        batch_size,
        progress,
    )
    return deletion, insertion
