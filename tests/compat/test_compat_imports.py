"""Every module path and name of pytorch-grad-cam 1.5.7 (and of the original medcam3d) imports under medcam3d."""

from __future__ import annotations

import importlib

import pytest

# module (pytorch_grad_cam.<module>, renamed) -> names that code imports from it
PGC_MODULES: dict[str, list[str]] = {
    "": [
        "GradCAM", "FinerCAM", "ShapleyCAM", "FEM", "HiResCAM", "GradCAMElementWise", "AblationLayer",
        "AblationLayerVit", "AblationLayerFasterRCNN", "AblationCAM", "XGradCAM", "GradCAMPlusPlus",
        "ScoreCAM", "LayerCAM", "EigenCAM", "EigenGradCAM", "KPCA_CAM", "RandomCAM", "FullGrad",
        "GuidedBackpropReLUModel", "ActivationsAndGradients", "DeepFeatureFactorization", "run_dff_on_image",
        "SegEigenCAM", "RefineCAM", "SESS",
    ],
    "grad_cam": ["GradCAM"],
    "hirescam": ["HiResCAM"],
    "grad_cam_elementwise": ["GradCAMElementWise"],
    "grad_cam_plusplus": ["GradCAMPlusPlus"],
    "xgrad_cam": ["XGradCAM"],
    "layer_cam": ["LayerCAM"],
    "eigen_cam": ["EigenCAM"],
    "eigen_grad_cam": ["EigenGradCAM"],
    "kpca_cam": ["KPCA_CAM"],
    "score_cam": ["ScoreCAM"],
    "ablation_cam": ["AblationCAM", "AblationLayer", "replace_layer_recursive"],
    "ablation_cam_multilayer": ["AblationCAM", "AblationLayer", "replace_layer_recursive"],
    "ablation_layer": ["AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN"],
    "fullgrad_cam": ["FullGrad"],
    "random_cam": ["RandomCAM"],
    "finer_cam": ["FinerCAM"],
    "shapley_cam": ["ShapleyCAM"],
    "fem": ["FEM"],
    "guided_backprop": ["GuidedBackpropReLUModel", "GuidedBackpropReLU", "GuidedBackpropReLUasModule"],
    "seg_eigen_cam": ["SegEigenCAM"],
    "refine_cam": ["RefineCAM"],
    "sess": ["SESS", "sliding_window"],
    "sobel_cam": ["sobel_cam"],
    "activations_and_gradients": ["ActivationsAndGradients"],
    "base_cam": ["BaseCAM"],
    "feature_factorization": [],
    "feature_factorization.deep_feature_factorization": [
        "DeepFeatureFactorization", "dff", "run_dff_on_image", "create_labels_legend",
        "show_factorization_on_image", "scale_cam_image",
    ],
    "feature_factorization.utils": ["create_labels_legend"],
    "utils": ["deprocess_image", "get_2d_projection", "model_targets", "reshape_transforms"],
    "utils.svd_on_activations": [
        "get_2d_projection", "get_2d_projection_kernel", "get_2d_projection_with_sign_correction",
    ],
    "utils.image": [
        "preprocess_image", "deprocess_image", "show_cam_on_image", "create_labels_legend",
        "show_factorization_on_image", "scale_cam_image", "scale_accross_batch_and_channels",
    ],
    "utils.model_targets": [
        "ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "ClassifierOutputReST",
        "BinaryClassifierOutputTarget", "SoftmaxOutputTarget", "RawScoresOutputTarget",
        "SemanticSegmentationTarget", "FasterRCNNBoxScoreTarget", "FinerWeightedTarget",
    ],
    "utils.reshape_transforms": ["fasterrcnn_reshape_transform", "swinT_reshape_transform", "vit_reshape_transform"],
    "utils.find_layers": [
        "replace_layer_recursive", "replace_all_layer_type_recursive", "find_layer_types_recursive",
        "find_layer_predicate_recursive",
    ],
    "metrics.cam_mult_image": ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence", "multiply_tensor_with_cam"],
    "metrics.perturbation_confidence": ["PerturbationConfidenceMetric", "RemoveMostRelevantFirst", "RemoveLeastRelevantFirst", "AveragerAcrossThresholds"],
    "metrics.road": [
        "ROADMostRelevantFirst", "ROADLeastRelevantFirst", "ROADMostRelevantFirstAverage",
        "ROADLeastRelevantFirstAverage", "ROADCombined", "NoisyLinearImputer",
    ],
    "metrics.arcc": ["ARCC"],
}  # fmt: skip

# the original medcam3d (Jingnan-Jia/medcam3d 0.0.x): medcam3d/__init__.py, grad_cam3d.py,
# base_medcam3d.py, activations_and_gradients.py, utils/image.py, utils/model_targets.py
ORIGINAL_MEDCAM3D: dict[str, list[str]] = {
    "": ["GradCAM"],
    "grad_cam3d": ["GradCAM"],
    "base_medcam3d": ["BaseCAM"],
    "activations_and_gradients": ["ActivationsAndGradients"],
    "utils.image": [
        "cam_resize",
        "scale_cam_image",
        "show_cam_on_image",
        "preprocess_image",
        "deprocess_image",
    ],
    "utils.model_targets": ["ClassifierOutputTarget"],
}


def _module(path: str) -> object:
    return importlib.import_module("medcam3d" + (f".{path}" if path else ""))


@pytest.mark.parametrize("path", sorted(PGC_MODULES))
def test_pytorch_grad_cam_module_paths(path: str) -> None:
    module = _module(path)
    for name in PGC_MODULES[path]:
        assert hasattr(module, name), f"medcam3d.{path} has no {name}"
        assert getattr(module, name) is not None


@pytest.mark.parametrize("path", sorted(ORIGINAL_MEDCAM3D))
def test_original_medcam3d_module_paths(path: str) -> None:
    module = _module(path)
    for name in ORIGINAL_MEDCAM3D[path]:
        assert hasattr(module, name), f"medcam3d.{path} has no {name}"


def test_thin_reexports_are_our_classes() -> None:
    import medcam3d
    from medcam3d.grad_cam import GradCAM
    from medcam3d.grad_cam3d import GradCAM as GradCAM3D
    from medcam3d.methods.sess import SESS

    assert GradCAM is medcam3d.GradCAM is GradCAM3D
    assert _module("sess").SESS is SESS  # type: ignore[attr-defined]
    assert _module("base_cam").BaseCAM is _module("base_medcam3d").BaseCAM is medcam3d.BaseCAM  # type: ignore[attr-defined]


def test_the_package_loads_the_modules_pytorch_grad_cam_loads() -> None:
    import medcam3d

    # pytorch_grad_cam/__init__.py imports these modules, so attribute access works after `import`
    assert medcam3d.utils.model_targets.ClassifierOutputTarget
    assert medcam3d.utils.reshape_transforms
    assert medcam3d.metrics.cam_mult_image.CamMultImageConfidenceChange
    assert medcam3d.metrics.road.ROADCombined


def test_guided_backprop_is_callable_after_its_module_is_imported() -> None:
    import torch

    import medcam3d
    import medcam3d.guided_backprop  # binds the package attribute to the module
    from medcam3d.guided_backprop import GuidedBackpropReLUModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    x = torch.randn(1, 1, 8, 8)
    model(x)
    direct = medcam3d.methods.guided.guided_backprop(model, x, 1)
    torch.testing.assert_close(medcam3d.guided_backprop(model, x, 1), direct)
    assert GuidedBackpropReLUModel(model)(x, 1).shape == (8, 8, 1)
