"""CAM methods, one file per family."""

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
from medcam3d.methods.perturbation import AblationCAM, ScoreCAM
from medcam3d.methods.registry import MethodInfo, available_methods, get_method, method_table
from medcam3d.methods.shapley import ShapleyCAM

__all__ = [
    "AblationCAM",
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
    "ScoreCAM",
    "SegXResCAM",
    "ShapleyCAM",
    "XGradCAM",
    "available_methods",
    "get_method",
    "guided_backprop",
    "method_table",
]
