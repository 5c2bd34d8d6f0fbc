"""Memory budgets for batched extra forward passes (perturbation methods, faithfulness metrics).

One probe forward of a single sample, with a hook on every leaf module, records the largest layer
output; a forward pass of one sample is then estimated at twice the input plus twice that output.
The estimate is cached per model (weakly: a dropped model drops its entries), input shape, dtype
and device, so repeated calls cost no probe.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

__all__ = ["DEFAULT_BATCH_MEMORY_BYTES", "forward_bytes_per_sample", "rows_per_chunk"]

#: default memory budget of one chunk of extra forward passes (1 GiB)
DEFAULT_BATCH_MEMORY_BYTES = 1 << 30

_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], int]] = weakref.WeakKeyDictionary()


def forward_bytes_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Estimated memory of an inference-mode forward pass of one sample ``(1, C, *S)``, in bytes."""
    key = (tuple(sample.shape), sample.dtype, str(sample.device))
    cache = _PROBES.setdefault(model, {})
    if key in cache:
        return cache[key]
    largest = [0]

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    estimate = 2 * sample.numel() * sample.element_size() + 2 * largest[0]
    cache[key] = estimate
    return estimate


def rows_per_chunk(
    model: nn.Module, sample: torch.Tensor, memory_bytes: int, batch_size: int | None = None
) -> int:
    """Forward passes per chunk: ``batch_size`` if given, else the budget / one sample's estimate (≥ 1)."""
    if batch_size is not None:
        return int(batch_size)
    return max(1, int(memory_bytes) // max(1, forward_bytes_per_sample(model, sample)))
