"""ROAD's noisy linear imputation in 1, 2 and 3 spatial axes against a direct sparse solve, and the
ROAD metrics against the score of the reference imputation (linear models: exact expected scores)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch
import torch.nn as nn

from medcam3d.core.targets import ClassifierOutputTarget
from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.metrics.perturbation_confidence import (
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    otsu_threshold,
)
from medcam3d.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    axis_neighbour_weights,
    neighbors_weights,
)


def reference_imputation(image: np.ndarray, keep: np.ndarray, weights: list) -> np.ndarray:
    """The ROAD system built voxel by voxel and solved with scipy's direct sparse solver.

    For every removed voxel i: sum over in-grid neighbours j of w_ij (x_i - x_j) = 0, x_j known or not.
    """
    shape = keep.shape
    removed = np.argwhere(~keep)
    index = {tuple(p): k for k, p in enumerate(removed)}
    matrix = sparse.lil_matrix((len(removed), len(removed)))
    rhs = np.zeros((len(removed), image.shape[0]))
    for k, voxel in enumerate(removed):
        for offset, weight in weights:
            neighbour = voxel + np.asarray(offset)
            if np.any(neighbour < 0) or np.any(neighbour >= shape):
                continue
            matrix[k, k] += weight
            if keep[tuple(neighbour)]:
                rhs[k] += weight * image[(slice(None), *neighbour)]
            else:
                matrix[k, index[tuple(neighbour)]] -= weight
    solution = sparse_linalg.spsolve(sparse.csc_matrix(matrix), rhs).reshape(len(removed), -1)
    out = image.copy()
    out[(slice(None), *removed.T)] = solution.T
    return out


CASES = [
    ((5, 6, 7), None),  # 3D, 6 axis neighbours
    ((9, 11), None),  # 2D, 4 axis neighbours
    ((9, 11), neighbors_weights),  # 2D, the ROAD paper's 8 neighbours
    ((41,), None),  # 1D
]


@pytest.mark.parametrize(("shape", "weighting"), CASES, ids=["3d", "2d-axis", "2d-road8", "1d"])
def test_imputer_equals_a_direct_sparse_solve(shape, weighting):
    rng = np.random.default_rng(len(shape))
    image = rng.random((2, *shape))
    keep = rng.random(shape) > 0.45
    keep[tuple(slice(0, 3) for _ in shape)] = False  # a removed block touching two faces
    weights = weighting if weighting is not None else axis_neighbour_weights(len(shape))
    expected = reference_imputation(image, keep, weights)
    imputer = NoisyLinearImputer(noise=0.0, weighting=weighting, rtol=1e-10)
    out = imputer(torch.from_numpy(image), torch.from_numpy(keep.astype(np.float32)))
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(out.numpy()[:, keep], image[:, keep])  # kept voxels untouched
    # the default tolerance (rtol 1e-6 on the residual) is within 1e-5 of the exact solution
    default = NoisyLinearImputer(noise=0.0, weighting=weighting)(
        torch.from_numpy(image).float(), torch.from_numpy(keep.astype(np.float32))
    )
    assert default.dtype == torch.float32
    np.testing.assert_allclose(default.numpy(), expected, rtol=0, atol=1e-5)


def test_each_imputed_voxel_is_the_mean_of_its_neighbours_in_3d():
    rng = np.random.default_rng(3)
    image = rng.random((1, 8, 9, 10))
    keep = rng.random((8, 9, 10)) > 0.5
    out = NoisyLinearImputer(noise=0.0, rtol=1e-12)(torch.from_numpy(image), torch.from_numpy(keep)).numpy()
    padded = np.pad(out[0], 1, constant_values=np.nan)
    for z, y, x in np.argwhere(~keep):
        neighbours = [
            padded[z + 1 + dz, y + 1 + dy, x + 1 + dx]
            for dz, dy, dx in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
        ]
        assert out[0, z, y, x] == pytest.approx(np.nanmean(neighbours), abs=1e-9)


def test_imputation_is_finite_on_volumes_and_the_noise_has_the_requested_spread():
    torch.manual_seed(0)
    image = torch.rand(2, 16, 16, 12)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in image.shape[1:]], indexing="ij")).float()
    distance = ((grid - torch.tensor([8.0, 6.0, 6.0]).reshape(3, 1, 1, 1)) ** 2).sum(0)
    keep = distance > distance.median()  # one large removed ball: the hard case for an iterative solver
    clean = NoisyLinearImputer(noise=0.0)(image, keep.float())
    assert bool(torch.isfinite(clean).all())
    # the fill stays inside the range of the data (discrete maximum principle)
    assert float(clean.min()) >= float(image.min()) - 1e-6 and float(clean.max()) <= float(image.max()) + 1e-6
    generator = torch.Generator().manual_seed(1)
    noisy = NoisyLinearImputer(noise=0.05, generator=generator)(image, keep.float())
    difference = (noisy - clean)[:, ~keep]
    assert float(difference.std()) == pytest.approx(0.05, rel=0.05)
    assert float(difference.mean()) == pytest.approx(0.0, abs=0.004)
    assert torch.equal(noisy[:, keep], image[:, keep])
    again = NoisyLinearImputer(noise=0.05, generator=torch.Generator().manual_seed(1))(image, keep.float())
    assert torch.equal(noisy, again)


def test_nothing_removed_and_everything_removed():
    image = torch.rand(2, 6, 7)
    assert torch.equal(NoisyLinearImputer(noise=0.0)(image, torch.ones(6, 7)), image)
    # no voxel kept: the system is singular; its minimum-norm solution is zero
    filled = NoisyLinearImputer(noise=0.0)(image, torch.zeros(6, 7))
    assert torch.equal(filled, torch.zeros_like(image))


def test_imputer_refuses_bad_weights_and_shapes():
    image, keep = torch.rand(1, 5, 5, 5), torch.ones(5, 5, 5)
    keep[2, 2, 2] = 0
    with pytest.raises(ConfigurationError, match="one offset component per axis"):
        NoisyLinearImputer(weighting=neighbors_weights)(image, keep)  # 2D offsets on a volume
    with pytest.raises(ConfigurationError, match="symmetric"):
        NoisyLinearImputer(weighting=[((1, 0, 0), 0.5), ((-1, 0, 0), 0.25)])(image, keep)
    with pytest.raises(ConfigurationError, match="positive weight"):
        NoisyLinearImputer(weighting=[((0, 0, 0), 1.0)])(image, keep)
    with pytest.raises(InputShapeError, match="mask"):
        NoisyLinearImputer()(image, torch.ones(5, 5))
    with pytest.raises(ConfigurationError, match="noise"):
        NoisyLinearImputer(noise=-1.0)


def test_thresholds_follow_numpy_percentile_and_otsu():
    rng = np.random.default_rng(5)
    cam = rng.random((7, 9, 11)).astype(np.float32)
    cam[0, 0, :5] = cam[1, 1, 1]  # ties
    for q in (0, 12.5, 50, 75, 99, 100):
        keep = RemoveMostRelevantFirst(q, imputer=None).keep_mask(torch.from_numpy(cam)).numpy()
        np.testing.assert_array_equal(keep, cam.astype(np.float64) < np.percentile(cam.astype(np.float64), q))
    # Otsu on a bimodal map, against a brute-force search of the between-class variance
    bimodal = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 300)]).clip(0, 1)
    levels = np.uint8(bimodal * 255)
    best, best_level = -1.0, 0
    for t in range(256):
        low, high = levels[levels <= t], levels[levels > t]
        if low.size and high.size:
            between = low.size * high.size * (low.mean() - high.mean()) ** 2
            if between > best:
                best, best_level = between, t
    assert otsu_threshold(torch.from_numpy(bimodal)) == best_level
    keep = RemoveMostRelevantFirst("auto", imputer=None).keep_mask(torch.from_numpy(bimodal)).numpy()
    np.testing.assert_array_equal(keep, levels <= best_level)  # the high mode is removed first


class LinearScore(nn.Module):
    """score = sum(w * x): the expected score of any perturbed input is a dot product."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("shape", [(6, 7, 8), (10, 12), (30,)], ids=["3d", "2d", "1d"])
