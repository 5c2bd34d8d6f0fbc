"""pytorch-grad-cam's import path ``pytorch_grad_cam.fullgrad_cam``: a re-export of :mod:`medcam3d.methods.fullgrad`."""

from medcam3d.methods.fullgrad import FullGrad

__all__ = ["FullGrad"]
