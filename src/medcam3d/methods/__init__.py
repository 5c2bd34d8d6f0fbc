"""CAM methods, one file per family."""

from medcam3d.methods.dff import DeepFeatureFactorization, dff, run_dff_on_image
from medcam3d.methods.eigen import KPCA_CAM, EigenCAM, EigenGradCAM
from medcam3d.methods.fem import FEM
from medcam3d.methods.finer import FinerCAM
from medcam3d.methods.fullgrad import FullGrad
from medcam3d.methods.gradient import (
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    SegXResCAM,
    XGradCAM,
)
from medcam3d.methods.guided import GuidedBackpropReLUModel, GuidedGradCAM, guided_backprop
from medcam3d.methods.perturbation import (
    AblationCAM,
    AblationLayer,
    AblationLayerFasterRCNN,
    AblationLayerVit,
    ScoreCAM,
)
from medcam3d.methods.refine import RefineCAM
from medcam3d.methods.registry import MethodInfo, available_methods, get_method, method_table
from medcam3d.methods.seg_eigen import SegEigenCAM
from medcam3d.methods.sess import SESS
from medcam3d.methods.shapley import ShapleyCAM
from medcam3d.methods.sobel import sobel_cam

__all__ = [
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
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "GuidedGradCAM",
    "HiResCAM",
    "KPCA_CAM",
    "LayerCAM",
    "MethodInfo",
    "RandomCAM",
    "RefineCAM",
    "SESS",
    "ScoreCAM",
    "SegEigenCAM",
    "SegXResCAM",
    "ShapleyCAM",
    "XGradCAM",
    "available_methods",
    "dff",
    "get_method",
    "guided_backprop",
    "method_table",
    "run_dff_on_image",
    "sobel_cam",
]
