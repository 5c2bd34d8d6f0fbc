"""ShapleyCAM (Cai et al., 2025, arXiv:2501.06261): gradient plus a Hessian-vector product, N-D."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from medcam3d.core.base import BaseCAM
from medcam3d.core.context import CallContext
from medcam3d.core.tensors import spatial_mean

__all__ = ["ShapleyCAM", "ShapleyContext"]

logger = logging.getLogger(__name__)


@dataclass
class ShapleyContext(CallContext):
    """ShapleyCAM's call state: the second-order graphs kept alive until the end of the call."""

    graphs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


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
    #: the second-order graph of one target set is freed at the end of its call
    shares_forward_pass = False
    context_type = ShapleyContext

    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        hvp: torch.Tensor | None = None
        if grads.requires_grad and activations.requires_grad:
            (hvp,) = torch.autograd.grad(
                grads, activations, grad_outputs=activations.detach(), retain_graph=True, allow_unused=True
            )
            if isinstance(context, ShapleyContext):
                context.graphs.append((grads, activations))
        grads = grads.detach()
        if hvp is None:
            return spatial_mean(grads)
        return spatial_mean(grads - 0.5 * hvp.detach())

    def _release(self, context: CallContext) -> None:
        """Run one last backward pass without ``retain_graph`` through every second-order graph of
        this call, which frees their saved tensors (a ``create_graph`` graph is not always freed
        by dropping the references alone)."""
        if not isinstance(context, ShapleyContext) or not context.graphs:
            return
        graphs, context.graphs = context.graphs, []
        try:
            torch.autograd.grad(
                [g.sum() for g, _ in graphs], [a for _, a in graphs], allow_unused=True, retain_graph=False
            )
        except RuntimeError as error:  # the call failed half-way: the references go with the context
            logger.debug("ShapleyCAM could not run its releasing backward pass: %s", error)
