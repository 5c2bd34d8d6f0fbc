"""pytorch-grad-cam's import path ``pytorch_grad_cam.random_cam``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import RandomCAM

__all__ = ["RandomCAM"]
