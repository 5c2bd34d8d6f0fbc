"""Seg-Eigen-CAM (Chung & Ying, 2025): EigenCAM for segmentation, gradient-weighted and sign-corrected, N-D."""

from __future__ import annotations

import torch

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext
from medcam3d.core.projection import first_component_projection

__all__ = ["SegEigenCAM", "sign_correct"]


def sign_correct(projection: torch.Tensor) -> torch.Tensor:
    """Seg-Eigen-CAM's sign rule (eq. 13): flip each sample of ``(N, *s)`` whose most negative
    value is larger in magnitude than its largest value, so the salient side is positive."""
    flat = projection.reshape(projection.shape[0], -1)
    flip = flat.min(dim=1).values.abs() > flat.max(dim=1).values.abs()
    ones = torch.ones(flip.shape, dtype=projection.dtype, device=projection.device)
    sign = torch.where(flip, -ones, ones)
    return projection * sign.reshape(-1, *([1] * (projection.ndim - 1)))


class SegEigenCAM(BaseCAM):
    """Seg-Eigen-CAM: the first principal component of ``|G| ⊙ A`` (eq. 10), its sign corrected
    so that the larger-magnitude side is positive (eq. 13). ``(N, K, *s)`` → ``(N, *s)``.

    As pytorch-grad-cam 1.5.7's ``SegEigenCAM``: gradients are used (absolute values, so both
    signs count), and ``eigen_smooth`` changes nothing (the map is already a projection).
    Chung, C.-T.; Ying, J.J.-C., Appl. Sci. 2025, 15(13), 7562.
    """

    def layer_map(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        return sign_correct(first_component_projection(grads.abs() * activations))
