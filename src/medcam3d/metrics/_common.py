"""Shared checks and batched scoring of the faithfulness metrics (private).

Every faithfulness metric does the same three things: check the input ``(N, C, *S)`` and the maps
``(N, *S)``, build perturbed copies of the input, and score them with the model in chunks whose size
follows a memory budget. The chunk size is the budget divided by an estimate of one sample's
forward-pass memory (twice the input plus twice the largest leaf-module output, measured by one
probe forward of a single sample, cached per model and input shape), the idea of
:class:`medcam3d.methods.perturbation.PerturbationCAM`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from medcam3d.core.checks import select_output
from medcam3d.core.memory import DEFAULT_BATCH_MEMORY_BYTES, forward_bytes_per_sample
from medcam3d.core.targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from medcam3d.errors import (
    ConfigurationError,
    InputShapeError,
    ModelOutputError,
    NonFiniteInputError,
    TargetError,
)

__all__ = ["DEFAULT_BATCH_MEMORY_BYTES"]

Target = Callable[[torch.Tensor], Any]
OutputIndex = int | str


def check_input(input_tensor: Any) -> torch.Tensor:
    """``input_tensor`` as a floating tensor ``(N, C, *S)`` with 1 to 3 spatial axes, all finite."""
    if not isinstance(input_tensor, torch.Tensor):
        raise InputShapeError(
            f"input_tensor must be a torch.Tensor (N, C, *S), got {type(input_tensor).__name__}. "
            "Convert it with torch.as_tensor(...)."
        )
    if not 3 <= input_tensor.ndim <= 5:
        raise InputShapeError(
            f"input_tensor must have shape (N, C, *S) with 1 to 3 spatial axes, got shape "
            f"{tuple(input_tensor.shape)}. Add the batch and channel axes (x[None, None] for one volume)."
        )
    if input_tensor.shape[0] < 1 or any(s < 1 for s in input_tensor.shape[1:]):
        raise InputShapeError(f"input_tensor has an empty axis: shape {tuple(input_tensor.shape)}.")
    if not input_tensor.is_floating_point():
        input_tensor = input_tensor.float()
    if not bool(torch.isfinite(input_tensor).all()):
        raise NonFiniteInputError("input_tensor holds NaN or Inf values; clean the input first.")
    return input_tensor


def as_maps(cams: Any, input_tensor: torch.Tensor, what: str = "cams") -> torch.Tensor:
    """The maps ``(N, *S)`` (numpy or torch) as a float32 tensor on ``input_tensor``'s device.

    Their batch size and spatial shape must be the input's; every value must be finite.
    """
    if isinstance(cams, torch.Tensor):
        maps = cams.detach()
    else:
        try:
            array = np.asarray(cams)
        except Exception as error:  # pragma: no cover - exotic objects
            raise InputShapeError(f"{what} must be a numpy array or a torch tensor (N, *S).") from error
        if array.dtype == object or not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise InputShapeError(f"{what} must be a numeric array (N, *S), got dtype {array.dtype}.")
        maps = torch.from_numpy(np.ascontiguousarray(array))
    expected = (input_tensor.shape[0], *input_tensor.shape[2:])
    if tuple(maps.shape) != tuple(expected):
        hint = ""
        if maps.ndim == input_tensor.ndim and maps.shape[1] == 1:
            hint = " Drop the channel axis (cams[:, 0])."
        elif tuple(maps.shape[1:]) == tuple(expected[1:]):
            hint = " Give one map per sample of the batch."
        elif tuple(maps.shape) == tuple(expected[1:]):
            hint = " Add the batch axis (cams[None])."
        else:
            hint = " Resize the maps to the input grid (the CAM methods already return that shape)."
        raise InputShapeError(
            f"{what} have shape {tuple(maps.shape)} but the input {tuple(input_tensor.shape)} needs "
            f"(N, *S) = {tuple(expected)}.{hint}"
        )
    maps = maps.to(device=input_tensor.device, dtype=torch.float32)
    if not bool(torch.isfinite(maps).all()):
        raise NonFiniteInputError(
            f"{what} hold NaN or Inf values; a CAM of a constant or broken score can be NaN. "
            "Replace them (np.nan_to_num) or drop those samples."
        )
    return maps


def check_targets(targets: Any, batch: int) -> list[Target] | None:
    """One target per sample (a single callable is used for every sample), or ``None``."""
    if targets is None:
        return None
    if callable(targets) and not isinstance(targets, Sequence):
        return [targets] * batch
    try:
        listed = list(targets)
    except TypeError:
        raise TargetError(
            f"targets must be a list of callables (one per sample), got {type(targets).__name__}."
        ) from None
    if len(listed) != batch:
        raise TargetError(
            f"Got {len(listed)} targets for a batch of {batch} samples: give one target per sample "
            "(e.g. [ClassifierOutputTarget(c)] * N)."
        )
    for target in listed:
        if not callable(target):
            raise TargetError(f"Every target must be callable on one sample's output, got {target!r}.")
    return listed


def check_batching(batch_memory_bytes: int, batch_size: int | None) -> None:
    if (
        isinstance(batch_memory_bytes, bool)
        or not isinstance(batch_memory_bytes, int)
        or batch_memory_bytes < 1
    ):
        raise ConfigurationError(
            f"batch_memory_bytes must be a positive number of bytes, got {batch_memory_bytes!r}."
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ConfigurationError(f"batch_size must be a positive integer or None, got {batch_size!r}.")


def chunk_size(
    model: nn.Module, sample: torch.Tensor, batch_memory_bytes: int, batch_size: int | None
) -> int:
    """Rows per chunk of perturbed forward passes: ``batch_size``, or the budget / one row's estimate."""
    if batch_size is not None:
        return int(batch_size)
    return max(1, int(batch_memory_bytes) // max(1, forward_bytes_per_sample(model, sample)))


def row_scores(output: torch.Tensor, targets: Sequence[Target], samples: Sequence[int]) -> torch.Tensor:
    """``targets[samples[r]](output[r])`` summed to a scalar, for every row ``r`` → ``(B,)`` float64."""
    values = []
    for row, sample in enumerate(samples):
        value = targets[sample](output[row])
        value = torch.as_tensor(value, device=output.device)
        values.append(value.to(torch.float64).sum())
    return torch.stack(values)


def score_rows(
    model: nn.Module,
    rows: int,
    build: Callable[[int, int], tuple[torch.Tensor, Sequence[int]]],
    targets: Sequence[Target],
    size: int,
    output_index: OutputIndex = 0,
    progress: bool = False,
    what: str = "scoring",
) -> torch.Tensor:
    """Score ``rows`` perturbed inputs in chunks of ``size``: ``build(start, stop)`` returns the
    chunk ``(B, C, *S)`` and the sample index of each row. Returns ``(rows,)`` float64 on the device.

    Call inside ``torch.inference_mode()`` with the model in the state it must be scored in.
    """
    pieces = []
    for start, stop in _chunks(rows, size, what, progress):
        batch, samples = build(start, stop)
        output = select_output(model(batch), output_index)
        if output.shape[0] != batch.shape[0]:
            raise ModelOutputError(
                f"The model returned {output.shape[0]} rows for a batch of {batch.shape[0]}: the metrics "
                "need one output row per input sample (batch axis first)."
            )
        pieces.append(row_scores(output, targets, samples))
    return torch.cat(pieces)


def _chunks(rows: int, size: int, what: str, progress: bool) -> Iterator[tuple[int, int]]:
    starts = range(0, rows, size)
    bar = tqdm(starts, desc=what, unit="chunk", disable=not progress, leave=False)
    try:
        for start in bar:
            yield start, min(start + size, rows)
    finally:
        bar.close()


def predicted_targets(
    model: nn.Module,
    input_tensor: torch.Tensor,
    size: int,
    output_index: OutputIndex = 0,
    probability: bool = False,
) -> list[Target]:
    """``ClassifierOutputTarget`` (or the softmax one) of each sample's predicted class.

    Only for classifier outputs ``(N, classes)``; a segmentation output needs explicit targets.
    """
    classes: list[int] = []
    for start in range(0, input_tensor.shape[0], size):
        output = select_output(model(input_tensor[start : start + size]), output_index)
        if output.ndim != 2:
            raise TargetError(
                f"targets=None picks each sample's predicted class, which needs a classifier output "
                f"(N, classes); this model returns shape {tuple(output.shape)}. Pass targets, e.g. "
                "[SemanticSegmentationTarget(category, mask)] per sample."
            )
        classes += [int(c) for c in output.argmax(dim=1).tolist()]
    if probability:
        return [ClassifierOutputSoftmaxTarget(c) for c in classes]
    return [ClassifierOutputTarget(c) for c in classes]


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``np.percentile(values, q)`` (linear interpolation) on the tensor's device, in float64.

    Uses two ``kthvalue`` selections (linear time), so it has no size limit (unlike
    ``torch.quantile``).
    """
    flat = values.reshape(-1).to(torch.float64)
    n = flat.numel()
    position = (float(q) / 100.0) * (n - 1)
    low = int(math.floor(position))
    high = min(low + 1, n - 1)
    low_value = flat.kthvalue(low + 1).values
    if high == low or position == low:
        return low_value
    high_value = flat.kthvalue(high + 1).values
    return low_value + (high_value - low_value) * (position - low)
