"""pytorch-grad-cam's import path ``pytorch_grad_cam.finer_cam``: a re-export of :mod:`medcam3d.methods.finer`."""

from medcam3d.methods.finer import FinerCAM

__all__ = ["FinerCAM"]
