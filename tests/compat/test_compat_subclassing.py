"""The subclassing contract custom pytorch-grad-cam methods rely on, and the attributes/helpers they read."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from helpers_models import TinyResNet
from medcam3d import ActivationsAndGradients, GradCAM, HiResCAM, SegEigenCAM
from medcam3d.base_cam import BaseCAM
from medcam3d.utils.model_targets import ClassifierOutputTarget
from medcam3d.utils.svd_on_activations import get_2d_projection_with_sign_correction


def _model(ndim: int = 2) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(ndim=ndim).eval()


def _x(ndim: int = 2, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, *(12, 16, 20)[-ndim:], generator=generator)


class NumpyGradCAM(BaseCAM):
    """Written for pytorch-grad-cam: numpy arrays in, numpy weights out."""

    def __init__(self, model, target_layers, reshape_transform=None):  # type: ignore[no-untyped-def]
        super().__init__(model, target_layers, reshape_transform)

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):  # type: ignore[no-untyped-def]
        assert isinstance(grads, np.ndarray) and isinstance(activations, np.ndarray)
        return np.mean(grads, axis=tuple(range(2, grads.ndim)))


class NumpySegEigen(BaseCAM):
    """pytorch-grad-cam 1.5.7's SegEigenCAM, verbatim in spirit: a numpy get_cam_image."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):  # type: ignore[no-untyped-def]
        return get_2d_projection_with_sign_correction(np.abs(grads) * activations)


class TorchWeights(BaseCAM):
    """A get_cam_weights override written for torch tensors (falls back to tensors)."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # type: ignore[no-untyped-def]
        return grads.mean(dim=tuple(range(2, grads.ndim)))


class MaxOverLayers(GradCAM):
    """A pytorch-grad-cam-style one-argument aggregate_multi_layers."""

    def aggregate_multi_layers(self, cam_per_target_layer):  # type: ignore[no-untyped-def, override]
        assert all(isinstance(c, np.ndarray) and c.shape[1] == 1 for c in cam_per_target_layer)
        return np.max(np.concatenate(cam_per_target_layer, axis=1), axis=1)


class ReadsRecorder(GradCAM):
    """Reads ``self.activations_and_grads`` inside the hook, as pytorch-grad-cam's FullGrad does."""

    seen: list[int]

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):  # type: ignore[no-untyped-def]
        self.seen.append(len(self.activations_and_grads.gradients))
        recorded = self.activations_and_grads.gradients[len(self.seen) - 1].cpu().data.numpy()
        np.testing.assert_allclose(recorded, grads, rtol=1e-6)
        return super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)


@pytest.mark.parametrize("ndim", [2, 3])
def test_numpy_get_cam_weights_matches_gradcam(ndim: int) -> None:
    model, x = _model(ndim), _x(ndim)
    ours = GradCAM(model, [model.layer3, model.layer4])(x)
    np.testing.assert_allclose(NumpyGradCAM(model, [model.layer3, model.layer4])(x), ours, atol=1e-6)


def test_numpy_get_cam_image_matches_seg_eigen_cam() -> None:
    model, x = _model(), _x()
    targets = [ClassifierOutputTarget(1)] * 2
    np.testing.assert_allclose(
        NumpySegEigen(model, [model.layer4])(x, targets),
        SegEigenCAM(model, [model.layer4])(x, targets),
        atol=1e-5,
    )


def test_torch_style_override_gets_tensors() -> None:
    model, x = _model(), _x()
    np.testing.assert_allclose(
        TorchWeights(model, [model.layer4])(x), GradCAM(model, [model.layer4])(x), atol=1e-6
    )


def test_one_argument_aggregate_override() -> None:
    model, x = _model(), _x()
    cam = MaxOverLayers(model, [model.layer3, model.layer4])
    result = cam.compute(x)
    expected = torch.stack(result.layer_maps).amax(dim=0)
    torch.testing.assert_close(result.maps, expected)


def test_both_aggregate_call_styles() -> None:
    model = _model()
    cam = GradCAM(model, [model.layer4])
    rng = np.random.default_rng(0)
    layers = [rng.random((2, 1, 6, 8)).astype(np.float32) - 0.2 for _ in range(3)]
    out = cam.aggregate_multi_layers(layers)  # pytorch-grad-cam: numpy (N, 1, *S) -> numpy (N, *S)
    mean = np.maximum(np.concatenate(layers, axis=1), 0).mean(axis=1)
    low = mean.reshape(2, -1).min(1)[:, None, None]
    high = mean.reshape(2, -1).max(1)[:, None, None]
    assert isinstance(out, np.ndarray) and out.shape == (2, 6, 8)
    np.testing.assert_allclose(out, (mean - low) / (high - low), atol=1e-6)
    maps = [torch.from_numpy(layer[:, 0]) for layer in layers]  # ours: torch (N, *S) with normalize
    raw = cam.aggregate_multi_layers(maps, False)
    assert isinstance(raw, torch.Tensor)
    np.testing.assert_allclose(raw.numpy(), mean, atol=1e-6)


