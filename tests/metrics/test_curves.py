"""Deletion/insertion curves against curves computed by hand (numpy) for models whose score is
known in closed form: a linear classifier and a segmenter whose class-1 channel is its input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndimage
import torch
import torch.nn as nn

from medcam3d.core.targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)
from medcam3d.errors import ConfigurationError, InputShapeError, NonFiniteInputError, TargetError
from medcam3d.metrics._blur import gaussian_blur
from medcam3d.metrics.curves import deletion_curve, deletion_insertion, insertion_curve, voxel_ranking


class Linear(nn.Module):
    """Two logits: ``sum(w0 * x)`` and ``sum(w1 * x)``; counts the rows it scores."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(weight).float())
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return (x.unsqueeze(1) * self.weight).flatten(2).sum(2)


class Identity(nn.Module):
    """A 'segmenter' with two classes: channel 0 is ``-x``, channel 1 is ``x`` (one input channel)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([-x, x], dim=1), x[:, :, ::2]  # a tuple, as with deep supervision


def hand_curve(contributions: np.ndarray, order: np.ndarray, steps: int, insertion: bool) -> np.ndarray:
    """Score after changing the first floor(k V / T) voxels of ``order`` (linear model, zero baseline)."""
    voxels = contributions.size
    scores = []
    for k in range(steps + 1):
        changed = order[: (k * voxels) // steps]
        scores.append(
            contributions[changed].sum() if insertion else contributions.sum() - contributions[changed].sum()
        )
    return np.asarray(scores)


def hand_order(cam: np.ndarray, most_relevant_first: bool) -> np.ndarray:
    """Decreasing (or increasing) value, ties by increasing flat index."""
    flat = cam.ravel()
    key = -flat if most_relevant_first else flat
    return np.lexsort((np.arange(flat.size), key))


@pytest.mark.parametrize("shape", [(4, 5, 6), (7, 9), (23,)], ids=["3d", "2d", "1d"])
@pytest.mark.parametrize("order", ["most_relevant_first", "least_relevant_first"])
def test_linear_model_curves_and_auc_match_the_hand_computation(shape, order):
    rng = np.random.default_rng(0)
    x = rng.random((3, 2, *shape)).astype(np.float32)
    weight = rng.normal(size=(2, 2, *shape)).astype(np.float32)
    cams = rng.random((3, *shape)).astype(np.float32)
    cams[0].ravel()[:7] = 0.5  # ties
    model = Linear(weight)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(0), ClassifierOutputTarget(1)]
    steps = 9
    deletion, insertion = deletion_insertion(
        model, torch.from_numpy(x), cams, targets, steps=steps, order=order, progress=False
    )
    voxels = int(np.prod(shape))
    fractions = np.array([(k * voxels) // steps for k in range(steps + 1)]) / voxels
    np.testing.assert_allclose(deletion.fractions, fractions)
    for i, category in enumerate([1, 0, 1]):
        contributions = (x[i] * weight[category]).sum(axis=0).ravel().astype(np.float64)
        ranking = hand_order(cams[i], order == "most_relevant_first")
        expected_deletion = hand_curve(contributions, ranking, steps, insertion=False)
        expected_insertion = hand_curve(contributions, ranking, steps, insertion=True)
        np.testing.assert_allclose(deletion.scores[i], expected_deletion, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(insertion.scores[i], expected_insertion, rtol=1e-5, atol=1e-4)
        area = sum(
            (fractions[k + 1] - fractions[k]) * (expected_deletion[k] + expected_deletion[k + 1]) / 2
            for k in range(steps)
        )
        assert deletion.auc[i] == pytest.approx(area, rel=1e-5, abs=1e-4)
    assert deletion.kind == "deletion" and insertion.kind == "insertion" and deletion.order == order
    # 2T forward rows per sample for both curves (the input and the all-zero state are shared)
    model.rows = 0
    deletion_insertion(model, torch.from_numpy(x), cams, targets, steps=steps, order=order, progress=False)
    assert model.rows == 3 * 2 * steps
    # the single curves give the same numbers
    alone = deletion_curve(model, torch.from_numpy(x), cams, targets, steps, order=order, progress=False)
    np.testing.assert_array_equal(alone.scores, deletion.scores)
    inserted = insertion_curve(
        model, torch.from_numpy(x), cams, targets, steps, baseline="zero", order=order, progress=False
    )
    np.testing.assert_array_equal(inserted.scores, insertion.scores)


def test_baselines_mean_blur_and_tensor():
    rng = np.random.default_rng(1)
    shape = (6, 8, 7)
    x = rng.random((2, 1, *shape)).astype(np.float32)
    weight = rng.random((1, 1, *shape)).astype(np.float32)
    cams = rng.random((2, *shape)).astype(np.float32)
    model = Linear(weight)
    steps = 5
    mean = x.mean(axis=(2, 3, 4), keepdims=True) * np.ones_like(x)
    blurred = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 0, 1.5, 1.5, 1.5), mode="nearest")
    given = rng.random((1, *shape)).astype(np.float32)  # (C, *S): broadcast over the batch
    for baseline, expected_base in [
        ("mean", mean),
        ("blur", blurred),
        (torch.from_numpy(given), np.broadcast_to(given, x.shape)),
    ]:
        deletion, insertion = deletion_insertion(
            model, torch.from_numpy(x), cams, None, steps, baseline, blur_sigma=1.5, progress=False
        )
        for i in range(2):
            ranking = hand_order(cams[i], True)
            change = ((expected_base[i, 0] - x[i, 0]) * weight[0, 0]).ravel()
            original = float((x[i, 0] * weight[0, 0]).sum())
            expected_curve = []
            for k in range(steps + 1):
                changed = ranking[: (k * change.size) // steps]
                expected_curve.append(original + change[changed].sum())
            # one class: softmax probability of the predicted class is 1 at every step
            np.testing.assert_allclose(deletion.scores[i], 1.0)
            logits = deletion_curve(
                model,
                torch.from_numpy(x),
                cams,
                [ClassifierOutputTarget(0)] * 2,
                steps,
                baseline,
                blur_sigma=1.5,
                progress=False,
            )
            np.testing.assert_allclose(logits.scores[i], expected_curve, rtol=1e-5, atol=1e-4)
        assert insertion.scores.shape == (2, steps + 1)


def test_gaussian_blur_equals_scipy_in_every_rank():
    rng = np.random.default_rng(2)
    for shape, sigma in [((9, 10, 11), 1.2), ((12, 5), (2.0, 0.7)), ((30,), 3.0), ((4, 4, 4), 5.0)]:
        x = rng.random((2, 3, *shape))
        sigmas = sigma if isinstance(sigma, tuple) else (sigma,) * len(shape)
        expected = ndimage.gaussian_filter(x, sigma=(0, 0, *sigmas), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(gaussian_blur(torch.from_numpy(x), sigma).numpy(), expected, atol=1e-12)


def test_softmax_probability_and_segmentation_targets():
    rng = np.random.default_rng(3)
    shape = (5, 6, 4)
    x = rng.random((2, 1, *shape)).astype(np.float32)
    cams = rng.random((2, *shape)).astype(np.float32)
    mask = rng.random(shape) > 0.5
    # segmentation: the class-1 channel summed over the mask = the input summed inside the mask
    targets = [SemanticSegmentationTarget(1, mask), SemanticSegmentationTarget(1, mask)]
    deletion = deletion_curve(Identity(), torch.from_numpy(x), cams, targets, steps=4, progress=False)
    for i in range(2):
        contributions = (x[i, 0] * mask).ravel().astype(np.float64)
        expected = hand_curve(contributions, hand_order(cams[i], True), 4, insertion=False)
        np.testing.assert_allclose(deletion.scores[i], expected, rtol=1e-5, atol=1e-5)
    # probability of class 1 of a linear classifier, computed with numpy's softmax
    weight = rng.normal(size=(2, 1, *shape)).astype(np.float32)
    curve = insertion_curve(
        Linear(weight), torch.from_numpy(x), cams, ClassifierOutputSoftmaxTarget(1), 3, "zero", progress=False
    )
    for i in range(2):
        ranking = hand_order(cams[i], True)
        logits = np.stack(
            [
                hand_curve((x[i, 0] * weight[c, 0]).ravel().astype(np.float64), ranking, 3, True)
                for c in (0, 1)
            ]
        )
        probability = np.exp(logits[1]) / np.exp(logits).sum(axis=0)
        np.testing.assert_allclose(curve.scores[i], probability, rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_the_result_and_the_model_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 8, 8, 8)
    cams = torch.rand(2, 8, 8, 8)
    one = deletion_insertion(model, x, cams, None, steps=6, batch_size=1, progress=False)
    many = deletion_insertion(model, x, cams, None, steps=6, batch_size=64, progress=False)
    small_budget = deletion_insertion(
        model, x, cams, None, steps=6, batch_memory_bytes=50_000, progress=False
    )
    for a, b, c in zip(one, many, small_budget):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.scores, c.scores, rtol=1e-5, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert model[0].weight.requires_grad is False and model[0].bias.requires_grad is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched (eval mode)


def test_ties_are_broken_by_the_flat_index():
    cams = torch.tensor([[[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]]])  # (1, 2, 3)
    ranks = voxel_ranking(cams, "most_relevant_first")[0].tolist()
    # order: 1.0 at flat 1, 1.0 at 3, then 0.5 at 0, 2, 5, then 0.0 at 4
    assert ranks == [2, 0, 3, 1, 5, 4]
    assert voxel_ranking(cams, "least_relevant_first")[0].tolist() == [1, 4, 2, 5, 0, 3]


def test_bad_input_gets_clear_errors():
    model = Linear(np.ones((2, 1, 4, 4), dtype=np.float32))
    x = torch.rand(2, 1, 4, 4)
    cams = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(InputShapeError, match="Resize the maps"):
        deletion_curve(model, x, cams[:, :3], progress=False)
    with pytest.raises(InputShapeError, match="one map per sample"):
        deletion_curve(model, x, cams[:1], progress=False)
    with pytest.raises(InputShapeError, match="channel axis"):
        deletion_curve(model, x, cams[:, None], progress=False)
    bad = cams.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError):
        deletion_curve(model, x, bad, progress=False)
    with pytest.raises(ConfigurationError, match="steps"):
        deletion_curve(model, x, cams, steps=0, progress=False)
    with pytest.raises(ConfigurationError, match="Unknown baseline"):
        deletion_curve(model, x, cams, baseline="noise", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="order"):
        deletion_curve(model, x, cams, order="random", progress=False)  # type: ignore[arg-type]
    with pytest.raises(InputShapeError, match="broadcast"):
        deletion_curve(model, x, cams, baseline=torch.zeros(3, 4, 4), progress=False)
    with pytest.raises(TargetError, match="one target per sample"):
        deletion_curve(model, x, cams, [ClassifierOutputTarget(0)] * 3, progress=False)
    with pytest.raises(TargetError, match="classifier output"):
        deletion_curve(Identity(), x, cams, None, progress=False)
    with pytest.raises(InputShapeError, match="spatial axes"):
        deletion_curve(model, torch.rand(2, 4), cams, progress=False)
    with pytest.raises(ConfigurationError, match="batch_memory_bytes"):
        deletion_curve(model, x, cams, batch_memory_bytes=0, progress=False)
