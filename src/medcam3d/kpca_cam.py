"""pytorch-grad-cam's import path ``pytorch_grad_cam.kpca_cam``: a re-export of :mod:`medcam3d.methods.eigen`."""

from medcam3d.methods.eigen import KPCA_CAM

__all__ = ["KPCA_CAM"]
