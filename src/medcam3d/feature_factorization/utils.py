"""pytorch-grad-cam's import path ``pytorch_grad_cam.feature_factorization.utils``."""

from medcam3d.utils.image import create_labels_legend

__all__ = ["create_labels_legend"]
