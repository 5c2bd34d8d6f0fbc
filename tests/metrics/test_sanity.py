"""Model-parameter randomisation (Adebayo et al. 2018) on the shipped, trained demo CNN and on tiny
2-D / 1-D networks; Spearman and SSIM against scipy and scikit-image; the caller's model untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from helpers_models import TinyResNet
from medcam3d import GradCAM, HiResCAM
from medcam3d.core.targets import ClassifierOutputTarget
from medcam3d.errors import ConfigurationError, InputShapeError, LayerNotFoundError, ValueRangeError
from medcam3d.metrics.sanity import (
    SanityResult,
    model_randomisation_test,
    randomisation_groups,
    spearman_correlation,
    ssim,
)


# ----------------------------------------------------------------------------------- similarity
def test_spearman_matches_scipy_with_ties_and_signs() -> None:
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=(20, 32, 28)), 1)  # many ties, both signs
    b = np.round(0.6 * a + rng.normal(size=a.shape), 1)
    assert spearman_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    expected_abs = spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0]
    assert spearman_correlation(a, b, absolute=True) == pytest.approx(expected_abs, abs=1e-12)
    assert spearman_correlation(torch.from_numpy(a[0]), a[0]) == pytest.approx(1.0)
    assert spearman_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman_correlation(a, np.zeros_like(a)))


@pytest.mark.parametrize("shape", [(48, 40), (20, 32, 28), (64,)], ids=["2d", "3d", "1d"])
def test_ssim_matches_skimage(shape: tuple[int, ...]) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a = np.exp(-sum(g**2 for g in grid) * 3) + 0.1 * rng.random(shape)
    b = 0.7 * a + 0.3 * rng.random(shape)
    for data_range, sigma in ((1.0, 1.5), (2.0, 1.0)):
        expected = metrics.structural_similarity(
            a, b, data_range=data_range, gaussian_weights=True, sigma=sigma, use_sample_covariance=False
        )
        assert ssim(a, b, data_range=data_range, sigma=sigma) == pytest.approx(expected, abs=1e-10)
    joint = max(a.max(), b.max()) - min(a.min(), b.min())
    expected = metrics.structural_similarity(
        a, b, data_range=joint, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
    batch = ssim(np.stack([a, b]), np.stack([b, b]), spatial_dims=len(shape), data_range=1.0)
    assert isinstance(batch, np.ndarray) and batch.shape == (2,)
    assert batch[0] == pytest.approx(ssim(a, b, data_range=1.0)) and batch[1] == pytest.approx(1.0)
    with pytest.raises(InputShapeError, match="voxels along every spatial axis"):
        ssim(a[..., :5], b[..., :5])


# ----------------------------------------------------------------------------------- model state
def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [n for n, p in model.named_parameters() if p.grad is not None],
        "ids": [id(p) for p in model.parameters()],
    }


def assert_untouched(model: nn.Module, before: dict[str, object]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grads"] == before["grads"] == []
    assert after["ids"] == before["ids"]
    state_before, state_after = before["state"], after["state"]
    assert isinstance(state_before, dict) and isinstance(state_after, dict)
    assert state_before.keys() == state_after.keys()
    for key, value in state_before.items():
        other = state_after[key]
        assert value.dtype == other.dtype and torch.equal(value, other), key  # bit for bit


# ----------------------------------------------------------------------------------- the demo CNN
@pytest.fixture(scope="module")
def demo():
    """The shipped trained demo CNN and the demo volume with its planted lesion (seed 1)."""
    pytest.importorskip("SimpleITK")
    from medcam3d.demo.data import (
        candidate_centres,
        lesion_weight,
        load_template,
        plant_lesion,
        random_lesion,
    )
    from medcam3d.demo.model import LESION_CLASS, TARGET_LAYER, load_demo_model

    template = load_template()
    lesion = random_lesion(np.random.default_rng(1), candidate_centres(template))
    weight = lesion_weight(template.image.shape, template.spacing, lesion)
    volume = plant_lesion(template.image, weight, lesion.contrast)
    model = load_demo_model()
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        assert torch.softmax(model(x), dim=1)[0, LESION_CLASS] > 0.9  # the model sees the lesion
    # caller-side state that must survive: a train flag and a frozen parameter
    model.block1.train()
    model.score.bias.requires_grad_(False)
    return model, x, [ClassifierOutputTarget(LESION_CLASS)], TARGET_LAYER, weight >= 0.5, template.spacing


@pytest.fixture(scope="module")
def demo_cascade(demo):
    model, x, targets, layer, _, _ = demo
    before = snapshot(model)
    rng_before = torch.get_rng_state()
    result = model_randomisation_test(model, GradCAM, [layer], x, targets, mode="cascading", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random stream is untouched
    assert_untouched(model, before)
    return result


def test_demo_similarity_falls_once_top_layers_are_random(demo, demo_cascade: SanityResult) -> None:
    model, x, targets, layer, lesion, spacing = demo
    result = demo_cascade
    assert [s.name for s in result.steps] == ["score", "features", "block2", "block1"]
    assert result.steps[0].layers == ("score",)
    assert result.steps[-1].layers == (
        "score",
        "features.0",
        "features.1",
        "block2.0",
        "block2.1",
        "block1.0",
        "block1.1",
    )
    # the original map is the method's map of the unchanged model, and it localises the lesion
    with GradCAM(model, [layer]) as cam:
        expected = cam(x, targets)
    np.testing.assert_allclose(result.original_maps, expected, atol=1e-5)
    from medcam3d.metrics.localisation import pointing_game

    assert pointing_game(result.original_maps[0], lesion, spacing, tolerance_mm=8.0) == 1.0
    # recompute the similarities independently from the stored maps
    for step in result.steps:
        assert step.maps is not None
        reference = spearmanr(result.original_maps[0].ravel(), step.maps[0].ravel())[0]
        assert step.spearman == pytest.approx(reference, abs=1e-6)
    spearman = result.similarity("spearman_abs")
    assert np.all(np.abs(spearman) < 0.5), spearman  # clearly fallen at every depth
    assert result.verdict() == "passes" and result.passes
    rows = result.to_rows()
    assert [r["group"] for r in rows] == ["score", "features", "block2", "block1"]
    assert rows[0]["spearman"] == result.steps[0].spearman
    assert "passes" in result.table()


def test_demo_figure_is_written_atomically(demo_cascade: SanityResult, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = demo_cascade.save_figure(tmp_path / "sanity.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sanity.png"]  # no temporary file left behind
    figure = demo_cascade.plot()
    assert len(figure.axes) == 1 + 1 + len(demo_cascade.steps)  # curve + original + one map per step
    with pytest.raises(Exception, match="exists"):
        demo_cascade.save_figure(out, overwrite=False)


class FailAfter:
    """A reshape transform (identity) that raises once it has been called ``limit`` times."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise RuntimeError("planted failure in the second randomisation step")
        return tensor


