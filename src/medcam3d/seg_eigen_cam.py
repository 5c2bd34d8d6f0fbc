"""pytorch-grad-cam's import path ``pytorch_grad_cam.seg_eigen_cam``: a re-export of :mod:`medcam3d.methods.seg_eigen`."""

from medcam3d.methods.seg_eigen import SegEigenCAM

__all__ = ["SegEigenCAM"]