def test_recorder_is_filled_before_the_hooks_run() -> None:
    model, x = _model(), _x()
    cam = ReadsRecorder(model, [model.layer3, model.layer4])
    cam.seen = []
    cam(x)
    assert cam.seen == [2, 2]
    assert [tuple(a.shape) for a in cam.activations_and_grads.activations] == [(2, 16, 8, 10), (2, 32, 4, 5)]
    with cam:
        pass
    assert cam.activations_and_grads.activations == []  # leaving the with block drops them


def test_helpers_and_attributes() -> None:
    model, x = _model(3), _x(3)
    cam = GradCAM(model, [model.layer3, model.layer4])
    assert cam.get_target_width_height(x) == (20, 16, 12)  # OpenCV order: the reverse of (D, H, W)
    per_layer = cam.compute_cam_per_layer(x, None, False)
    assert len(per_layer) == 2 and per_layer[0].shape == (2, 1, 12, 16, 20)
    np.testing.assert_allclose(cam.aggregate_multi_layers(per_layer), cam(x), atol=1e-6)
    np.testing.assert_allclose(
        cam.forward_augmentation_smoothing(x, None), cam(x, aug_smooth=True), atol=1e-6
    )
    cam(x)
    assert cam.outputs is not None and cam.outputs.shape == (2, 3)
    assert len(cam.activations_and_grads.gradients) == 2
    assert cam.activations_and_grads.reshape_transform is None
    assert all(not m._forward_hooks for m in model.modules())


def test_activations_and_gradients_standalone() -> None:
    model, x = _model(), _x()
    recorder = ActivationsAndGradients(model, [model.layer3, model.layer4], None)
    output = recorder(x)
    assert all(not m._forward_hooks for m in model.modules())  # no hook outlives the call
    assert [tuple(a.shape) for a in recorder.activations] == [(2, 16, 8, 10), (2, 32, 4, 5)]
    output[:, 1].sum().backward()
    assert [tuple(g.shape) for g in recorder.gradients] == [(2, 16, 8, 10), (2, 32, 4, 5)]
    model.zero_grad(set_to_none=True)
    recorder.release()


def test_original_medcam3d_positional_use_cuda() -> None:
    model, x = _model(3), _x(3)
    with pytest.warns(UserWarning, match="use_cuda is ignored"):
        cam = GradCAM(model, [model.layer4], False)  # GradCAM(model, target_layers, use_cuda)
    assert cam.reshape_transform is None
    np.testing.assert_allclose(cam(x), GradCAM(model, [model.layer4])(x), atol=1e-6)
    with pytest.warns(UserWarning):
        four = GradCAM(
            model, [model.layer4], False, None
        )  # (model, target_layers, use_cuda, reshape_transform)
    assert four.reshape_transform is None and four.compute_input_gradient is False


class HorizontalFlip:
    """ttach's interface: augment_image / deaugment_mask on (B, C, H, W)."""

    def augment_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(3)

    def deaugment_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.flip(3)


class Multiply:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def augment_image(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.factor

    def deaugment_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask


def _reference_smoothing(model: torch.nn.Module, x: torch.Tensor, transforms: list) -> np.ndarray:  # type: ignore[type-arg]
    maps = []
    for transform in transforms:
        cam = HiResCAM(model, [model.layer4], return_tensor=True)(transform.augment_image(x))
        maps.append(transform.deaugment_mask(cam[:, None])[:, 0])
    mean = torch.stack(maps).mean(dim=0).numpy()
    low, high = mean.reshape(2, -1).min(1), mean.reshape(2, -1).max(1)
    return (mean - low[:, None, None]) / (high - low)[:, None, None]


def test_ttach_shaped_transforms() -> None:
    model, x = _model(), _x()
    transforms = [HorizontalFlip(), Multiply(0.9), Multiply(1.1)]
    out = HiResCAM(model, [model.layer4], tta_transforms=transforms)(x, aug_smooth=True)
    np.testing.assert_allclose(out, _reference_smoothing(model, x, transforms), atol=1e-5)
    with pytest.raises(TypeError, match="tta_transforms"):
        HiResCAM(model, [model.layer4], tta_transforms=[object()])


def test_real_ttach_compose() -> None:
    tta = pytest.importorskip("ttach")
    model, x = _model(), _x()
    compose = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
    out = HiResCAM(model, [model.layer4], tta_transforms=compose)(x, aug_smooth=True)
    np.testing.assert_allclose(out, _reference_smoothing(model, x, list(compose)), atol=1e-5)


def test_no_warning_or_log_on_plain_use(caplog: pytest.LogCaptureFixture) -> None:
    model, x = _model(), _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            GradCAM(model, [model.layer4])(x)
    assert not caplog.records