def test_demo_model_untouched_when_a_step_raises(demo) -> None:
    model, x, targets, layer, _, _ = demo
    counter = FailAfter()
    GradCAM(copy.deepcopy(model), [layer], reshape_transform=counter).compute(x, targets)
    per_call = counter.calls
    before = snapshot(model)
    failing = FailAfter(limit=2 * per_call)  # the original map and step 0 succeed, step 1 raises
    with pytest.raises(RuntimeError, match="planted failure"):
        model_randomisation_test(
            model,
            GradCAM,
            [layer],
            x,
            targets,
            layers=["score", "features", "block2"],
            method_kwargs={"reshape_transform": failing},
        )
    assert failing.calls == 2 * per_call + 1
    assert_untouched(model, before)


# ----------------------------------------------------------------------------------- 2-D and 1-D
@pytest.fixture
def resnet2d() -> tuple[TinyResNet, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyResNet(ndim=2, num_classes=3).eval()
    x = torch.randn(2, 1, 40, 32)
    return model, x


def test_2d_cascading_and_independent(resnet2d) -> None:
    model, x = resnet2d
    before = snapshot(model)
    groups = randomisation_groups(model, x)
    assert [g for g, _ in groups] == [
        "fc",
        "layer4",
        "layer3",
        "layer2",
        "layer1",
        "stem",
    ]  # 'unused' never runs
    cascading = model_randomisation_test(model, HiResCAM, ["layer4"], x, None, mode="cascading", seed=3)
    independent = model_randomisation_test(
        model, HiResCAM, [model.layer4], x, None, mode="independent", seed=3
    )
    assert_untouched(model, before)
    assert [s.name for s in cascading.steps] == [g for g, _ in groups]
    assert independent.target_layers == ["layer4"]
    # step 0 randomises the same group with the same seed in both modes: identical maps
    assert cascading.steps[0].maps is not None and independent.steps[0].maps is not None
    np.testing.assert_array_equal(cascading.steps[0].maps, independent.steps[0].maps)
    assert independent.steps[2].layers == tuple(groups[2][1])  # only its own group
    assert set(cascading.steps[2].layers) == {m for _, ms in groups[:3] for m in ms}
    for result in (cascading, independent):
        for step in result.steps:
            assert step.maps is not None and step.maps.shape == (2, 40, 32)
            per_sample = [spearman_correlation(result.original_maps[i], step.maps[i]) for i in range(2)]
            per_sample = [0.0 if np.isnan(v) else v for v in per_sample]
            assert step.spearman == pytest.approx(np.mean(per_sample), abs=1e-6)
            assert step.ssim == pytest.approx(
                np.mean([ssim(result.original_maps[i], step.maps[i]) for i in range(2)]), abs=1e-6
            )
    # the same seed gives the same result, another seed another one
    first = model_randomisation_test(model, HiResCAM, ["layer4"], x, None, layers=["fc", "layer4"], seed=3)
    again = model_randomisation_test(model, HiResCAM, ["layer4"], x, None, layers=["fc", "layer4"], seed=3)
    other = model_randomisation_test(model, HiResCAM, ["layer4"], x, None, layers=["fc", "layer4"], seed=4)
    assert again.to_rows() == first.to_rows() != other.to_rows()
    assert first.to_rows()[0]["spearman"] == cascading.steps[0].spearman


def test_user_given_layers_and_1d(resnet2d) -> None:
    torch.manual_seed(0)
    model = TinyResNet(ndim=1, num_classes=2).eval()
    x = torch.randn(1, 1, 64)
    result = model_randomisation_test(
        model, GradCAM, ["layer3"], x, [ClassifierOutputTarget(1)], layers=["fc", ["layer4", "layer3[0]"]]
    )
    assert [s.name for s in result.steps] == ["fc", "layer4, layer3[0]"]
    assert "layer3.0.conv" in result.steps[1].layers and "layer4.1.bn" in result.steps[1].layers
    assert result.original_maps.shape == (1, 64)


class InputIntensity:
    """A "method" whose map is the input itself (an edge-detector-like map that ignores the model):
    the randomisation test must fail it."""

    def __init__(self, model: nn.Module, target_layers: list[str]) -> None:
        self.model = model
        self.layer_names = target_layers

    def compute(self, input_tensor: torch.Tensor, targets=None):
        class Result:
            maps = input_tensor[:, 0].abs()

        return Result()


def test_a_map_that_ignores_the_model_fails(resnet2d) -> None:
    model, x = resnet2d
    result = model_randomisation_test(model, InputIntensity, ["layer4"], x, None)
    assert np.allclose(result.similarity("spearman"), 1.0) and np.allclose(result.similarity("ssim"), 1.0)
    assert result.verdict() == "fails" and not result.passes


def test_bad_input(resnet2d) -> None:
    model, x = resnet2d
    with pytest.raises(ConfigurationError, match="mode"):
        model_randomisation_test(model, GradCAM, ["layer4"], x, mode="sideways")
    with pytest.raises(ConfigurationError, match="init"):
        model_randomisation_test(model, GradCAM, ["layer4"], x, init="zeros")
    with pytest.raises(ConfigurationError, match="class"):
        model_randomisation_test(model, GradCAM(model, ["layer4"]), ["layer4"], x)  # type: ignore[arg-type]
    with pytest.raises(LayerNotFoundError, match="layer5"):
        model_randomisation_test(model, GradCAM, ["layer4"], x, layers=["fc", "layer5"])
    with pytest.raises(LayerNotFoundError):
        model_randomisation_test(model, GradCAM, [nn.Conv2d(1, 1, 1)], x)
    with pytest.raises(InputShapeError, match="input_tensor"):
        model_randomisation_test(model, GradCAM, ["layer4"], x[0, 0])
    with pytest.raises(ValueRangeError, match="constant"):
        model_randomisation_test(model, InputIntensity, ["layer4"], torch.zeros(1, 1, 40, 32))
    result = model_randomisation_test(model, GradCAM, ["layer4"], x, layers=["fc"])
    with pytest.raises(ConfigurationError, match="metric"):
        result.verdict(metric="pearson")
    with pytest.raises(ConfigurationError, match="top_steps"):
        result.verdict(top_steps=2)
