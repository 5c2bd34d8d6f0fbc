"""Forward taps on target layers, registered for one call and removed in ``finally``.

A tap records the output of its layer. When gradients are wanted and the output does not
already require grad (because the caller's parameters were frozen for the call and the input
does not require grad), the tap turns the output into a fresh leaf, so autograd builds the graph
only from the first tapped layer onwards: gradients flow down to the hooked layers and no
further. The tap hands a *clone* downstream, so an in-place operation that follows the layer
(nnU-Net's ``LeakyReLU(inplace=True)``) cannot overwrite the recorded activation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn as nn

from medcam3d.errors import LayerOutputError

__all__ = ["LayerTaps"]

logger = logging.getLogger(__name__)


class LayerTaps:
    """Context manager that records the outputs of ``layers`` during one forward pass.

    Args:
        layers: ``(name, module)`` pairs, as returned by :func:`medcam3d.core.layers.resolve_layers`.
        track_gradients: make the recorded outputs differentiable (leaves where needed).

    After the forward pass, ``activations[name]`` is the recorded output (the tensor to take
    gradients with respect to) and ``calls[name]`` the number of times the layer ran.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], track_gradients: bool = True) -> None:
        self.layers = list(layers)
        self.track_gradients = track_gradients
        self.activations: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise LayerOutputError(
                    f"Target layer {name!r} ({type(module).__name__}) returns a {type(output).__name__}, "
                    "not a tensor. Choose a layer whose output is a feature-map tensor (for example a "
                    "convolution or a block inside it)."
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] == 2:
                logger.warning(
                    "Target layer %r ran more than once in one forward pass; its last call is used.", name
                )
            if not (self.track_gradients and torch.is_grad_enabled()):
                self.activations[name] = output.detach()
                return None
            recorded = output
            if not recorded.requires_grad:
                recorded = output.detach().requires_grad_(True)
            self.activations[name] = recorded
            return recorded.clone()

        return hook

    def __enter__(self) -> LayerTaps:
        self.activations.clear()
        self.calls.clear()
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop the recorded tensors (and with them the autograd graph)."""
        self.activations.clear()
        self.calls.clear()
