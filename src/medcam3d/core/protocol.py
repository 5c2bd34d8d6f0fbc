"""The shape every CAM method has, for code that accepts "a method": the sliding-window engine, the
nnU-Net runner, the metrics. :class:`~medcam3d.core.base.BaseCAM` subclasses satisfy it, and so do
wrappers that hold a base method (:class:`~medcam3d.methods.finer.FinerCAM`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from medcam3d.core.base import CAMResult

__all__ = ["CAMMethod"]


@runtime_checkable
class CAMMethod(Protocol):
    """What a CAM method offers: its model and target layers, and the two torch-level entry points.

    ``compute(input_tensor (N, C, *S), targets)`` → one :class:`CAMResult` with maps ``(N, *S)``;
    ``compute_multi(input_tensor, [targets, ...])`` → one result per target set, from one forward
    pass where the method allows it.
    """

    model: nn.Module
    layer_names: list[str]

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> CAMResult: ...

    def compute_multi(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[Sequence[Any] | None],
        *,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> list[CAMResult]: ...
