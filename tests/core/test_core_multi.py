"""compute_multi: several target sets (e.g. classes) from one forward pass."""

from __future__ import annotations

import pytest
import torch
from test_core_state import assert_same_state, mixed_state_model, snapshot

import medcam3d
from helpers_models import TinyResNet, TinySegNet, spatial_shape
from medcam3d.errors import TargetError
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    "method", ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "LayerCAM", "EigenGradCAM", "ScoreCAM"]
)
def test_equals_separate_calls_with_one_forward(method, ndim):
    torch.manual_seed(0)
    model = TinySegNet(ndim=ndim).eval()
    x = torch.randn(2, 1, *spatial_shape(ndim))
    kwargs = {"progress": False} if method == "ScoreCAM" else {}
    cam = getattr(medcam3d, method)(model, ["down"], normalize=False, **kwargs)
    sets = [[SemanticSegmentationTarget(c)] * 2 for c in (0, 1, 2)]
    separate = [cam.compute(x, s) for s in sets]
    calls = count_forwards(model)
    together = cam.compute_multi(x, sets)
    # ScoreCAM runs its own perturbed passes per set; the tapped forward pass itself is shared
    if method != "ScoreCAM":
        assert calls[0] == 1
    assert len(together) == 3
    for one, many in zip(separate, together):
        torch.testing.assert_close(many.maps, one.maps, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(many.scores, one.scores)
        torch.testing.assert_close(many.output, one.output)
    assert not torch.allclose(together[1].maps, together[2].maps)


def test_default_targets_and_normalisation_in_a_set():
    torch.manual_seed(0)
    model = TinyResNet(ndim=3).eval()
    x = torch.randn(2, 1, 12, 16, 14)
    cam = medcam3d.GradCAM(model, ["layer4"])
    none_set, explicit = cam.compute_multi(x, [None, [ClassifierOutputTarget(0)] * 2])
    torch.testing.assert_close(none_set.maps, cam.compute(x).maps)
    torch.testing.assert_close(explicit.maps, cam.compute(x, [ClassifierOutputTarget(0)] * 2).maps)
    assert float(none_set.maps.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["FullGrad", "ShapleyCAM", "GuidedGradCAM"])
def test_methods_with_their_own_gradient_pass_equal_one_call_per_set(method):
    torch.manual_seed(0)
    model = TinyResNet(ndim=2).eval()
    x = torch.randn(2, 1, 20, 16)
    cam = getattr(medcam3d, method)(model, ["layer4"])
    sets = [[ClassifierOutputTarget(c)] * 2 for c in (0, 2)]
    together = cam.compute_multi(x, sets)
    for s, result in zip(sets, together):
        torch.testing.assert_close(result.maps, cam.compute(x, s).maps, atol=1e-6, rtol=1e-5)


def test_state_restored_and_no_graph_left():
    model = mixed_state_model(3)
    before = snapshot(model)
    cam = medcam3d.GradCAM(model, [model.layer4])
    results = cam.compute_multi(
        torch.randn(1, 1, 12, 16, 14), [[ClassifierOutputTarget(c)] for c in range(3)]
    )
    assert all(r.maps.grad_fn is None and r.output.grad_fn is None for r in results)
    assert_same_state(model, before)


def test_errors():
    model = TinyResNet(ndim=2).eval()
    cam = medcam3d.GradCAM(model, ["layer4"])
    with pytest.raises(TargetError, match="empty"):
        cam.compute_multi(torch.randn(1, 1, 16, 16), [])
    with pytest.raises(TargetError, match="one target per"):
        cam.compute_multi(
            torch.randn(2, 1, 16, 16), [[ClassifierOutputTarget(0)] * 2, [ClassifierOutputTarget(1)]]
        )
