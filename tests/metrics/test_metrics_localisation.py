"""Localisation scores against independent references (numpy formulas, scipy, scikit-learn,
scikit-image) on planted blobs with non-cubic, anisotropic voxels; maps and masks on different grids."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, roc_auc_score

from medcam3d.errors import (
    ConfigurationError,
    GeometryError,
    InputShapeError,
    NonFiniteInputError,
    ValueRangeError,
)
from medcam3d.metrics.localisation import (
    LocalisationScores,
    auroc,
    average_precision,
    binarise_map,
    centre_of_mass_distance_mm,
    energy_pointing_game,
    iou_dice,
    localisation_scores,
    peak_distance_mm,
    pointing_game,
    threshold_otsu,
)

SHAPE = (20, 32, 28)  # (z, y, x), non-cubic
SPACING = (3.0, 0.8, 1.2)  # mm, (z, y, x), anisotropic


def world_axes(shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")


def planted(seed: int = 0, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal lesion mask and a map: a Gaussian blob near it, a weaker one elsewhere, noise.
    Rounding makes many tied values (the AUROC/AP tie handling is exercised)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = world_axes(SHAPE, SPACING)
    mask = ((zz - 30.0) / 8.0) ** 2 + ((yy - 12.0) / 4.0) ** 2 + ((xx - 16.0) / 5.0) ** 2 <= 1.0
    cam = np.exp(-((zz - 33.0) ** 2 / 60 + (yy - 13.0) ** 2 / 12 + (xx - 14.0) ** 2 / 20))
    cam = cam + 0.4 * np.exp(-((zz - 12.0) ** 2 + (yy - 25.0) ** 2 + (xx - 26.0) ** 2) / 20) - 0.05
    cam = cam + 0.05 * rng.random(SHAPE)
    if decimals is not None:
        cam = np.round(cam, decimals)
    return cam, mask


# ----------------------------------------------------------------------------------- references
def ref_pointing(cam: np.ndarray, mask: np.ndarray, spacing, tolerance: float) -> np.ndarray:
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    peaks = np.argwhere(cam == cam.max())
    return distance[tuple(peaks.T)] <= tolerance + 1e-9


def ref_top(cam: np.ndarray, percent: float) -> np.ndarray:
    keep = math.ceil(percent / 100 * cam.size)
    cutoff = np.sort(cam.ravel())[::-1][keep - 1]
    return cam >= cutoff


def test_scores_match_independent_references() -> None:
    cam, mask = planted()
    scores = localisation_scores(cam, mask, SPACING, tolerance_mm=2.0, threshold=0.5, top_percent=4.0)
    assert isinstance(scores, LocalisationScores)
    flat_mask, flat_cam = mask.ravel(), cam.ravel()

    hits = ref_pointing(cam, mask, SPACING, 2.0)
    assert scores.pointing_game == pytest.approx(hits.mean())
    assert scores.peaks == len(hits)
    first = np.unravel_index(np.argmax(cam), cam.shape)
    assert scores.peak_index == tuple(int(v) for v in first)
    edt = ndimage.distance_transform_edt(~mask, sampling=SPACING)
    assert scores.peak_distance_mm == pytest.approx(edt[first])

    positive = np.clip(cam, 0, None)
    assert scores.energy == pytest.approx(positive[mask].sum() / positive.sum())
    (z0, z1), (y0, y1), (x0, x1) = [(i.min(), i.max() + 1) for i in np.nonzero(mask)]
    assert scores.energy_box == pytest.approx(positive[z0:z1, y0:y1, x0:x1].sum() / positive.sum())

    for region, iou, dice in (
        (cam >= 0.5, scores.iou_threshold, scores.dice_threshold),
        (ref_top(cam, 4.0), scores.iou_top_percent, scores.dice_top_percent),
    ):
        assert iou == pytest.approx(jaccard_score(flat_mask, region.ravel()))
        assert dice == pytest.approx(f1_score(flat_mask, region.ravel()))
    skimage_filters = pytest.importorskip("skimage.filters")
    otsu = skimage_filters.threshold_otsu(cam)
    assert scores.otsu_threshold == pytest.approx(otsu, abs=1e-12)
    assert scores.iou_otsu == pytest.approx(jaccard_score(flat_mask, flat_cam > otsu))
    assert scores.dice_otsu == pytest.approx(f1_score(flat_mask, flat_cam > otsu))

    assert len(np.unique(flat_cam)) < flat_cam.size / 10  # many ties
    assert scores.auroc == pytest.approx(roc_auc_score(flat_mask, flat_cam), abs=1e-12)
    assert scores.average_precision == pytest.approx(average_precision_score(flat_mask, flat_cam), abs=1e-12)

    com_map = np.asarray(ndimage.center_of_mass(positive))
    com_mask = np.asarray(ndimage.center_of_mass(mask.astype(float)))
    expected = np.linalg.norm((com_map - com_mask) * np.asarray(SPACING))
    assert scores.centre_of_mass_distance_mm == pytest.approx(expected)
    assert scores.to_dict()["peak_index"] == list(scores.peak_index)


def test_individual_functions_agree_with_the_combined_call() -> None:
    cam, mask = planted(seed=1)
    scores = localisation_scores(cam, mask, SPACING, tolerance_mm=1.0, top_percent=3.0)
    assert isinstance(scores, LocalisationScores)
    assert pointing_game(cam, mask, SPACING, tolerance_mm=1.0) == scores.pointing_game
    assert peak_distance_mm(cam, mask, SPACING) == scores.peak_distance_mm
    assert energy_pointing_game(cam, mask, SPACING) == scores.energy
    assert energy_pointing_game(cam, mask, SPACING, region="box") == scores.energy_box
    assert iou_dice(cam, mask, SPACING, threshold=0.5) == (scores.iou_threshold, scores.dice_threshold)
    assert iou_dice(cam, mask, SPACING, top_percent=3.0) == (scores.iou_top_percent, scores.dice_top_percent)
    assert iou_dice(cam, mask, SPACING, otsu=True) == (scores.iou_otsu, scores.dice_otsu)
    assert threshold_otsu(cam) == scores.otsu_threshold
    assert auroc(cam, mask, SPACING) == scores.auroc
    assert average_precision(cam, mask, SPACING) == scores.average_precision
    assert centre_of_mass_distance_mm(cam, mask, SPACING) == scores.centre_of_mass_distance_mm
    assert np.array_equal(binarise_map(cam, top_percent=3.0), ref_top(cam, 3.0))


def test_otsu_matches_skimage_on_unrounded_maps() -> None:
    skimage_filters = pytest.importorskip("skimage.filters")
    for seed in range(4):
        cam, _ = planted(seed=seed, decimals=None)
        assert threshold_otsu(cam) == pytest.approx(skimage_filters.threshold_otsu(cam), abs=1e-12)
        assert threshold_otsu(cam, nbins=64) == pytest.approx(
            skimage_filters.threshold_otsu(cam, nbins=64), abs=1e-12
        )
    assert threshold_otsu(np.full((4, 5), 0.25)) == 0.25


def test_anisotropic_spacing_decides_hit_and_miss() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10, 16, 14] = True
    tolerance = 2.5
    # three voxels along y (0.8 mm): 2.4 mm away -> hit, although three voxels would miss at 1 mm voxels
    near = np.zeros(SHAPE)
    near[10, 19, 14] = 1.0
    # one voxel along z (3.0 mm): 3.0 mm away -> miss, although one voxel would hit at 1 mm voxels
    far = np.zeros(SHAPE)
    far[11, 16, 14] = 1.0
    for cam, expected in ((near, True), (far, False)):
        reference = bool(ref_pointing(cam, mask, SPACING, tolerance)[0])
        assert reference is expected
        assert pointing_game(cam, mask, SPACING, tolerance_mm=tolerance) == float(expected)
        assert pointing_game(cam, mask, (1.0, 1.0, 1.0), tolerance_mm=tolerance) == float(not expected)
    assert peak_distance_mm(near, mask, SPACING) == pytest.approx(2.4)
    assert peak_distance_mm(far, mask, SPACING) == pytest.approx(3.0)
    # the boundary is inclusive: exactly 3.0 mm away hits with a 3.0 mm tolerance
    assert pointing_game(far, mask, SPACING, tolerance_mm=3.0) == 1.0


def test_distance_matches_scipy_for_every_voxel_of_a_random_mask() -> None:
    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random(SHAPE) > 0.998, iterations=2)
    edt = ndimage.distance_transform_edt(~mask, sampling=SPACING)
    for index in rng.integers(0, SHAPE, size=(40, 3)):
        cam = np.zeros(SHAPE)
        cam[tuple(index)] = 1.0
        assert peak_distance_mm(cam, mask, SPACING) == pytest.approx(edt[tuple(index)])


def test_tied_maxima_rules() -> None:
    mask = np.zeros((12, 10), dtype=bool)
    mask[2:5, 2:5] = True
    cam = np.zeros((12, 10))
    cam[3, 3] = cam[10, 8] = 1.0  # one tied peak inside, one far away
    assert pointing_game(cam, mask, ties="fraction") == 0.5
    assert pointing_game(cam, mask, ties="any") == 1.0
    assert pointing_game(cam, mask, ties="all") == 0.0
    assert pointing_game(cam, mask, ties="first") == 1.0  # (3, 3) comes first in C order
    cam[3, 3], cam[1, 0] = 0.0, 1.0  # now the first peak misses
    assert pointing_game(cam, mask, ties="first") == 0.0
    flat = np.ones((12, 10))  # a constant map: share of voxels within tolerance, no free hit
    assert pointing_game(flat, mask, tolerance_mm=1.0) == pytest.approx(
        ref_pointing(flat, mask, (1.0, 1.0), 1.0).mean()
    )


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_batched_and_torch_inputs_any_rank(rank: int) -> None:
    cam3, mask3 = planted(seed=2)
    index = {3: (slice(None),) * 3, 2: (10, slice(None), slice(None)), 1: (10, 13, slice(None))}[rank]
    cam, mask = cam3[index], mask3[index]
    spacing = SPACING[3 - rank :]
    batch = np.stack([cam, cam[::-1].copy(), 0.5 * cam + 0.1])
    scores = localisation_scores(torch.from_numpy(batch).float(), mask, spacing, tolerance_mm=1.5)
    assert isinstance(scores, list) and len(scores) == 3
    for one, result in zip(batch, scores):
        alone = localisation_scores(one.astype(np.float32), mask, spacing, tolerance_mm=1.5)
        assert alone == result
        assert result.auroc == pytest.approx(roc_auc_score(mask.ravel(), one.astype(np.float32).ravel()))
    values = auroc(batch, np.stack([mask] * 3), spacing)
    assert isinstance(values, np.ndarray) and values.shape == (3,)
    iou, dice = iou_dice(batch, mask, spacing, threshold=0.5)
    assert isinstance(iou, np.ndarray) and iou.shape == (3,)


# ----------------------------------------------------------------------------------- geometry
def _world_map(geometry, centre=(30.0, 2.0, 45.0)) -> np.ndarray:
    """A smooth map defined in world (LPS) coordinates, sampled at the voxel centres of ``geometry``."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    ijk = index[..., ::-1].reshape(-1, 3).astype(float)  # (x, y, z) index
    world = geometry.origin + (geometry.direction @ np.diag(geometry.spacing) @ ijk.T).T
    offset = world - np.asarray(centre)
    values = np.exp(-(offset[:, 0] ** 2 / 60 + offset[:, 1] ** 2 / 30 + offset[:, 2] ** 2 / 250))
    return values.reshape(geometry.shape).astype(np.float32)


