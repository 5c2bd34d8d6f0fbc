"""FinerCAM (Zhang et al., 2025): explain a class against its most similar classes, with any base method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.base import BaseCAM, CAMResult, Target
from medcam3d.core.layers import LayerSpec
from medcam3d.core.targets import FinerWeightedTarget
from medcam3d.errors import TargetError
from medcam3d.methods.gradient import GradCAM

__all__ = ["FinerCAM", "FinerAutoTarget"]

DEFAULT_COMPARISON_CATEGORIES = (1, 2, 3)


class FinerAutoTarget:
    """FinerCAM's default target, chosen from the sample's own output ``(classes,)``.

    The main class is the top class (or ``target_idx``); classes are ranked by how close their
    score is to the main class's score; those at ranks ``comparison_categories`` (rank 0 is the
    main class itself) are compared against, via :class:`FinerWeightedTarget`.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
    ) -> None:
        self.alpha = alpha
        self.comparison_categories = comparison_categories
        self.target_idx = target_idx

    def resolve(self, model_output: torch.Tensor) -> FinerWeightedTarget:
        """The :class:`FinerWeightedTarget` this sample's output ``(classes,)`` calls for."""
        if model_output.ndim != 1:
            raise TargetError(
                f"FinerCAM's default targets need a classifier output (classes,) per sample; got shape "
                f"{tuple(model_output.shape)}. Pass targets=[FinerWeightedTarget(...)] * N instead."
            )
        scores = model_output.detach()
        classes = scores.shape[0]
        ranks = (
            list(DEFAULT_COMPARISON_CATEGORIES[: max(classes - 1, 0)])
            if self.comparison_categories is None
            else [c for c in self.comparison_categories if 0 <= c < classes]
        )
        main = int(scores.argmax()) if self.target_idx is None else int(self.target_idx)
        order = torch.argsort((scores - scores[main]).abs(), stable=True)
        if int(order[0]) != main:  # ties: keep the main class first
            order = torch.cat([order.new_tensor([main]), order[order != main]])
        return FinerWeightedTarget(main, [int(order[r]) for r in ranks], self.alpha)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.resolve(model_output)(model_output)


class FinerCAM:
    """FinerCAM: a base CAM method applied to the score ``Σ_j p_j (y_main − α y_j) / Σ_j p_j``, which
    highlights what separates the main class from its most similar classes ``j``.

    A wrapper: it holds one instance of ``base_method`` (any method class, default
    :class:`GradCAM`) and delegates to it, so every base method's N-D pipeline is reused.
    Maps ``(N, *S)`` as the base method returns them.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        base_method: type[BaseCAM] = GradCAM,
        **kwargs: Any,
    ) -> None:
        self.base_cam = base_method(model, target_layers, reshape_transform, **kwargs)
        self.model = model
        self.layer_names = list(self.base_cam.layer_names)
        self.compute_input_gradient = self.base_cam.compute_input_gradient
        self.uses_gradients = self.base_cam.uses_gradients

    def finer_targets(
        self,
        batch: int,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
    ) -> list[Target]:
        """One :class:`FinerAutoTarget` per sample."""
        return [FinerAutoTarget(alpha, comparison_categories, target_idx) for _ in range(batch)]

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
        normalize: bool | None = None,
    ) -> CAMResult:
        """Maps and details as torch tensors (see :meth:`BaseCAM.compute`)."""
        if targets is None:
            targets = self.finer_targets(input_tensor.shape[0], alpha, comparison_categories, target_idx)
        return self.base_cam.compute(
            input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, normalize=normalize
        )

    def compute_multi(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[Sequence[Target] | None],
        *,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
    ) -> list[CAMResult]:
        """Several target sets from one forward pass of the base method (see
        :meth:`BaseCAM.compute_multi`); a ``None`` set gets FinerCAM's default targets."""
        batch = input_tensor.shape[0]
        sets = [
            self.finer_targets(batch, alpha, comparison_categories, target_idx) if t is None else list(t)
            for t in target_sets
        ]
        return self.base_cam.compute_multi(input_tensor, sets, eigen_smooth=eigen_smooth, normalize=normalize)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
        aug_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """pytorch-grad-cam's signature; maps ``(N, *S)`` (numpy unless the base returns tensors)."""
        result = self.compute(
            input_tensor,
            targets,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            alpha=alpha,
            comparison_categories=comparison_categories,
            target_idx=target_idx,
        )
        if self.base_cam.return_tensor:
            return result.maps
        return result.maps.detach().to("cpu", torch.float32).numpy()

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray | torch.Tensor:
        return self.forward(*args, **kwargs)

    def __enter__(self) -> FinerCAM:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"FinerCAM(base_method={type(self.base_cam).__name__}, target_layers={self.base_cam.layer_names})"
        )
