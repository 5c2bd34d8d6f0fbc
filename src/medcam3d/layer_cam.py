"""pytorch-grad-cam's import path ``pytorch_grad_cam.layer_cam``: a re-export of :mod:`medcam3d.methods.gradient`."""

from medcam3d.methods.gradient import LayerCAM

__all__ = ["LayerCAM"]
