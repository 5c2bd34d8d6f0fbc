"""ARCC and its parts (Poppi et al., "Revisiting The Evaluation of Class Activation Mapping for
Explainability", CVPR workshops 2021, arXiv:2104.10252): pytorch-grad-cam's
``pytorch_grad_cam.metrics.arcc`` (1.5.7) for any spatial rank.

- :class:`Complexity`: the mean absolute value of each map (its L1 norm over the voxel count);
- :class:`Coherency`: ``(ρ + 1) / 2`` with ``ρ`` the Pearson correlation between each map and the
  map the same method gives for the input multiplied by that map;
- :class:`ARCC`: ``3 / (1/(coherency + ε) + 1/(1 - complexity + ε) + 1/(road + ε))``, ``ε = 1e-8``,
  the harmonic mean of coherency, ``1 - complexity`` and ROAD rescaled to [0, 1]
  (``clip(2 · ROADCombined, 0, 1)``), as pytorch-grad-cam computes it.

(pytorch-grad-cam's README imports ``pytorch_grad_cam.metrics.ARCC``, a module that does not exist;
its code lives in ``metrics.arcc``, the path kept here.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.model import model_device
from medcam3d.errors import InputShapeError, NonFiniteInputError
from medcam3d.metrics._common import Target, as_maps, check_input, check_targets
from medcam3d.metrics.road import ROADCombined

__all__ = ["batch_pearson_coherency", "Complexity", "Coherency", "ARCC"]


def _as_numpy(maps: Any, what: str) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    array = np.asarray(maps)
    if array.ndim < 2 or array.dtype == object:
        raise InputShapeError(f"{what} must be a batch of maps (N, *S), got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise NonFiniteInputError(f"{what} hold NaN or Inf values; replace them (np.nan_to_num) first.")
    return array


def batch_pearson_coherency(A: np.ndarray | torch.Tensor, B: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pearson correlation of each pair of maps: ``A``, ``B`` ``(N, *S)`` → ``(N,)``.

    ``cov(a, b) / (std(a) · std(b) + 1e-8)`` with the sample (``n - 1``) normalisation, as
    pytorch-grad-cam (a constant map gives 0). Numpy or torch inputs; float32 numpy out.
    """
    a = _as_numpy(A, "A").astype(np.float64)
    b = _as_numpy(B, "B").astype(np.float64)
    if a.shape != b.shape:
        raise InputShapeError(f"A and B must have the same shape (N, *S), got {a.shape} and {b.shape}.")
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    if a.shape[1] < 2:
        raise InputShapeError("The maps need at least two voxels for a correlation.")
    a_centered = a - a.mean(axis=1, keepdims=True)
    b_centered = b - b.mean(axis=1, keepdims=True)
    dof = a.shape[1] - 1
    cov = (a_centered * b_centered).sum(axis=1) / dof
    std_a = np.sqrt((a_centered**2).sum(axis=1) / dof)
    std_b = np.sqrt((b_centered**2).sum(axis=1) / dof)
    return (cov / (std_a * std_b + 1e-8)).astype(np.float32)


class Complexity:
    """``mean(|cam|)`` of each map ``(N, *S)`` → ``(N,)``: 0 for an empty map, 1 for a map of ones."""

    def __call__(self, grayscale_cams: np.ndarray | torch.Tensor) -> np.ndarray:
        cams = _as_numpy(grayscale_cams, "grayscale_cams").astype(np.float64)
        flat = cams.reshape(cams.shape[0], -1)
        return (np.abs(flat).sum(axis=1) / flat.shape[1]).astype(np.float32)


class Coherency:
    """``(ρ(cam(x ⊙ cam), cam) + 1) / 2`` per sample, in [0, 1]: 1 when the map of the masked input
    reproduces the map."""

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray | torch.Tensor,
        targets: Sequence[Target] | None,
        model: nn.Module,
        base_method: Callable[..., Any],
    ) -> np.ndarray:
        """Args:
        input_tensor: ``(N, C, *S)``.
        grayscale_cams: ``(N, *S)`` maps of ``input_tensor`` (numpy or torch).
        targets: the targets the maps were computed for (one per sample, or ``None``).
        model: the network (the maps are recomputed by ``base_method``, which runs it).
        base_method: a CAM object: ``base_method(input_tensor=..., targets=...)`` → ``(N, *S)``.

        Returns ``(N,)`` float32."""
        x = check_input(input_tensor).detach().to(model_device(model))
        maps = as_maps(grayscale_cams, x, "grayscale_cams")
        listed = check_targets(targets, x.shape[0])
        mixed_images = x * maps.unsqueeze(1).to(x.dtype)
        mixed_cams = base_method(input_tensor=mixed_images, targets=listed)
        return ((batch_pearson_coherency(mixed_cams, maps) + 1) / 2).astype(np.float32)


class ARCC:
    """Harmonic mean of coherency, ``1 - complexity`` and ROAD (see the module docstring).

    Args:
        base_method: the CAM object whose maps are evaluated (used again by :class:`Coherency`).
        road_percentiles: the percentiles of :class:`~medcam3d.metrics.road.ROADCombined`.
        imputer: the ROAD imputer (default ``NoisyLinearImputer()``).
    """

    def __init__(
        self,
        base_method: Callable[..., Any],
        road_percentiles: Sequence[float] = (20, 40, 60, 80),
        imputer: Any = None,
    ) -> None:
        self.complexity = Complexity()
        self.coherency = Coherency()
        self.road = ROADCombined(percentiles=road_percentiles, imputer=imputer)
        self.base_method = base_method

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray | torch.Tensor,
        targets: Sequence[Target] | None,
        model: nn.Module,
    ) -> np.ndarray:
        """``(N,)`` float32 ARCC of the maps ``(N, *S)`` of ``input_tensor`` ``(N, C, *S)``."""
        complexity = self.complexity(grayscale_cams).astype(np.float64)
        coherency = self.coherency(input_tensor, grayscale_cams, targets, model, self.base_method)
        road = (self.road(input_tensor, grayscale_cams, targets, model).astype(np.float64) * 2).clip(0, 1)
        eps = 1e-8
        arcc = 3 / (
            1 / (coherency.astype(np.float64) + eps) + 1 / ((1 - complexity) + eps) + 1 / (road + eps)
        )
        return arcc.astype(np.float32)
