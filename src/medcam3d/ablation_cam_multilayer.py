"""pytorch-grad-cam's import path ``pytorch_grad_cam.ablation_cam_multilayer``.

``AblationCAM`` is :class:`medcam3d.methods.perturbation.AblationCAM`, which takes several target
layers (each layer's channels are ablated in turn, the maps averaged). ``AblationLayer`` here is
the legacy wrapper of this module: it runs the wrapped layer and removes channel ``indices[i]``
of row ``i`` of its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from medcam3d.methods.perturbation import AblationCAM
from medcam3d.utils.find_layers import replace_layer_recursive

__all__ = ["AblationCAM", "AblationLayer", "replace_layer_recursive"]


class AblationLayer(nn.Module):
    """Wraps ``layer``: ``forward(x)`` is ``layer(x)`` with channel ``indices[i]`` of row ``i`` set to
    0 (or to ``min − 1e5`` when the output's minimum is not 0), N-D. With a ``reshape_transform``
    the channel axis is the last one (transformer tokens), as pytorch-grad-cam's legacy class."""

    def __init__(
        self,
        layer: nn.Module,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
        indices: Sequence[int],
    ) -> None:
        super().__init__()
        self.layer = layer
        self.reshape_transform = reshape_transform
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.layer(x)
        channel_axis = output.ndim - 1 if self.reshape_transform is not None else 1
        moved = output.movedim(channel_axis, 1).clone()
        low = float(moved.min())
        value = 0.0 if low == 0 else low - 1e5
        for row in range(min(moved.shape[0], len(self.indices))):
            moved[row, self.indices[row]] = value
        return moved.movedim(1, channel_axis)
