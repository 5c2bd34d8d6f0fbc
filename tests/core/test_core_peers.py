"""Agreement with independent implementations: Captum's LayerGradCam and MONAI's GradCAM/GradCAMpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medcam3d
from helpers_models import BlobFollower, spatial_shape
from medcam3d.utils.model_targets import ClassifierOutputTarget

captum_attr = pytest.importorskip("captum.attr")
monai_cam = pytest.importorskip("monai.visualize.class_activation_maps")

MODES = {2: "bilinear", 3: "trilinear"}


def test_gradcam_matches_captum_layergradcam(classifier, ndim):
    torch.manual_seed(5)
    x = torch.randn(2, 1, *spatial_shape(ndim))
    layer_gc = captum_attr.LayerGradCam(classifier, classifier.layer4)
    attribution = layer_gc.attribute(x, target=[1, 2], relu_attributions=True)
    expected = captum_attr.LayerAttribution.interpolate(
        attribution, spatial_shape(ndim), interpolate_mode=MODES[ndim]
    )
    got = medcam3d.GradCAM(classifier, [classifier.layer4], normalize=False)(
        x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    )
    np.testing.assert_allclose(got, expected[:, 0].detach().numpy(), atol=1e-5, rtol=1e-4)
    assert float(np.abs(got).max()) > 0


def test_gradcam_matches_monai(classifier, ndim):
    torch.manual_seed(6)
    x = torch.randn(2, 1, *spatial_shape(ndim))
    monai = monai_cam.GradCAM(nn_module=classifier, target_layers="layer4", postprocessing=lambda t: t)
    expected = monai(x, class_idx=1)[:, 0].detach().numpy()
    got = medcam3d.GradCAM(classifier, ["layer4"], normalize=False)(x, [ClassifierOutputTarget(1)] * 2)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def _minmax(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    flat = flat - flat.min(axis=1, keepdims=True)
    return (flat / flat.max(axis=1, keepdims=True)).reshape(a.shape)


def test_gradcampp_matches_monai_variant(ndim):
    # MONAI's GradCAMpp sums A·G³ over locations in the denominator and scales G by exp(score);
    # variant="monai" reproduces the former, normalisation removes the latter (a positive factor).
    torch.manual_seed(0)
    model = BlobFollower(ndim).eval()
    # small inputs keep MONAI's exp(score) finite (it overflows to NaN for large scores)
    x = torch.rand(2, 1, *spatial_shape(ndim)) * 0.002
    monai = monai_cam.GradCAMpp(nn_module=model, target_layers="features.1", postprocessing=lambda t: t)
    # MONAI's GradCAMpp only broadcasts exp(score) for a batch of one: run it per sample.
    per_sample = [monai(x[i : i + 1], class_idx=1)[:, 0].detach().numpy() for i in range(2)]
    expected = _minmax(np.concatenate(per_sample))
    got = medcam3d.GradCAMPlusPlus(model, ["features.1"], variant="monai")(x, [ClassifierOutputTarget(1)] * 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_gradcampp_paper_and_monai_variants_differ(ndim):
    torch.manual_seed(0)
    model = BlobFollower(ndim).eval()
    x = torch.rand(2, 1, *spatial_shape(ndim))
    targets = [ClassifierOutputTarget(1)] * 2
    paper = medcam3d.GradCAMPlusPlus(model, ["features.1"], normalize=False)(x, targets)
    monai = medcam3d.GradCAMPlusPlus(model, ["features.1"], variant="monai", normalize=False)(x, targets)
    assert paper.shape == monai.shape and np.all(np.isfinite(paper))
    assert not np.allclose(paper, monai)  # the denominators are not the same formula
