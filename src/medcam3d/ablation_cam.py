"""pytorch-grad-cam's import path ``pytorch_grad_cam.ablation_cam``: a re-export of :mod:`medcam3d.methods.perturbation`."""

from medcam3d.methods.perturbation import AblationCAM, AblationLayer
from medcam3d.utils.find_layers import replace_layer_recursive

__all__ = ["AblationCAM", "AblationLayer", "replace_layer_recursive"]
