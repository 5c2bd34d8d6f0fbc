"""The original medcam3d's import path ``medcam3d.grad_cam3d``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import GradCAM

__all__ = ["GradCAM"]
