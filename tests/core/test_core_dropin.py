"""Code written for pytorch-grad-cam 1.5 or the original medcam3d runs with only the import changed."""

from __future__ import annotations

import numpy as np
import torch

from helpers_models import TinyResNet


def test_pytorch_grad_cam_readme_usage_runs_unchanged():
    # pytorch-grad-cam's README, with `pytorch_grad_cam` → `medcam3d` and a small 2D model.
    from medcam3d import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from medcam3d.utils.image import preprocess_image, show_cam_on_image
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model = TinyResNet(ndim=2, in_channels=3, num_classes=300)
    target_layers = [model.layer4[-1]]
    rgb_img = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    input_tensor = preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    targets = [ClassifierOutputTarget(281)]
    with GradCAM(model=model, target_layers=target_layers) as cam:
        grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
        grayscale_cam = grayscale_cam[0, :]
        visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
        model_outputs = cam.outputs
    assert visualization.shape == (40, 48, 3) and visualization.dtype == np.uint8
    assert model_outputs.shape == (1, 300)
    for method in (GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM):
        with method(model=model, target_layers=target_layers) as cam:
            out = cam(input_tensor=input_tensor, targets=targets, aug_smooth=True, eigen_smooth=True)
        assert out.shape == (1, 40, 48)


def test_original_medcam3d_readme_usage_runs():
    # The original medcam3d README: 3D model, use_cuda=..., grayscale_cam[0, :].
    from medcam3d import GradCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model = TinyResNet(ndim=3, num_classes=2)
    target_layers = [model.layer4[-1]]
    input_tensor = torch.randn(1, 1, 24, 40, 32)
    targets = [ClassifierOutputTarget(1)]
    cam = GradCAM(model=model, target_layers=target_layers, use_cuda=False)
    grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
    grayscale_cam = grayscale_cam[0, :]
    assert grayscale_cam.shape == (24, 40, 32)
    assert 0.0 <= grayscale_cam.min() and grayscale_cam.max() <= 1.0


def test_subclass_written_for_pytorch_grad_cam_returning_numpy_weights():
    # A user-defined method in pytorch-grad-cam style: get_cam_weights returning numpy.
    from medcam3d.core.base import BaseCAM

    class MeanGradNumpy(BaseCAM):
        def __init__(self, model, target_layers, reshape_transform=None):
            super().__init__(model, target_layers, reshape_transform)

        def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
            return np.mean(grads.detach().cpu().numpy(), axis=(2, 3, 4))

    from medcam3d import GradCAM

    model = TinyResNet(ndim=3)
    x = torch.randn(2, 1, 16, 16, 16)
    np.testing.assert_allclose(
        MeanGradNumpy(model, [model.layer4])(x), GradCAM(model, [model.layer4])(x), atol=1e-6
    )
