"""pytorch-grad-cam's import path ``pytorch_grad_cam.guided_backprop``: a re-export of :mod:`medcam3d.methods.guided`."""

from medcam3d.methods.guided import GuidedBackpropReLU, GuidedBackpropReLUasModule, GuidedBackpropReLUModel

__all__ = ["GuidedBackpropReLUModel", "GuidedBackpropReLU", "GuidedBackpropReLUasModule"]
