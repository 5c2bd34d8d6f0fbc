"""pytorch-grad-cam's import path ``pytorch_grad_cam.feature_factorization.deep_feature_factorization``."""

from medcam3d.methods.dff import DeepFeatureFactorization, dff, nmf, run_dff_on_image
from medcam3d.utils.image import create_labels_legend, scale_cam_image, show_factorization_on_image

__all__ = [
    "DeepFeatureFactorization",
    "create_labels_legend",
    "dff",
    "nmf",
    "run_dff_on_image",
    "scale_cam_image",
    "show_factorization_on_image",
]
