"""The method registry: the names the command line and the nnU-Net tool accept."""

from __future__ import annotations

from dataclasses import dataclass

from medcam3d.errors import ConfigurationError

__all__ = ["MethodInfo", "available_methods", "method_table", "get_method"]


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: its command-line name, class, one-line description, gradient need."""

    name: str
    cls: type
    description: str
    uses_gradients: bool


def _entries() -> list[MethodInfo]:
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
    from medcam3d.methods.guided import GuidedGradCAM
    from medcam3d.methods.perturbation import AblationCAM, ScoreCAM
    from medcam3d.methods.refine import RefineCAM
    from medcam3d.methods.seg_eigen import SegEigenCAM
    from medcam3d.methods.sess import SESS
    from medcam3d.methods.shapley import ShapleyCAM

    rows = [
        ("gradcam", GradCAM, "channel weights = spatial mean of the gradients", True),
        ("gradcam++", GradCAMPlusPlus, "second-order weighting of positive gradients", True),
        ("hirescam", HiResCAM, "element-wise gradient x activation, summed over channels", True),
        ("gradcamelementwise", GradCAMElementWise, "ReLU of element-wise gradient x activation", True),
        ("xgradcam", XGradCAM, "gradients weighted by normalised activations", True),
        ("layercam", LayerCAM, "positive gradients x activations, element-wise", True),
        ("eigencam", EigenCAM, "first principal component of the activations (gradient-free)", False),
        ("eigengradcam", EigenGradCAM, "first principal component of gradient x activation", True),
        ("kpcacam", KPCA_CAM, "first kernel principal component (Nystrom, gradient-free)", False),
        ("ablationcam", AblationCAM, "score drop when each channel is zeroed (perturbation)", False),
        ("scorecam", ScoreCAM, "score of the input masked by each channel (perturbation)", False),
        ("fullgrad", FullGrad, "input gradient plus bias gradients of every conv/norm layer", True),
        ("shapleycam", ShapleyCAM, "gradient plus Hessian-vector product (Shapley view)", True),
        ("fem", FEM, "k-sigma thresholded channels weight the activations (gradient-free)", False),
        ("finercam", FinerCAM, "base method on the main class against similar classes", True),
        ("segxrescam", SegXResCAM, "HiResCAM with block-pooled gradients (segmentation)", True),
        ("randomcam", RandomCAM, "random channel weights: a baseline (gradient-free)", False),
        ("guidedgradcam", GuidedGradCAM, "guided backpropagation x Grad-CAM", True),
        (
            "segeigencam",
            SegEigenCAM,
            "sign-corrected first principal component of |gradient| x activation",
            True,
        ),
        ("refinecam", RefineCAM, "product of the layers' max-scaled maps (base: Grad-CAM++)", True),
        ("sess", SESS, "base method on sliding windows at several scales, fused (slow)", True),
    ]
    return [MethodInfo(name, cls, description, grads) for name, cls, description, grads in rows]


def method_table() -> list[MethodInfo]:
    """Every registered method, in a stable order (gradient methods first, as the issue lists them)."""
    return _entries()


def available_methods() -> dict[str, type]:
    """Method name → class, e.g. ``available_methods()["gradcam"] is GradCAM``.

    The names are the lower-case names the ``medcam3d`` and nnU-Net command lines accept;
    :func:`method_table` gives each one's description and whether it needs gradients.
    """
    return {info.name: info.cls for info in _entries()}


def get_method(name: str) -> type:
    """The class registered as ``name`` (case-insensitive); an unknown name lists the known ones."""
    methods = available_methods()
    key = name.strip().lower()
    if key not in methods:
        raise ConfigurationError(f"Unknown CAM method {name!r}. Available: {', '.join(methods)}.")
    return methods[key]
