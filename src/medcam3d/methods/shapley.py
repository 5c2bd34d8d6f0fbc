"""ShapleyCAM (Cai et al., 2025, arXiv:2501.06261): gradient plus a Hessian-vector product, N-D."""

from __future__ import annotations

import torch

from medcam3d.core.base import BaseCAM
from medcam3d.core.tensors import spatial_mean

__all__ = ["ShapleyCAM"]


class ShapleyCAM(BaseCAM):
    """ShapleyCAM: channel weights ``w_k = mean_s(G − ½ H·A)_k``, with ``H·A`` the Hessian of the score
    with respect to the activations times the activations (a second-order Shapley approximation).

    ``(N, K, *s)`` → weights ``(N, K)``. The gradients keep their graph (``create_graph``) only
    for the duration of the call; the Hessian-vector product is one more ``autograd.grad``, and
    no graph or parameter ``.grad`` outlives the call. For networks that are piecewise linear up
    to a linear target the Hessian term is zero and ShapleyCAM equals Grad-CAM; it differs with
    softmax targets (e.g. ``ClassifierOutputReST``, the paper's choice) or smooth activations.
    """

    create_graph = True

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        hvp: torch.Tensor | None = None
        if grads.requires_grad and activations.requires_grad:
            (hvp,) = torch.autograd.grad(
                grads, activations, grad_outputs=activations.detach(), retain_graph=True, allow_unused=True
            )
        grads = grads.detach()
        if hvp is None:
            return spatial_mean(grads)
        return spatial_mean(grads - 0.5 * hvp.detach())
