"""pytorch-grad-cam's import path ``pytorch_grad_cam.base_cam``: a re-export of :mod:`medcam3d.core.base`."""

from medcam3d.core.base import BaseCAM

__all__ = ["BaseCAM"]
