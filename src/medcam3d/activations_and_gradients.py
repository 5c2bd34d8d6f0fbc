"""pytorch-grad-cam's import path ``pytorch_grad_cam.activations_and_gradients``: a re-export of :mod:`medcam3d.core.compat`."""

from medcam3d.core.compat import ActivationsAndGradients

__all__ = ["ActivationsAndGradients"]
