"""pytorch-grad-cam's import path ``pytorch_grad_cam.grad_cam_elementwise``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import GradCAMElementWise

__all__ = ["GradCAMElementWise"]
