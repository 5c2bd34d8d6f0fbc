"""pytorch-grad-cam's import path ``pytorch_grad_cam.grad_cam_plusplus``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import GradCAMPlusPlus

__all__ = ["GradCAMPlusPlus"]