def _world_mask(geometry) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    ijk = index[..., ::-1].reshape(-1, 3).astype(float)
    world = geometry.origin + (geometry.direction @ np.diag(geometry.spacing) @ ijk.T).T
    d = (world - np.array([28.0, 3.0, 50.0])) / np.array([5.0, 4.0, 9.0])
    return ((d**2).sum(axis=1) <= 1.0).reshape(geometry.shape)


@pytest.fixture
def grids():
    io = pytest.importorskip("medcam3d.io")
    pytest.importorskip("SimpleITK")
    fine = io.Geometry(shape=SHAPE, spacing=SPACING[::-1], origin=(10.0, -5.0, 20.0))
    coarse_spacing = tuple(2 * s for s in fine.spacing)
    coarse = io.Geometry(
        shape=(12, 18, 16),
        spacing=coarse_spacing,
        origin=tuple(o - 0.5 * s - 0.3 for o, s in zip(fine.origin, coarse_spacing)),
    )
    flipped = io.Geometry(
        shape=SHAPE,
        spacing=fine.spacing,
        origin=fine.index_to_world((0, 0, SHAPE[2] - 1)),
        direction=np.diag([-1.0, 1.0, 1.0]),
    )
    return io, fine, coarse, flipped


def _assert_close(a: LocalisationScores, b: LocalisationScores, loose: bool) -> None:
    tol = {"auroc": 0.01, "average_precision": 0.03, "energy": 0.02, "energy_box": 0.02}
    for name in ("auroc", "average_precision", "energy", "energy_box", "iou_otsu", "iou_threshold"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=tol.get(name, 0.05) if loose else 1e-5)
    assert a.pointing_game == b.pointing_game
    assert a.peak_distance_mm == pytest.approx(b.peak_distance_mm, abs=1.5 if loose else 1e-6)
    assert a.centre_of_mass_distance_mm == pytest.approx(
        b.centre_of_mass_distance_mm, abs=0.5 if loose else 1e-4
    )


