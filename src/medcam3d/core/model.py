"""Helpers about the model itself: its device, its convolutions' rank, compiled wrappers, and the
state a CAM call changes and must restore.

:func:`model_state` saves the train/eval flags and every parameter's ``requires_grad``, applies
eval mode and freezing for the duration of a ``with`` block, and restores both in ``finally``
(also when the block raises). Calls that share one model are serialised by a per-model lock held
for the whole block, so two threads can never interleave their save/freeze/restore steps.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["conv_spatial_rank", "model_device", "model_lock", "model_state", "unwrap_compiled"]


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (its ``_orig_mod``), or ``model`` itself."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def conv_spatial_rank(model: nn.Module) -> int | None:
    """The number of spatial axes shared by all the model's convolutions: 1, 2 or 3.

    ``None`` when the model has no convolution, or when convolutions of different ranks are mixed.
    """
    ranks = {len(m.kernel_size) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}
    return ranks.pop() if len(ranks) == 1 else None


def model_device(model: nn.Module, fallback: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback``, or the CPU, if it has none)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return fallback if fallback is not None else torch.device("cpu")


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises CAM calls on ``model`` (one per model, across threads)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@contextmanager
def model_state(
    model: nn.Module, eval_mode: bool = True, freeze_parameters: bool = True
) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and freeze its parameters for a ``with`` block, then restore both.

    Args:
        model: the module to change; its train/eval flag of every submodule and the
            ``requires_grad`` flag of every parameter are saved first.
        eval_mode: call ``model.eval()`` inside the block.
        freeze_parameters: set ``requires_grad=False`` on every parameter inside the block (so
            autograd records no graph below the first tapped layer and leaves no ``.grad``).

    The per-model lock (:func:`model_lock`) is held for the whole block: concurrent CAM calls on
    one model run one after the other instead of corrupting each other's saved state.
    """
    with model_lock(model):
        training = [(module, module.training) for module in model.modules()]
        requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        try:
            if eval_mode:
                model.eval()
            if freeze_parameters:
                for parameter, _ in requires_grad:
                    parameter.requires_grad_(False)
            yield model
        finally:
            for module, flag in training:
                module.training = flag
            for parameter, flag in requires_grad:
                if parameter.requires_grad != flag:
                    parameter.requires_grad_(flag)
