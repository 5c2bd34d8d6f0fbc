"""pytorch-grad-cam's ``utils.svd_on_activations``: projections of activations on their first
(kernel) principal component, N-D, in torch, never a ``voxels × voxels`` matrix.

Each function takes ``(N, K, *s)`` activations — a numpy array (returns numpy float32, as
pytorch-grad-cam) or a torch tensor (returns a tensor on its device) — and returns ``(N, *s)``.
The input is not modified (pytorch-grad-cam sets its NaNs to 0 in place).

Deliberate difference: :func:`get_2d_projection` fixes the sign of the component so that the
projection correlates positively with the channel sum of the activations; pytorch-grad-cam's
sign is whatever the SVD returns. ``-get_2d_projection(a)`` is the other sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medcam3d.core.projection import first_component_projection
from medcam3d.errors import InputShapeError
from medcam3d.methods.eigen import kernel_pca_projection
from medcam3d.methods.seg_eigen import sign_correct

__all__ = [
    "get_2d_projection",
    "get_2d_projection_kernel",
    "get_2d_projection_with_sign_correction",
    "sign_correct",
]


def _as_tensor(activation_batch: Any) -> tuple[torch.Tensor, bool]:
    numpy_in = not isinstance(activation_batch, torch.Tensor)
    tensor = (
        torch.as_tensor(np.asarray(activation_batch, dtype=np.float32))
        if numpy_in
        else activation_batch.detach()
    )
    if tensor.ndim < 3:
        raise InputShapeError(
            f"Activations must be (N, K, *spatial) with at least one spatial axis; got shape {tuple(tensor.shape)}."
        )
    return torch.nan_to_num(tensor.float(), nan=0.0), numpy_in


def _out(projection: torch.Tensor, numpy_in: bool) -> Any:
    projection = projection.to(torch.float32)
    return projection.cpu().numpy() if numpy_in else projection


def get_2d_projection(activation_batch: Any) -> Any:
    """``(N, K, *s)`` → ``(N, *s)``: the voxels (centred) projected on the first principal
    component, sign fixed to correlate with the channel sum (see the module)."""
    tensor, numpy_in = _as_tensor(activation_batch)
    return _out(first_component_projection(tensor), numpy_in)


def get_2d_projection_with_sign_correction(activation_batch: Any) -> Any:
    """``(N, K, *s)`` → ``(N, *s)``: :func:`get_2d_projection`, then flipped where
    ``|min| > |max|`` (Seg-Eigen-CAM's sign correction, as pytorch-grad-cam 1.5.7)."""
    tensor, numpy_in = _as_tensor(activation_batch)
    return _out(sign_correct(first_component_projection(tensor)), numpy_in)


def get_2d_projection_kernel(
    activation_batch: Any, kernel: str = "sigmoid", gamma: float | None = None, landmarks: int = 1024
) -> Any:
    """``(N, K, *s)`` → ``(N, *s)``: the first kernel principal component of the voxels (KPCA-CAM).

    Exact kernel PCA (scikit-learn's ``KernelPCA(n_components=1, kernel, gamma)``, up to sign)
    while the feature map has at most ``landmarks`` voxels; a Nyström approximation on
    ``landmarks`` voxels above that (see :func:`medcam3d.methods.eigen.kernel_pca_projection`).
    """
    tensor, numpy_in = _as_tensor(activation_batch)
    return _out(kernel_pca_projection(tensor, kernel, gamma, landmarks=landmarks), numpy_in)
