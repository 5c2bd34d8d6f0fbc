"""Principal-component methods: EigenCAM, EigenGradCAM and KPCA-CAM, on any number of spatial axes.

Every projection works on a ``voxels × channels`` matrix per sample and never builds a
``voxels × voxels`` one: EigenCAM/EigenGradCAM use :func:`first_component_projection` (eigen-
decomposition of the ``K × K`` Gram matrix, memory O(voxels × K)); KPCA-CAM uses a Nyström
approximation with ``landmarks`` voxels (memory O(voxels × landmarks)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext
from medcam3d.core.layers import LayerSpec
from medcam3d.core.projection import first_component_projection, small_eigh

__all__ = ["EigenCAM", "EigenGradCAM", "KPCA_CAM", "kernel_pca_projection"]


class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin, 2020): the activations projected on their first principal
    component. Gradient-free; ``(N, K, *s)`` → ``(N, *s)``.

    The sign of the component is chosen so that the projection correlates positively with the
    channel sum of the activations, so maps do not flip between runs.
    """

    uses_gradients = False
    uses_targets = False

    def layer_map(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        return first_component_projection(activations)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM: the first principal component of gradient × activation ``G ⊙ A``
    (``(N, K, *s)`` → ``(N, *s)``), a class-discriminative EigenCAM."""

    def layer_map(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        return first_component_projection(grads * activations)


KernelName = Literal["sigmoid", "rbf", "poly", "linear", "cosine"]


def _kernel(
    a: torch.Tensor, b: torch.Tensor, kernel: str, gamma: float, degree: int, coef0: float
) -> torch.Tensor:
    """Kernel matrix between rows of ``a (V, K)`` and ``b (M, K)`` → ``(V, M)`` (scikit-learn's definitions)."""
    if kernel == "linear":
        return a @ b.T
    if kernel == "sigmoid":
        return torch.tanh(gamma * (a @ b.T) + coef0)
    if kernel == "poly":
        return (gamma * (a @ b.T) + coef0) ** degree
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(a, b).pow(2))
    if kernel == "cosine":
        an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
        bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return an @ bn.T
    raise ValueError(f"kernel must be one of sigmoid, rbf, poly, linear, cosine; got {kernel!r}.")


def kernel_pca_projection(
    activations: torch.Tensor,
    kernel: str = "sigmoid",
    gamma: float | None = None,
    landmarks: int = 1024,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """First kernel principal component of the voxels of ``(N, K, *s)`` activations → ``(N, *s)``.

    Per sample, the voxels are rows of a ``V × K`` matrix (centred over voxels, as
    pytorch-grad-cam). Exact kernel PCA needs the ``V × V`` kernel matrix; this uses the Nyström
    approximation instead: ``M = min(landmarks, V)`` voxels chosen at random (``seed``, same
    positions for every sample) give the feature map ``Φ = K_VM K_MM^{-1/2}`` (``V × M``), and
    linear PCA of ``Φ`` (centred) gives the component. When ``M = V`` this is exact kernel PCA
    (scikit-learn's ``KernelPCA(n_components=1).fit_transform``, up to sign). Memory is
    O(V × M). ``gamma=None`` is ``1 / K``. Eigenvalues of ``K_MM`` below ``1e-6 × max`` are
    dropped (the sigmoid kernel is not positive semi-definite). The sign is chosen so that the
    projection correlates positively with the channel sum of the activations.
    """
    n, k = activations.shape[:2]
    spatial = activations.shape[2:]
    voxels = math.prod(spatial)
    gamma = 1.0 / k if gamma is None else float(gamma)
    # float64 for the small eigenproblems, where the device has it (MPS does not)
    precision = torch.float32 if activations.device.type == "mps" else torch.float64
    x = activations.reshape(n, k, voxels).transpose(1, 2).to(precision)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    x = x - x.mean(dim=1, keepdim=True)
    m = min(int(landmarks), voxels)
    if m < voxels:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        index = torch.randperm(voxels, generator=generator)[:m].sort().values.to(x.device)
    else:
        index = torch.arange(voxels, device=x.device)
    projections = []
    for sample in x:
        anchors = sample[index]
        k_mm = _kernel(anchors, anchors, kernel, gamma, degree, coef0)
        k_vm = _kernel(sample, anchors, kernel, gamma, degree, coef0)
        values, vectors = small_eigh((k_mm + k_mm.T) / 2)
        keep = values > values.max().clamp_min(0) * 1e-6
        if not bool(keep.any()):
            projections.append(torch.zeros(voxels, dtype=x.dtype, device=x.device))
            continue
        inv_sqrt = vectors[:, keep] / values[keep].sqrt()  # K_MM^{-1/2} restricted to its range
        features = k_vm @ inv_sqrt  # (V, r)
        features = features - features.mean(dim=0, keepdim=True)
        _, component = small_eigh(features.T @ features)
        projections.append(features @ component[:, -1])
    projection = torch.stack(projections)  # (N, V)
    reference = activations.reshape(n, k, voxels).sum(dim=1).to(projection.dtype)
    reference = reference - reference.mean(dim=1, keepdim=True)
    sign = torch.sign((projection * reference).sum(dim=1, keepdim=True))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (projection * sign).to(torch.float32).reshape(n, *spatial)


class KPCA_CAM(BaseCAM):
    """KPCA-CAM (Karmani et al., 2024): the first *kernel* principal component of the activations.

    Gradient-free, ``(N, K, *s)`` → ``(N, *s)``. Scales to volumes with a Nyström approximation
    on ``landmarks`` randomly chosen voxels (exact when the feature map has at most that many
    voxels); see :func:`kernel_pca_projection`. ``kernel`` and ``gamma`` as scikit-learn's
    ``KernelPCA`` (default ``"sigmoid"``, as pytorch-grad-cam).
    """

    uses_gradients = False
    uses_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Any = None,
        kernel: KernelName = "sigmoid",
        gamma: float | None = None,
        *args: Any,
        landmarks: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if kernel not in ("sigmoid", "rbf", "poly", "linear", "cosine"):
            raise ValueError(f"kernel must be one of sigmoid, rbf, poly, linear, cosine; got {kernel!r}.")
        if landmarks < 2:
            raise ValueError(f"landmarks must be at least 2, got {landmarks}.")
        self.kernel = kernel
        self.gamma = gamma
        self.landmarks = landmarks
        self.seed = seed

    def layer_map(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        return kernel_pca_projection(
            activations, self.kernel, self.gamma, landmarks=self.landmarks, seed=self.seed
        )
