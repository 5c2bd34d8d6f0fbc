"""pytorch-grad-cam's import path ``pytorch_grad_cam.refine_cam``: a re-export of :mod:`medcam3d.methods.refine`."""

from medcam3d.methods.refine import RefineCAM

__all__ = ["RefineCAM"]
