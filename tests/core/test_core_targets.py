"""Targets: N-D, class-specific, tuple/dict outputs, default targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import medcam3d
from helpers_models import TinySegNet, spatial_shape
from medcam3d.errors import TargetError
from medcam3d.utils import model_targets as mt


def test_classifier_targets_on_a_logit_vector():
    logits = torch.tensor([1.0, 3.0, -2.0])
    assert mt.ClassifierOutputTarget(1)(logits) == 3.0
    probs = torch.softmax(logits, 0)
    assert torch.isclose(mt.ClassifierOutputSoftmaxTarget(2)(logits), probs[2])
    rest = mt.ClassifierOutputReST(0)(logits)
    assert torch.isclose(rest, logits[0] + torch.log(probs[0]))  # logit - cross-entropy
    assert mt.BinaryClassifierOutputTarget(0)(torch.tensor([2.0])) == -2.0
    assert torch.isclose(mt.SoftmaxOutputTarget()(logits).sum(), torch.tensor(1.0))
    assert torch.equal(mt.RawScoresOutputTarget()(logits), logits)
    with pytest.raises(TargetError):
        mt.BinaryClassifierOutputTarget(2)


def test_semantic_segmentation_target_counts_only_its_channel(ndim):
    shape = spatial_shape(ndim)
    out = torch.randn(3, *shape, requires_grad=True)
    mask = np.zeros(shape, dtype=bool)
    mask[(slice(2, 6),) * ndim] = True
    score = mt.SemanticSegmentationTarget(2, mask)(out)
    (grad,) = torch.autograd.grad(score, out)
    assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[1]) == 0
    assert torch.equal(grad[2] != 0, torch.from_numpy(mask))
    assert torch.isclose(score, out[2][torch.from_numpy(mask)].sum())


def test_semantic_segmentation_target_defaults_to_the_predicted_region():
    out = torch.zeros(2, 4, 5)
    out[1, :2] = 5.0  # class 1 predicted in the first two rows
    score = mt.SemanticSegmentationTarget(1)(out)
    assert score == 5.0 * 10


def test_mask_shape_must_match():
    with pytest.raises(TargetError, match="Resample the mask"):
        mt.SemanticSegmentationTarget(1, np.ones((4, 4)))(torch.zeros(2, 4, 5))


def test_region_target_box_and_mask():
    out = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    box = [(1, 3), (0, 2), (2, 6)]
    assert mt.RegionTarget(1, box=box)(out) == out[1, 1:3, 0:2, 2:6].sum()
    assert mt.RegionTarget(1, box=box, reduction="mean")(out) == out[1, 1:3, 0:2, 2:6].mean()
    roi = torch.zeros(4, 5, 6)
    roi[0, 0, 0] = 1
    assert mt.RegionTarget(0, mask=roi)(out) == out[0, 0, 0, 0]
    with pytest.raises(TargetError, match="does not fit"):
        mt.RegionTarget(0, box=[(0, 9), (0, 1), (0, 1)])(out)
    with pytest.raises(TargetError, match="one pair per axis"):
        mt.RegionTarget(0, box=[(0, 1)])(out)


def test_finer_weighted_target():
    logits = torch.tensor([2.0, 1.0, 0.5])
    p = torch.softmax(logits, 0)
    expected = (p[1] * (2.0 - 0.6 * 1.0) + p[2] * (2.0 - 0.6 * 0.5)) / (p[1] + p[2])
    assert torch.isclose(mt.FinerWeightedTarget(0, [1, 2], 0.6)(logits), expected)


def test_tuple_output_deep_supervision_picks_an_element(ndim):
    torch.manual_seed(0)
    model = TinySegNet(ndim=ndim).eval()
    x = torch.randn(2, 1, *spatial_shape(ndim))
    full = medcam3d.GradCAM(model, ["down"]).compute(x, [mt.SemanticSegmentationTarget(1)] * 2)
    assert full.output.shape == (2, 3, *spatial_shape(ndim))  # element 0 by default
    aux = medcam3d.GradCAM(model, ["down"], output_index=1).compute(x, [mt.ClassifierOutputTarget(1)] * 2)
    assert aux.output.shape[2:] == tuple(s // 2 for s in spatial_shape(ndim))
    assert full.maps.shape == aux.maps.shape == (2, *spatial_shape(ndim))


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.conv(x))
        return {"features": f, "logits": self.fc(f.mean((2, 3)))}


def test_dict_output_by_key():
    model = DictModel()
    x = torch.randn(2, 1, 12, 10)
    res = medcam3d.GradCAM(model, ["conv"], output_index="logits").compute(x)
    assert res.output.shape == (2, 3)
    assert torch.equal(res.scores, res.output.max(dim=1).values)  # targets=None → top class per sample


def test_default_targets_pick_the_argmax_class(classifier, ndim):
    x = torch.randn(2, 1, *spatial_shape(ndim))
    res = medcam3d.GradCAM(classifier, ["layer4"]).compute(x, None)
    top = res.output.argmax(1)
    explicit = medcam3d.GradCAM(classifier, ["layer4"]).compute(
        x, [mt.ClassifierOutputTarget(int(c)) for c in top]
    )
    torch.testing.assert_close(res.maps, explicit.maps)
