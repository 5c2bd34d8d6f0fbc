"""RefineCAM: the product of several layers' maps, each scaled to a maximum of 1 (any base method, N-D)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.base import BaseCAM, CAMResult, Target
from medcam3d.core.checks import resolve_normalize
from medcam3d.core.layers import LayerSpec
from medcam3d.core.tensors import minmax_normalize
from medcam3d.methods.gradient import GradCAMPlusPlus

__all__ = ["RefineCAM", "refine_fusion"]


def refine_fusion(layer_maps: Sequence[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """``Π_l ReLU(M_l) / (max ReLU(M_l) + eps)`` over layers of ``(N, *S)`` maps, per sample → ``(N, *S)``."""
    product: torch.Tensor | None = None
    for layer_map in layer_maps:
        positive = layer_map.clamp_min(0)
        peak = positive.reshape(positive.shape[0], -1).amax(dim=1)
        scaled = positive / (peak + eps).reshape(-1, *([1] * (positive.ndim - 1)))
        product = scaled if product is None else product * scaled
    if product is None:
        raise ValueError("refine_fusion needs at least one layer map.")
    return product


class RefineCAM:
    """RefineCAM: a base method's maps of several target layers, each ReLU'd and divided by its
    maximum, multiplied together — early layers' fine detail kept only where deeper layers agree.

    A wrapper like :class:`~medcam3d.methods.finer.FinerCAM`: one ``base_method`` instance (default
    :class:`GradCAMPlusPlus`, as pytorch-grad-cam) over all ``target_layers``, so the maps of every
    layer come from **one** forward and one backward pass (pytorch-grad-cam runs one base CAM per
    layer). Extra keyword arguments go to the base method. Maps ``(N, *S)`` in [0, 1] (min-max
    normalised unless ``normalize=False``).

    Two pytorch-grad-cam 1.5.7 bugs are not reproduced: it passes ``eigen_smooth`` positionally
    into the base call's ``aug_smooth`` slot (here both are passed by name), and its per-layer
    division by the maximum assigns to a loop variable, so the product is of unscaled maps (here
    each layer is scaled; the min-max of the product then differs from pytorch-grad-cam's).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        base_method: type[BaseCAM] = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        normalize = kwargs.pop("normalize", True)
        self.base_cam = base_method(model, target_layers, reshape_transform, **kwargs)
        self.model = model
        self.normalize = bool(normalize)
        self.layer_names = list(self.base_cam.layer_names)
        self.target_layers = list(self.base_cam.target_layers)
        self.uses_gradients = self.base_cam.uses_gradients
        self.return_tensor = self.base_cam.return_tensor
        self.outputs: torch.Tensor | None = None

    def _fuse(self, result: CAMResult, normalize: bool) -> CAMResult:
        fused = refine_fusion(result.layer_maps)
        result.maps = minmax_normalize(fused) if normalize else fused
        self.outputs = result.output
        return result

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> CAMResult:
        """Maps and details as torch tensors; ``layer_maps`` are the base method's raw per-layer maps."""
        normalize = resolve_normalize(self.normalize, normalize)
        result = self.base_cam.compute(
            input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, normalize=False
        )
        return self._fuse(result, normalize)

    def compute_multi(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[Sequence[Target] | None],
        *,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> list[CAMResult]:
        """Several target sets from one forward pass of the base method."""
        normalize = resolve_normalize(self.normalize, normalize)
        results = self.base_cam.compute_multi(
            input_tensor, target_sets, eigen_smooth=eigen_smooth, normalize=False
        )
        return [self._fuse(result, normalize) for result in results]

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """pytorch-grad-cam's signature; maps ``(N, *S)`` (numpy unless ``return_tensor=True``)."""
        result = self.compute(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        if self.return_tensor:
            return result.maps
        return result.maps.detach().to("cpu", torch.float32).numpy()

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        return self.forward(input_tensor, targets, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth)

    def __enter__(self) -> RefineCAM:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"RefineCAM(base_method={type(self.base_cam).__name__}, target_layers={self.layer_names})"
