"""pytorch-grad-cam's import path ``pytorch_grad_cam.fem``: a re-export of :mod:`medcam3d.methods.fem`."""

from medcam3d.methods.fem import FEM

__all__ = ["FEM"]
