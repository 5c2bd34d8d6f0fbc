"""pytorch-grad-cam's entry points and hook names on top of the pipeline, kept in one place.

``get_cam_weights(input_tensor, target_layer, targets, activations, grads)`` and
``get_cam_image(...)`` are the hooks pytorch-grad-cam's custom methods override; a subclass that
overrides them is called with them by the pipeline (``BaseCAM._layer_maps``). Called directly,
they build a context from their arguments and run the method's own hooks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.context import CallContext, Target

__all__ = ["PytorchGradCAMHooks"]


class PytorchGradCAMHooks:
    """pytorch-grad-cam 1.5's hook names and context-manager protocol (mixed into ``BaseCAM``)."""

    context_type: ClassVar[type[CallContext]] = CallContext

    def _call_hook(self, name: str, activations: torch.Tensor, grads: Any, context: CallContext) -> Any:
        raise NotImplementedError  # BaseCAM's dispatch

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: torch.Tensor,
        grads: torch.Tensor | None,
    ) -> torch.Tensor | np.ndarray:
        """pytorch-grad-cam's hook: channel weights ``(N, K)``. Defaults to :meth:`weights`."""
        context = self.context_type(input_tensor=input_tensor, targets=list(targets), layer=target_layer)
        return self._call_hook("weights", activations, grads, context)

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Target],
        activations: torch.Tensor,
        grads: torch.Tensor | None,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        """pytorch-grad-cam's name for :meth:`layer_map`: ``(N, K, *s)`` → ``(N, *s)``."""
        context = self.context_type(
            input_tensor=input_tensor, eigen_smooth=eigen_smooth, targets=list(targets), layer=target_layer
        )
        return self._call_hook("layer_map", activations, grads, context)

    def __enter__(self) -> PytorchGradCAMHooks:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        # Hooks live only for the duration of a call: nothing to release.
        return None
