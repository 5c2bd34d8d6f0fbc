"""Every gradient method equals its paper's formula, computed independently here.

The reference takes activations and gradients with plain autograd on the model split at the
target layer (no hooks, no medcam3d code), applies the formula, ReLU, linear resizing with
``align_corners=False`` and per-sample min-max scaling. Batch 2, non-cubic inputs, a target
layer that downsamples ×4 (so resizing is exercised), in 2D and 3D.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medcam3d
from helpers_models import spatial_shape
from medcam3d.utils.model_targets import ClassifierOutputTarget

MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def reference_parts(model, x, classes):
    """Activations A of layer4 and G = d(score)/dA, computed without medcam3d."""
    a = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x))))).detach().requires_grad_(True)
    logits = model.fc(a.mean(dim=tuple(range(2, a.ndim))))
    score = sum(logits[i, c] for i, c in enumerate(classes))
    (g,) = torch.autograd.grad(score, a)
    return a.detach().double(), g.double()


def finish(cam, size):
    cam = torch.relu(cam)
    cam = F.interpolate(cam[:, None], size=size, mode=MODES[len(size)], align_corners=False)[:, 0]
    flat = cam.reshape(cam.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    flat = flat / torch.where(high > 0, high, torch.ones_like(high))  # an all-zero map stays zero
    return flat.reshape(cam.shape).float().numpy()


def axes(t):
    return tuple(range(2, t.ndim))


def formula_gradcam(a, g):
    w = g.mean(dim=axes(g), keepdim=True)
    return (w * a).sum(1)


def formula_hirescam(a, g):
    return (g * a).sum(1)


def formula_elementwise(a, g):
    return torch.relu(g * a).sum(1)


def formula_gradcampp(a, g):
    sum_a = a.sum(dim=axes(a), keepdim=True)
    alpha = g**2 / (2 * g**2 + sum_a * g**3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * torch.relu(g)).sum(dim=axes(g), keepdim=True)
    return (w * a).sum(1)


def formula_xgradcam(a, g):
    w = (g * a).sum(dim=axes(a), keepdim=True) / (a.sum(dim=axes(a), keepdim=True) + 1e-7)
    return (w * a).sum(1)


def formula_layercam(a, g):
    return (torch.relu(g) * a).sum(1)


def formula_segxres(pool: int, mode: str):
    def f(a, g):
        n, k = g.shape[:2]
        s = g.shape[2:]
        # hand block pooling via explicit loops over blocks (independent of the library's reshape trick)
        pooled = torch.zeros_like(g)
        ranges = [range(0, size, pool) for size in s]
        import itertools

        for starts in itertools.product(*ranges):
            index = (slice(None), slice(None), *(slice(st, st + pool) for st in starts))
            block = g[index]
            value = (
                block.amax(dim=axes(block), keepdim=True)
                if mode == "max"
                else block.mean(dim=axes(block), keepdim=True)
            )
            pooled[index] = value.expand_as(block)
        return (pooled * a).sum(1)

    return f


CASES = {
    "GradCAM": (medcam3d.GradCAM, {}, formula_gradcam),
    "HiResCAM": (medcam3d.HiResCAM, {}, formula_hirescam),
    "GradCAMElementWise": (medcam3d.GradCAMElementWise, {}, formula_elementwise),
    "GradCAMPlusPlus": (medcam3d.GradCAMPlusPlus, {}, formula_gradcampp),
    "XGradCAM": (medcam3d.XGradCAM, {}, formula_xgradcam),
    "LayerCAM": (medcam3d.LayerCAM, {}, formula_layercam),
    "SegXResCAM-max2": (medcam3d.SegXResCAM, {"pool_size": 2, "pool_mode": "max"}, formula_segxres(2, "max")),
    "SegXResCAM-mean3": (
        medcam3d.SegXResCAM,
        {"pool_size": 3, "pool_mode": "mean"},
        formula_segxres(3, "mean"),
    ),
    "SegXResCAM-none": (medcam3d.SegXResCAM, {}, formula_hirescam),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_equals_formula(name, classifier, ndim):
    cls, kwargs, formula = CASES[name]
    torch.manual_seed(1)
    size = spatial_shape(ndim)
    x = torch.randn(2, 1, *size)
    classes = [1, 0]
    a, g = reference_parts(classifier, x, classes)
    expected = finish(formula(a, g), size)
    assert expected.reshape(2, -1).max(axis=1).max() == pytest.approx(1.0)  # a non-trivial case
    with cls(model=classifier, target_layers=[classifier.layer4], **kwargs) as cam:
        got = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    assert got.shape == (2, *size) and got.dtype == np.float32
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 pipeline vs float64 reference
    # the two samples got different explanations (per-sample gradients and normalisation)
    assert not np.allclose(got[0], got[1])


def test_raw_maps_are_not_normalised_and_scale_with_the_score(classifier, ndim):
    torch.manual_seed(2)
    x = torch.randn(2, 1, *spatial_shape(ndim))
    a, g = reference_parts(classifier, x, [2, 2])
    raw = torch.relu(formula_gradcam(a, g))
    expected = F.interpolate(raw[:, None], size=spatial_shape(ndim), mode=MODES[ndim], align_corners=False)[
        :, 0
    ]
    cam = medcam3d.GradCAM(classifier, [classifier.layer4], normalize=False)
    got = cam(x, [ClassifierOutputTarget(2)] * 2)
    np.testing.assert_allclose(got, expected.float().numpy(), rtol=1e-4, atol=1e-6)


def test_several_layers_are_the_mean_of_per_layer_normalised_maps(classifier, ndim):
    torch.manual_seed(3)
    x = torch.randn(2, 1, *spatial_shape(ndim))
    targets = [ClassifierOutputTarget(1)] * 2
    one = medcam3d.GradCAM(classifier, [classifier.layer4])(x, targets)
    two = medcam3d.GradCAM(classifier, [classifier.layer3])(x, targets)
    both = medcam3d.GradCAM(classifier, [classifier.layer4, classifier.layer3])(x, targets)
    mean = (one + two) / 2
    flat = mean.reshape(2, -1)
    flat = (flat - flat.min(1, keepdims=True)) / (flat.max(1, keepdims=True) - flat.min(1, keepdims=True))
    np.testing.assert_allclose(both, flat.reshape(both.shape), atol=1e-5)


def test_random_cam_is_a_seeded_baseline(classifier, ndim):
    x = torch.randn(2, 1, *spatial_shape(ndim))
    first = medcam3d.RandomCAM(classifier, [classifier.layer4], seed=7)(x, [ClassifierOutputTarget(0)] * 2)
    again = medcam3d.RandomCAM(classifier, [classifier.layer4], seed=7)(x, [ClassifierOutputTarget(0)] * 2)
    other = medcam3d.RandomCAM(classifier, [classifier.layer4], seed=8)(x, [ClassifierOutputTarget(0)] * 2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_one_dimensional_signals_work_too():
    from helpers_models import TinyResNet

    torch.manual_seed(0)
    model = TinyResNet(ndim=1).eval()
    x = torch.randn(2, 1, 50)
    maps = medcam3d.GradCAM(model, ["layer4"])(x, [ClassifierOutputTarget(0)] * 2)
    assert maps.shape == (2, 50)
