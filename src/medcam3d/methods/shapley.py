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
        ctx = self.context
        if ctx is None or ctx.layer_name == self.layer_names[0]:
            self._graphs: list[tuple[torch.Tensor, torch.Tensor]] = []
        hvp: torch.Tensor | None = None
        if grads.requires_grad and activations.requires_grad:
            (hvp,) = torch.autograd.grad(
                grads, activations, grad_outputs=activations.detach(), retain_graph=True, allow_unused=True
            )
            self._graphs.append((grads, activations))
        if ctx is None or ctx.layer_name == self.layer_names[-1]:
            self._release_graphs()
        grads = grads.detach()
        if hvp is None:
            return spatial_mean(grads)
        return spatial_mean(grads - 0.5 * hvp.detach())

    def _release_graphs(self) -> None:
        """Run one last backward pass without ``retain_graph`` through every second-order graph of
        this call, which frees their saved tensors (a ``create_graph`` graph is not always freed
        by dropping the references alone)."""
        graphs, self._graphs = getattr(self, "_graphs", []), []
        if graphs:
            torch.autograd.grad(
                [g.sum() for g, _ in graphs], [a for _, a in graphs], allow_unused=True, retain_graph=False
            )