def test_map_and_mask_on_different_grids_match_one_grid(grids, tmp_path) -> None:
    io, fine, coarse, flipped = grids
    mask = _world_mask(fine)
    assert mask.sum() > 30
    on_grid = localisation_scores(_world_map(fine), mask, fine.spacing_zyx, tolerance_mm=2.0)
    assert isinstance(on_grid, LocalisationScores)
    assert on_grid.auroc > 0.9  # the planted map does localise

    resampled = localisation_scores((_world_map(coarse), coarse), (mask, fine), tolerance_mm=2.0)
    assert isinstance(resampled, LocalisationScores)
    _assert_close(resampled, on_grid, loose=True)
    # a flipped direction (x index growing towards the right) is the same grid point for point
    flipped_map = _world_map(flipped)
    assert np.allclose(flipped_map, _world_map(fine)[..., ::-1])
    same = localisation_scores((flipped_map, flipped), (mask, fine), tolerance_mm=2.0)
    assert isinstance(same, LocalisationScores)
    _assert_close(same, on_grid, loose=False)
    # and image files: the map file on the coarse grid, the mask file on the fine one
    cam_path = io.write_image(_world_map(coarse), coarse, tmp_path / "cam.nii.gz")
    mask_path = io.write_image(mask.astype(np.uint8), fine, tmp_path / "mask.nii.gz", dtype=np.uint8)
    from_files = localisation_scores(cam_path, mask_path, tolerance_mm=2.0)
    assert isinstance(from_files, LocalisationScores)
    _assert_close(from_files, resampled, loose=False)


