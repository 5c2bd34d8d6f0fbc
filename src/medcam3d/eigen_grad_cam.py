"""pytorch-grad-cam's import path ``pytorch_grad_cam.eigen_grad_cam``: a re-export of :mod:`medcam3d.methods.eigen`."""

from medcam3d.methods.eigen import EigenGradCAM

__all__ = ["EigenGradCAM"]
