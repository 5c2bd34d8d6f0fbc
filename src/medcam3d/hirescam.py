"""pytorch-grad-cam's import path ``pytorch_grad_cam.hirescam``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import HiResCAM

__all__ = ["HiResCAM"]
