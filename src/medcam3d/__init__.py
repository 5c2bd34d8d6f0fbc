"""medcam3d: Class Activation Maps for 3D (and 2D) networks on medical images.

``from medcam3d import GradCAM`` works as ``from pytorch_grad_cam import GradCAM``; every method
is natively N-D (1, 2 or 3 spatial axes) and batch-aware.
"""

from medcam3d.core.base import BaseCAM, CAMResult
from medcam3d.methods import (
    FEM,
    KPCA_CAM,
    AblationCAM,
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
    ScoreCAM,
    SegXResCAM,
    ShapleyCAM,
    XGradCAM,
    available_methods,
    get_method,
    guided_backprop,
    method_table,
)

__version__ = "0.2.0"

__all__ = [
    "BaseCAM",
    "CAMResult",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "SegXResCAM",
    "XGradCAM",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GuidedBackpropReLUModel",
    "GuidedGradCAM",
    "KPCA_CAM",
    "MethodInfo",
    "ScoreCAM",
    "ShapleyCAM",
    "available_methods",
    "get_method",
    "guided_backprop",
    "method_table",
    "__version__",
]
