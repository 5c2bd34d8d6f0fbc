"""CAM methods, one file per family."""

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

__all__ = [
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "SegXResCAM",
    "XGradCAM",
]
