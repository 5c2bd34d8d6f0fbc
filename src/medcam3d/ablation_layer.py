"""pytorch-grad-cam's import path ``pytorch_grad_cam.ablation_layer``: a re-export of :mod:`medcam3d.methods.perturbation`."""

from medcam3d.methods.perturbation import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit

__all__ = ["AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN"]
