"""cam_mult_image, perturbation_confidence and arcc against their formulas computed here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from medcam3d.core.targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from medcam3d.errors import InputShapeError, NonFiniteInputError, TargetError
from medcam3d.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from medcam3d.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from medcam3d.metrics.perturbation_confidence import AveragerAcrossThresholds, PerturbationConfidenceMetric
from medcam3d.metrics.road import NoisyLinearImputer, ROADCombined


class Quadratic(nn.Module):
    """Three logits ``sum(w_k * x) + sum(x**2)/10`` per sample (non-linear, known in closed form)."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(weight).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = (x.unsqueeze(1) * self.weight).flatten(2).sum(2)
        return linear + x.pow(2).flatten(1).sum(1, keepdim=True) / 10


def logits(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The numpy twin of :class:`Quadratic`: ``(N, C, *S)`` → ``(N, 3)``."""
    linear = (x[:, None] * weight[None]).reshape(x.shape[0], weight.shape[0], -1).sum(2)
    return linear + (x**2).reshape(x.shape[0], -1).sum(1, keepdims=True) / 10


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(params=[(6, 5, 4), (8, 7), (20,)], ids=["3d", "2d", "1d"])
def problem(request):
    shape = request.param
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=(3, 2, *shape)).astype(np.float32)
    weight = rng.normal(size=(3, 2, *shape)).astype(np.float32)
    cams = rng.random((3, *shape)).astype(np.float32)
    return x, weight, cams


def test_cam_mult_image_metrics_match_the_formulas(problem):
    x, weight, cams = problem
    model = Quadratic(weight)
    categories = [0, 2, 1]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in categories]
    before = softmax(logits(x.astype(np.float64), weight))[np.arange(3), categories]
    masked = x.astype(np.float64) * cams[:, None]
    after = softmax(logits(masked, weight))[np.arange(3), categories]
    change, visual = CamMultImageConfidenceChange()(
        torch.from_numpy(x), cams, targets, model, return_visualization=True
    )
    assert change.dtype == np.float32 and change.shape == (3,)
    np.testing.assert_allclose(change, after - before, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(visual.numpy(), masked, rtol=1e-6, atol=1e-6)
    only_after = CamMultImageConfidenceChange()(torch.from_numpy(x), cams, targets, model, return_diff=False)
    np.testing.assert_allclose(only_after, after, rtol=1e-4, atol=1e-6)
    drop = DropInConfidence()(torch.from_numpy(x), torch.from_numpy(cams), targets, model)
    np.testing.assert_allclose(drop, np.maximum(before - after, 0), rtol=1e-4, atol=1e-6)
    increase, _ = IncreaseInConfidence()(torch.from_numpy(x), cams, targets, model, return_visualization=True)
    np.testing.assert_array_equal(increase, np.float32(after > before))
    # targets=None: the predicted class's logit
    predicted = logits(x.astype(np.float64), weight).argmax(axis=1)
    raw = CamMultImageConfidenceChange()(torch.from_numpy(x), cams, None, model)
    expected = (
        logits(masked, weight)[np.arange(3), predicted]
        - logits(x.astype(np.float64), weight)[np.arange(3), predicted]
    )
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-3)
    sample = torch.from_numpy(x[0])
    np.testing.assert_allclose(
        multiply_tensor_with_cam(sample, cams[0]).numpy(), x[0] * cams[0][None], rtol=1e-6
    )


def test_a_custom_perturbation_and_the_threshold_averager(problem):
    x, weight, cams = problem
    model = Quadratic(weight)
    targets = [ClassifierOutputTarget(1)] * 3

    def keep_above(threshold: float):
        def perturb(sample: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
            assert sample.ndim == x.ndim - 1 and cam.shape == sample.shape[1:]
            return sample * (cam > threshold)

        return PerturbationConfidenceMetric(perturb)

    x64 = x.astype(np.float64)
    base = logits(x64, weight)[:, 1]
    expected = {t: logits(x64 * (cams[:, None] > t), weight)[:, 1] - base for t in (0.25, 0.5)}
    one = keep_above(0.5)(torch.from_numpy(x), cams, targets, model, batch_size=1)
    np.testing.assert_allclose(one, expected[0.5], rtol=1e-4, atol=1e-3)
    average = AveragerAcrossThresholds(keep_above, [0.25, 0.5])(torch.from_numpy(x), cams, targets, model)
    np.testing.assert_allclose(average, (expected[0.25] + expected[0.5]) / 2, rtol=1e-4, atol=1e-3)


def test_pearson_complexity_coherency_and_arcc_formulas():
    rng = np.random.default_rng(4)
    a = rng.random((4, 5, 6, 7)).astype(np.float32)
    b = a * 0.5 + rng.random((4, 5, 6, 7)).astype(np.float32)
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(4)]
    np.testing.assert_allclose(batch_pearson_coherency(a, b), expected, rtol=1e-5)
    np.testing.assert_allclose(batch_pearson_coherency(torch.from_numpy(a), b), expected, rtol=1e-5)
    np.testing.assert_allclose(Complexity()(a), np.abs(a).reshape(4, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(
        Complexity()(torch.from_numpy(-a)), np.abs(a).reshape(4, -1).mean(axis=1), rtol=1e-6
    )

    # Coherency with a "method" whose maps are computable here: the masked input's first channel
    shape = (6, 5, 4)
    x = rng.random((2, 1, *shape)).astype(np.float32)
    weight = rng.normal(size=(3, 1, *shape)).astype(np.float32)
    cams = rng.random((2, *shape)).astype(np.float32)
    model = Quadratic(weight)
    calls = []

    def base_method(input_tensor: torch.Tensor, targets=None) -> np.ndarray:
        calls.append(targets)
        return input_tensor[:, 0].numpy() ** 2

    targets = [ClassifierOutputTarget(0)] * 2
    coherency = Coherency()(torch.from_numpy(x), cams, targets, model, base_method)
    mixed = (x[:, 0] * cams) ** 2
    expected_coherency = np.array(
        [(np.corrcoef(mixed[i].ravel(), cams[i].ravel())[0, 1] + 1) / 2 for i in range(2)]
    )
    np.testing.assert_allclose(coherency, expected_coherency, rtol=1e-5)
    assert calls == [targets]

    imputer = NoisyLinearImputer(noise=0.0)
    arcc = ARCC(base_method, road_percentiles=[30, 70], imputer=imputer)(
        torch.from_numpy(x), cams, targets, model
    )
    road = ROADCombined([30, 70], imputer=imputer)(torch.from_numpy(x), cams, targets, model)
    road01 = np.clip(road.astype(np.float64) * 2, 0, 1)
    complexity = np.abs(cams).reshape(2, -1).mean(axis=1)
    eps = 1e-8
    expected_arcc = 3 / (1 / (expected_coherency + eps) + 1 / (1 - complexity + eps) + 1 / (road01 + eps))
    np.testing.assert_allclose(arcc, expected_arcc, rtol=1e-4)


def test_bad_input_gets_clear_errors():
    model = Quadratic(np.ones((3, 1, 4, 4), dtype=np.float32))
    x = torch.rand(2, 1, 4, 4)
    metric = CamMultImageConfidenceChange()
    with pytest.raises(InputShapeError, match="Add the batch axis"):
        metric(x, np.ones((4, 4)), None, model)
    with pytest.raises(InputShapeError, match="one map per sample"):
        metric(x, np.ones((3, 4, 4)), None, model)
    with pytest.raises(NonFiniteInputError):
        metric(x, np.full((2, 4, 4), np.inf), None, model)
    with pytest.raises(NonFiniteInputError):
        metric(x * np.nan, np.ones((2, 4, 4)), None, model)
    with pytest.raises(TargetError, match="2 samples"):
        metric(x, np.ones((2, 4, 4)), [ClassifierOutputTarget(0)], model)
    with pytest.raises(TargetError, match="out of range"):
        metric(x, np.ones((2, 4, 4)), [ClassifierOutputTarget(7)] * 2, model)
    with pytest.raises(InputShapeError, match="perturbation returned"):
        PerturbationConfidenceMetric(lambda s, c: s[:, :2])(x, np.ones((2, 4, 4)), None, model)
    with pytest.raises(InputShapeError, match="same shape"):
        batch_pearson_coherency(np.ones((2, 3, 3)), np.ones((2, 3, 4)))
    with pytest.raises(NonFiniteInputError):
        Complexity()(np.full((2, 3, 3), np.nan))
