"""medcam3d: Class Activation Maps for 3D (and 2D) networks on medical images.

``from medcam3d import GradCAM`` works as ``from pytorch_grad_cam import GradCAM``; every method
is natively N-D (1, 2 or 3 spatial axes) and batch-aware. Every module path of pytorch-grad-cam
1.5.7 exists under ``medcam3d`` (``medcam3d.grad_cam``, ``medcam3d.utils.model_targets``, ...;
see docs/pytorch-grad-cam.md), as do the original medcam3d's (``medcam3d.grad_cam3d``, ...).
"""

# as pytorch-grad-cam's package: these modules are loaded with it
import medcam3d.metrics.cam_mult_image  # noqa: E402, F401, I001
import medcam3d.metrics.road  # noqa: E402, F401
import medcam3d.utils.model_targets  # noqa: E402, F401
import medcam3d.utils.reshape_transforms  # noqa: E402, F401
from medcam3d.core.base import BaseCAM, CAMResult
from medcam3d.core.compat import ActivationsAndGradients
from medcam3d.methods import (
    FEM,
    KPCA_CAM,
    SESS,
    AblationCAM,
    AblationLayer,
    AblationLayerFasterRCNN,
    AblationLayerVit,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackpropReLUModel,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    MethodInfo,
    RandomCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    SegXResCAM,
    ShapleyCAM,
    XGradCAM,
    available_methods,
    get_method,
    guided_backprop,
    method_table,
    run_dff_on_image,
)

__version__ = "0.2.0"

__all__ = [
    "BaseCAM",
    "CAMResult",
    "ActivationsAndGradients",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "SegXResCAM",
    "XGradCAM",
    "AblationCAM",
    "AblationLayer",
    "AblationLayerFasterRCNN",
    "AblationLayerVit",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GuidedBackpropReLUModel",
    "GuidedGradCAM",
    "KPCA_CAM",
    "MethodInfo",
    "RefineCAM",
    "SESS",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "available_methods",
    "get_method",
    "guided_backprop",
    "method_table",
    "run_dff_on_image",
    "__version__",
]