def test_road_scores_equal_the_reference_imputation(shape):
    rng = np.random.default_rng(7)
    x = rng.random((2, 2, *shape))
    weight = rng.random((1, 2, *shape))
    cams = rng.random((2, *shape)).astype(np.float32)
    model = LinearScore(torch.from_numpy(weight).float())
    targets = [ClassifierOutputTarget(0)] * 2
    imputer = NoisyLinearImputer(noise=0.0, rtol=1e-10)
    weights = axis_neighbour_weights(len(shape))

    def expected(percentile: float, most_relevant_first: bool) -> np.ndarray:
        out = []
        for i in range(2):
            cam = cams[i].astype(np.float64) if most_relevant_first else 1 - cams[i].astype(np.float64)
            keep = cam < np.percentile(cam, percentile)
            filled = reference_imputation(x[i].astype(np.float32).astype(np.float64), keep, weights)
            out.append(((filled - x[i]) * weight[0]).sum())
        return np.asarray(out)

    tensor = torch.from_numpy(x).float()
    morf, visual = ROADMostRelevantFirst(percentile=75, imputer=imputer)(
        tensor, cams, targets, model, return_visualization=True
    )
    np.testing.assert_allclose(morf, expected(75, True), rtol=1e-4, atol=1e-4)
    assert visual.shape == tensor.shape
    lerf = ROADLeastRelevantFirst(percentile=25, imputer=imputer)(tensor, cams, targets, model)
    np.testing.assert_allclose(lerf, expected(25, False), rtol=1e-4, atol=1e-4)
    percentiles = [20, 60]
    morf_average = ROADMostRelevantFirstAverage(percentiles, imputer=imputer)(tensor, cams, targets, model)
    lerf_average = ROADLeastRelevantFirstAverage(percentiles, imputer=imputer)(tensor, cams, targets, model)
    expected_morf = np.mean([expected(p, True) for p in percentiles], axis=0)
    expected_lerf = np.mean([expected(p, False) for p in percentiles], axis=0)
    np.testing.assert_allclose(morf_average, expected_morf, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lerf_average, expected_lerf, rtol=1e-4, atol=1e-4)
    combined = ROADCombined(percentiles=percentiles, imputer=imputer)(tensor, cams, targets, model)
    np.testing.assert_allclose(combined, (expected_lerf - expected_morf) / 2, rtol=1e-4, atol=1e-4)
    # the remover classes used directly (the imputer's keep-mask convention: 1 kept, 0 filled)
    sample = tensor[0]
    direct = RemoveLeastRelevantFirst(25, imputer)(sample, torch.from_numpy(cams[0]))
    assert float(
        ((direct.double() - sample.double()) * model.weight[0].detach().double()).sum()
    ) == pytest.approx(expected(25, False)[0], abs=1e-4)


def test_default_road_metric_is_finite_on_a_volume():
    torch.manual_seed(0)
    model = LinearScore(torch.rand(1, 1, 12, 12, 12))
    x = torch.rand(3, 1, 12, 12, 12)
    cams = torch.rand(3, 12, 12, 12)
    scores = ROADMostRelevantFirst()(x, cams, [ClassifierOutputTarget(0)] * 3, model)
    assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
