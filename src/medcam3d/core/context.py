"""What one CAM call produces (:class:`CAMResult`) and what travels through it (:class:`CallContext`).

A CAM object holds configuration only. Everything that belongs to one call — the input, the
model output, the current targets, the layer being processed, and whatever a method must keep
between its hooks — lives in a :class:`CallContext` that the pipeline creates at the start of the
call, hands to the method hooks, and drops at the end. Methods that need more per-call state
declare a dataclass subclass (``FullGradContext``, ``ShapleyContext``, ...) as their
``context_type``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn as nn

__all__ = ["CAMResult", "CallContext", "OutputIndex", "Target"]

#: a target: one sample's model output → the score to explain (a tensor, summed if not scalar)
Target = Callable[[torch.Tensor], Any]
#: which element of a tuple/list (index) or dict (key) model output holds the logits
OutputIndex = Union[int, str]


@dataclass
class CAMResult:
    """What one CAM computation produced; every tensor is on the model's device.

    Attributes:
        maps: ``(N, *S)`` final maps (normalised to [0, 1] unless ``normalize=False``).
        layer_maps: one ``(N, *S)`` map per target layer, after ReLU and resizing
            (normalised per sample when ``normalize=True``).
        output: the model output the targets were applied to (the element chosen by
            ``output_index`` for tuple/list/dict outputs), detached, e.g. ``(N, classes)`` or
            ``(N, classes, *S)``.
        scores: ``(N,)`` the target score of each sample, detached.
        layer_names: the dotted names of the target layers.
    """

    maps: torch.Tensor
    layer_maps: list[torch.Tensor]
    output: torch.Tensor
    scores: torch.Tensor | None
    layer_names: list[str] = field(default_factory=list)


@dataclass
class CallContext:
    """The state of one CAM call, handed to the method hooks.

    Attributes:
        input_tensor: ``(N, C, *S)`` the input as the model sees it (on the model's device; it
            requires grad when the method asked for the input gradient).
        eigen_smooth: project weighted activations on their first principal component.
        normalize: whether maps are min-max normalised in this call.
        output_transform: maps a model output of this pass back to the frame the targets expect
            (``aug_smooth``); perturbation methods apply it to the outputs of their extra forward
            passes. ``None`` when the input is not transformed.
        output: ``(N, classes, ...)`` the selected model output in the targets' frame, detached
            (set after the forward pass).
        targets: one target per sample, for the target set being processed.
        scores: ``(N,)`` the target scores of the set being processed (with their graph).
        layer_name: the dotted name of the layer being processed.
        layer: the module of the layer being processed.
    """

    input_tensor: torch.Tensor
    eigen_smooth: bool = False
    normalize: bool = True
    output_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    output: torch.Tensor | None = None
    targets: list[Target] = field(default_factory=list)
    scores: torch.Tensor | None = None
    layer_name: str = ""
    layer: nn.Module | None = None

    def target_output(self) -> torch.Tensor:
        """The detached model output in the targets' frame (a clear error before the forward pass)."""
        if self.output is None:
            raise RuntimeError(
                "The model output is not known yet: the forward pass has not run in this call."
            )
        return self.output

    def current_layer(self) -> nn.Module:
        """The module being processed (a clear error outside the per-layer step)."""
        if self.layer is None:
            raise RuntimeError("No layer is being processed: this hook runs only inside the per-layer step.")
        return self.layer
