"""pytorch-grad-cam's import path ``pytorch_grad_cam.shapley_cam``: a re-export of :mod:`medcam3d.methods.shapley`."""

from medcam3d.methods.shapley import ShapleyCAM

__all__ = ["ShapleyCAM"]
