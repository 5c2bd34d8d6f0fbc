"""pytorch-grad-cam's import path ``pytorch_grad_cam.xgrad_cam``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import XGradCAM

__all__ = ["XGradCAM"]
