"""pytorch-grad-cam's import path ``pytorch_grad_cam.sobel_cam``: a re-export of :mod:`medcam3d.methods.sobel`."""

from medcam3d.methods.sobel import sobel_cam

__all__ = ["sobel_cam"]
