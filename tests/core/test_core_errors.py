"""Bad input raises a clear medcam3d.errors exception that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import medcam3d
from helpers_models import TinyResNet, TinySegNet
from medcam3d import errors
from medcam3d.utils.model_targets import ClassifierOutputTarget


@pytest.fixture
def model() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(ndim=3).eval()


def x3d(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 1, 12, 16, 14)


def test_wrong_rank(model):
    with pytest.raises(errors.InputShapeError, match=r"x\[None, None\]"):
        medcam3d.GradCAM(model, [model.layer4])(torch.randn(12, 16, 14))
    with pytest.raises(errors.InputShapeError, match="1 to 3 spatial axes"):
        medcam3d.GradCAM(model, [model.layer4])(torch.randn(1, 1, 2, 12, 16, 14))
    with pytest.raises(errors.InputShapeError, match=r"must be \(N, C, D, H, W\)"):
        medcam3d.GradCAM(model, [model.layer4])(torch.randn(1, 16, 14))


def test_not_a_tensor_and_not_float(model):
    with pytest.raises(errors.InputShapeError, match="torch.as_tensor"):
        medcam3d.GradCAM(model, [model.layer4])(x3d().numpy())
    with pytest.raises(errors.InputShapeError, match=r"x.float\(\)"):
        medcam3d.GradCAM(model, [model.layer4])(torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64))


def test_target_list_of_wrong_length(model):
    with pytest.raises(errors.TargetError, match="one target per"):
        medcam3d.GradCAM(model, [model.layer4])(x3d(2), [ClassifierOutputTarget(0)])
    with pytest.raises(errors.TargetError, match=r"\[target\] \* 2"):
        medcam3d.GradCAM(model, [model.layer4])(x3d(2), ClassifierOutputTarget(0))


def test_class_index_out_of_range(model):
    with pytest.raises(errors.TargetError, match="out of range.*3 classes"):
        medcam3d.GradCAM(model, [model.layer4])(x3d(1), [ClassifierOutputTarget(7)])


def test_nan_and_inf_input(model):
    x = x3d(1)
    x[0, 0, 3, 3, 3] = float("nan")
    with pytest.raises(errors.NonFiniteInputError, match="nan_to_num"):
        medcam3d.GradCAM(model, [model.layer4])(x)
    x[0, 0, 3, 3, 3] = float("inf")
    with pytest.raises(errors.NonFiniteInputError):
        medcam3d.GradCAM(model, [model.layer4])(x)


def test_unknown_layer_name_lists_close_matches(model):
    with pytest.raises(errors.LayerNotFoundError, match=r"'layer4\.0\.conv'") as info:
        medcam3d.GradCAM(model, ["layer4.0.convv"])
    assert "find_layers" in str(info.value)
    with pytest.raises(errors.LayerNotFoundError, match="layer4"):
        medcam3d.GradCAM(model, ["layr4"])


def test_module_from_another_model(model):
    with pytest.raises(errors.LayerNotFoundError, match="not a sub-module"):
        medcam3d.GradCAM(model, [nn.Conv3d(1, 1, 1)])


def test_layer_that_never_runs(model):
    with pytest.raises(errors.LayerNotReachedError, match="unused"):
        medcam3d.GradCAM(model, ["unused"])(x3d())


class TupleLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class ModelWithTupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.pair = TupleLayer()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.pair(self.conv(x))
        return self.fc(a.mean((2, 3, 4)))


def test_layer_whose_output_is_not_a_tensor():
    model = ModelWithTupleLayer()
    with pytest.raises(errors.LayerOutputError, match="returns a tuple, not a tensor"):
        medcam3d.GradCAM(model, ["pair"])(x3d())


def test_layer_without_spatial_axes(model):
    with pytest.raises(errors.LayerOutputError, match="before global pooling"):
        medcam3d.GradCAM(model, ["fc"])(x3d())


def test_segmentation_output_without_targets():
    model = TinySegNet(ndim=3).eval()
    with pytest.raises(errors.TargetError, match="SemanticSegmentationTarget"):
        medcam3d.GradCAM(model, ["down"])(x3d())


def test_output_index_out_of_range():
    model = TinySegNet(ndim=3).eval()
    with pytest.raises(errors.ModelOutputError, match="from 0 to 1"):
        medcam3d.GradCAM(model, ["down"], output_index=5)(x3d(), [ClassifierOutputTarget(1)] * 2)


def test_errors_are_value_or_runtime_errors():
    for cls in (
        errors.InputShapeError,
        errors.TargetError,
        errors.LayerNotFoundError,
        errors.NonFiniteInputError,
    ):
        assert issubclass(cls, ValueError) and issubclass(cls, errors.MedCAMError)
    assert issubclass(errors.LayerNotReachedError, RuntimeError)


def test_use_cuda_is_accepted_with_a_warning(model):
    with pytest.warns(UserWarning, match="device of the model"):
        cam = medcam3d.GradCAM(model=model, target_layers=[model.layer4], use_cuda=True)
    assert cam(x3d(1)).shape == (1, 12, 16, 14)