def test_geometry_errors(grids) -> None:
    io, fine, coarse, _ = grids
    mask = _world_mask(fine)
    with pytest.raises(InputShapeError, match="world coordinates"):
        localisation_scores((_world_map(coarse), coarse), mask)  # only the map has a geometry
    with pytest.raises(GeometryError, match="contradicts"):
        localisation_scores(_world_map(fine), (mask, fine), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="its geometry says"):
        localisation_scores((_world_map(coarse), fine), (mask, fine))


# ----------------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors() -> None:
    cam, mask = planted()
    with pytest.raises(InputShapeError, match="same voxel grid"):
        localisation_scores(cam[:, :, :-1], mask, SPACING)
    bad = cam.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError, match="NaN"):
        localisation_scores(bad, mask, SPACING)
    bad[0, 0, 0] = np.inf
    with pytest.raises(NonFiniteInputError):
        auroc(bad, mask, SPACING)
    with pytest.raises(ValueRangeError, match="tolerance_mm"):
        pointing_game(cam, mask, SPACING, tolerance_mm=-1.0)
    with pytest.raises(ValueRangeError, match="empty"):
        localisation_scores(cam, np.zeros(SHAPE, dtype=bool), SPACING)
    with pytest.raises(ValueRangeError, match=r"sample\(s\) \[1\]"):
        auroc(np.stack([cam, cam]), np.stack([mask, np.zeros_like(mask)]), SPACING)
    with pytest.raises(InputShapeError, match="1, 2 or 3 spatial axes"):
        localisation_scores(cam[None], mask[None], (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(InputShapeError, match=r"\(\*S\) or \(N, \*S\)"):
        localisation_scores(cam, mask, (1.0,))
    with pytest.raises(ValueRangeError, match="spacing"):
        localisation_scores(cam, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigurationError, match="ties"):
        pointing_game(cam, mask, SPACING, ties="random")
    with pytest.raises(ConfigurationError, match="exactly one"):
        iou_dice(cam, mask, SPACING, threshold=0.5, otsu=True)
    with pytest.raises(ValueRangeError, match="top_percent"):
        iou_dice(cam, mask, SPACING, top_percent=0.0)
    with pytest.raises(ConfigurationError, match="region"):
        energy_pointing_game(cam, mask, SPACING, region="sphere")


def test_undefined_scores_are_nan_with_a_warning() -> None:
    cam, mask = planted()
    with pytest.warns(RuntimeWarning, match="no positive values"):
        assert math.isnan(energy_pointing_game(-np.abs(cam) - 1, mask, SPACING))
    with pytest.warns(RuntimeWarning, match="centre of mass"):
        assert math.isnan(centre_of_mass_distance_mm(np.zeros(SHAPE), mask, SPACING))
    with pytest.warns(RuntimeWarning, match="every voxel"):
        assert math.isnan(auroc(cam, np.ones(SHAPE, dtype=bool), SPACING))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert average_precision(cam, np.ones(SHAPE, dtype=bool), SPACING) == 1.0
