"""pytorch-grad-cam-compatible helpers: targets, images, reshape transforms, layer discovery, projections.

As ``pytorch_grad_cam.utils``: ``deprocess_image`` and ``get_2d_projection`` are importable from
here, and the ``model_targets`` and ``reshape_transforms`` modules are loaded with the package.
"""

from medcam3d.utils import model_targets, reshape_transforms
from medcam3d.utils.image import deprocess_image
from medcam3d.utils.svd_on_activations import get_2d_projection

__all__ = ["deprocess_image", "get_2d_projection", "model_targets", "reshape_transforms"]
