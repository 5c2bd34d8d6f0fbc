"""Does a map point at the ground truth? Localisation scores of a map against a mask.

Every function takes a map ``cam`` and a ground-truth ``mask`` in one of these forms:

* numpy arrays or torch tensors, ``(*S)`` or a batch ``(N, *S)``, with 1, 2 or 3 spatial axes
  (``S`` = ``(D, H, W)``, ``(H, W)`` or ``(W,)``); the mask may be one ``(*S)`` mask for the whole
  batch. ``spacing`` gives the voxel size in mm per spatial axis in array order (``(z, y, x)`` for
  a volume) and also says how many trailing axes are spatial; without it a 3-D array is one volume,
  a 4-D array a batch of volumes, and voxels are 1 mm;
* ``(array, Geometry)`` pairs, as :func:`medcam3d.io.read_image` returns them, or image files /
  ``SimpleITK.Image`` / nibabel images. A map and a mask on different grids (other spacing, origin,
  direction, crop) are compared in world coordinates: the map is resampled with linear interpolation
  onto the mask's grid (mask voxels outside the map's field of view get 0), and the spacing comes from
  the mask's geometry.

The mask is every non-zero voxel. An empty mask raises :class:`~medcam3d.errors.ValueRangeError`;
a map with NaN/Inf raises :class:`~medcam3d.errors.NonFiniteInputError`. Scores that are undefined
for a given map (the energy and centre of mass of a map without positive values, AUROC for a mask
that covers every voxel) are NaN with a ``RuntimeWarning``.

Unbatched inputs give Python floats; batched inputs give float64 arrays ``(N,)``.

References: pointing game — Zhang et al., "Top-down neural attention by excitation backprop", IJCV
2018; energy-based pointing game — Wang et al., "Score-CAM", CVPR workshops 2020.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

from medcam3d.errors import ConfigurationError, NonFiniteInputError, ValueRangeError
from medcam3d.metrics._loc_inputs import Prepared, as_numpy, prepare, prepare_map
from medcam3d.metrics._loc_ranks import tie_groups

__all__ = [
    "LocalisationScores",
    "localisation_scores",
    "pointing_game",
    "peak_distance_mm",
    "energy_pointing_game",
    "binarise_map",
    "threshold_otsu",
    "iou_dice",
    "auroc",
    "average_precision",
    "centre_of_mass_distance_mm",
]

#: Result of a scalar score: a float for one map, an ``(N,)`` float64 array for a batch.
Score = Union[float, np.ndarray]

TIE_RULES = ("fraction", "any", "all", "first")


def _out(values: list[float], prepared: Prepared) -> Score:
    return np.asarray(values, dtype=np.float64) if prepared.batched else float(values[0])


def _undefined(what: str) -> float:
    warnings.warn(what, RuntimeWarning, stacklevel=3)
    return float("nan")


def _check_tolerance(tolerance_mm: float) -> float:
    value = float(tolerance_mm)
    if not math.isfinite(value) or value < 0:
        raise ValueRangeError(f"tolerance_mm must be a finite distance >= 0 (mm), got {tolerance_mm!r}.")
    return value


# ------------------------------------------------------------------------------------- distances
def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour (inside the array) outside the mask, ``(B, k)`` indices.

    For a voxel outside the mask, the nearest mask voxel is always one of these (a step from an
    interior voxel towards the point along any axis where they differ brings it closer), so the
    distance to the mask needs only them.
    """
    padded = np.pad(mask, 1, mode="constant", constant_values=True)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            interior &= neighbour
    return np.argwhere(mask & ~interior)


def _distances_to_mask(points: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) from each voxel index in ``points`` ``(P, k)`` to the nearest mask voxel
    centre, with voxel size ``spacing``; 0 for points inside the mask. Same values as
    ``scipy.ndimage.distance_transform_edt(~mask, sampling=spacing)`` at those points."""
    out = np.zeros(points.shape[0], dtype=np.float64)
    outside = ~mask[tuple(points.T)]
    if not outside.any():
        return out
    scale = np.asarray(spacing, dtype=np.float64)
    boundary = _boundary(mask).astype(np.float64) * scale
    query = points[outside].astype(np.float64) * scale
    chunk = max(1, 4_000_000 // max(boundary.shape[0], 1))
    best = np.empty(query.shape[0], dtype=np.float64)
    for start in range(0, query.shape[0], chunk):
        q = query[start : start + chunk]
        squared = ((q[:, None, :] - boundary[None, :, :]) ** 2).sum(axis=2)
        best[start : start + chunk] = squared.min(axis=1)
    out[outside] = np.sqrt(best)
    return out


def _peaks(cam: np.ndarray) -> np.ndarray:
    """Indices ``(P, k)`` of every voxel holding the map's maximum, in C order (``np.argmax`` first)."""
    return np.argwhere(cam == cam.max())


# ------------------------------------------------------------------------------------- pointing game
def pointing_game(
    cam: Any,
    mask: Any,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 0.0,
    ties: str = "fraction",
) -> Score:
    """Pointing game (Zhang et al. 2018): does the map's maximum lie within ``tolerance_mm`` of the mask?

    The distance from the peak voxel's centre to the nearest mask voxel centre is measured in mm
    with the voxel ``spacing`` (0 inside the mask), the same value as
    ``scipy.ndimage.distance_transform_edt(~mask, sampling=spacing)``; a peak hits when that
    distance is at most ``tolerance_mm`` (within 1e-9 relative rounding).

    Ties: when several voxels hold exactly the maximum value,

    * ``"fraction"`` (default): the share of the tied peaks that hit — the expected hit when the tie
      is broken at random (1.0 or 0.0 for a unique maximum; a constant map scores the share of the
      image within the tolerance of the mask, not a free hit);
    * ``"any"`` / ``"all"``: 1.0 when any / every tied peak hits;
    * ``"first"``: the first maximum in C order (``np.argmax``), as most implementations do.

    Args:
        cam: map(s) ``(*S)`` or ``(N, *S)`` (see the module docstring for every accepted form).
        mask: ground truth, same grid; non-zero voxels are the target.
        spacing: voxel size in mm per spatial axis, array order.
        tolerance_mm: how far from the mask (mm) a peak may be and still hit; >= 0.
        ties: ``"fraction"``, ``"any"``, ``"all"`` or ``"first"``.

    Returns:
        hit in [0, 1] (exactly 0.0 or 1.0 except for ``"fraction"`` with ties); ``(N,)`` for a batch.
    """
    tolerance = _check_tolerance(tolerance_mm)
    if ties not in TIE_RULES:
        raise ConfigurationError(f"ties must be one of {TIE_RULES}, got {ties!r}.")
    prepared = prepare(cam, mask, spacing)
    return _out([_hit(c, m, prepared.spacing, tolerance, ties) for c, m in _pairs(prepared)], prepared)


def _pairs(prepared: Prepared) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(prepared.cam[i], prepared.mask[i]) for i in range(prepared.cam.shape[0])]


def _hit(cam: np.ndarray, mask: np.ndarray, spacing: Sequence[float], tolerance: float, ties: str) -> float:
    peaks = _peaks(cam)
    if ties == "first":
        peaks = peaks[:1]
    hits = _distances_to_mask(peaks, mask, spacing) <= tolerance * (1.0 + 1e-9) + 1e-12
    if ties == "any":
        return float(hits.any())
    if ties == "all":
        return float(hits.all())
    return float(hits.mean())


def peak_distance_mm(cam: Any, mask: Any, spacing: Sequence[float] | None = None) -> Score:
    """Distance (mm) from the map's first maximum (``np.argmax``, C order) to the nearest mask voxel;
    0 inside the mask. ``(N,)`` for a batch."""
    prepared = prepare(cam, mask, spacing)
    values = [float(_distances_to_mask(_peaks(c)[:1], m, prepared.spacing)[0]) for c, m in _pairs(prepared)]
    return _out(values, prepared)


# ------------------------------------------------------------------------------------- energy
def _bounding_box(mask: np.ndarray) -> np.ndarray:
    box = np.zeros_like(mask)
    index = np.argwhere(mask)
    lo, hi = index.min(axis=0), index.max(axis=0) + 1
    box[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = True
    return box


def _energy(cam: np.ndarray, mask: np.ndarray, region: str) -> float:
    positive = np.clip(cam, 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        return _undefined("The map has no positive values: its energy inside the mask is undefined (NaN).")
    inside = mask if region == "mask" else _bounding_box(mask)
    return float(positive[inside].sum()) / total


def energy_pointing_game(
    cam: Any, mask: Any, spacing: Sequence[float] | None = None, region: str = "mask"
) -> Score:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's positive mass
    inside the target, ``sum(max(cam, 0)[target]) / sum(max(cam, 0))``, in [0, 1].

    Args:
        cam: map(s) ``(*S)`` or ``(N, *S)``.
        mask: ground truth on the same grid.
        spacing: voxel size (only used to tell how many axes are spatial).
        region: ``"mask"`` (the mask's voxels) or ``"box"`` (its axis-aligned bounding box, as in the
            paper, where the ground truth is a bounding box).

    Returns:
        the share; NaN with a ``RuntimeWarning`` for a map without positive values.
    """
    if region not in ("mask", "box"):
        raise ConfigurationError(f"region must be 'mask' or 'box', got {region!r}.")
    prepared = prepare(cam, mask, spacing)
    return _out([_energy(c, m, region) for c, m in _pairs(prepared)], prepared)


# ------------------------------------------------------------------------------------- thresholds
def _otsu(values: np.ndarray, nbins: int) -> float:
    flat = values.ravel()
    low, high = float(flat.min()), float(flat.max())
    if low == high:
        return low
    counts, edges = np.histogram(flat, bins=nbins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(np.float64)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    # the lowest and highest bins are never empty, so no division by zero
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    between = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def threshold_otsu(cam: Any, nbins: int = 256) -> float:
    """Otsu's threshold of one map's values: the maximum between-class variance over a ``nbins``-bin
    histogram of ``[min, max]``; the threshold is a bin centre, as in ``skimage.filters.threshold_otsu``.
    A constant map returns its value.

    Args:
        cam: one map, any shape (all values are pooled); numpy or torch.
        nbins: histogram bins (>= 2).

    Returns:
        the threshold; the foreground is ``cam > threshold``.
    """
    if int(nbins) < 2:
        raise ConfigurationError(f"nbins must be >= 2, got {nbins}.")
    values = as_numpy(cam, "cam").astype(np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise NonFiniteInputError(
            "threshold_otsu needs a non-empty, finite map; replace NaN/Inf first (np.nan_to_num)."
        )
    return _otsu(values, int(nbins))


def _binarise(cam: np.ndarray, threshold: float | None, top_percent: float | None, otsu: bool) -> np.ndarray:
    if otsu:
        return cam > _otsu(cam, 256)
    if top_percent is not None:
        keep = max(1, math.ceil(top_percent / 100.0 * cam.size - 1e-9))
        cutoff = np.partition(cam.ravel(), cam.size - keep)[cam.size - keep]
        return cam >= cutoff
    assert threshold is not None
    return cam >= threshold


def _check_rule(threshold: float | None, top_percent: float | None, otsu: bool) -> None:
    chosen = sum([threshold is not None, top_percent is not None, bool(otsu)])
    if chosen != 1:
        raise ConfigurationError(
            "Choose exactly one binarisation: threshold=<value>, top_percent=<0-100] or otsu=True."
        )
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ValueRangeError(f"threshold must be finite, got {threshold!r}.")
    if top_percent is not None and not (0 < float(top_percent) <= 100):
        raise ValueRangeError(f"top_percent must be in (0, 100], got {top_percent!r}.")


def binarise_map(
    cam: Any,
    *,
    threshold: float | None = None,
    top_percent: float | None = None,
    otsu: bool = False,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """The map's foreground, bool, same shape as ``cam``; exactly one rule:

    * ``threshold=t``: ``cam >= t`` (on the map's own values, e.g. 0.5 of a [0, 1] map);
    * ``top_percent=k``: the ``ceil(k% * voxels)`` highest voxels; voxels tied with the last one kept
      are kept too (so ties can make the region slightly larger than ``k``%);
    * ``otsu=True``: ``cam > threshold_otsu(cam)`` (per map for a batch).

    ``spacing`` only says how many trailing axes are spatial for a batch (see the module docstring).
    """
    _check_rule(threshold, top_percent, otsu)
    prepared = prepare_map(cam, spacing)
    masks = np.stack([_binarise(c, threshold, top_percent, otsu) for c in prepared.cam])
    return masks if prepared.batched else masks[0]


def _overlap(region: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    both = float(np.count_nonzero(region & mask))
    either = float(np.count_nonzero(region | mask))
    size = float(np.count_nonzero(region) + np.count_nonzero(mask))
    return both / either, 2.0 * both / size


def iou_dice(
    cam: Any,
    mask: Any,
    spacing: Sequence[float] | None = None,
    *,
    threshold: float | None = None,
    top_percent: float | None = None,
    otsu: bool = False,
) -> tuple[Score, Score]:
    """Intersection over union and Dice of the binarised map (:func:`binarise_map`, exactly one of
    ``threshold``, ``top_percent``, ``otsu``) with the mask.

    Returns:
        ``(iou, dice)``, each a float (``(N,)`` arrays for a batch), in [0, 1].
    """
    _check_rule(threshold, top_percent, otsu)
    prepared = prepare(cam, mask, spacing)
    pairs = [_overlap(_binarise(c, threshold, top_percent, otsu), m) for c, m in _pairs(prepared)]
    return _out([p[0] for p in pairs], prepared), _out([p[1] for p in pairs], prepared)


# ------------------------------------------------------------------------------------- ranking scores
def _sorted_groups(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct map values in ascending order with the number of positive and negative voxels at each."""
    order = np.argsort(cam.ravel())  # tied values are grouped, any order among them
    values = cam.ravel()[order]
    labels = mask.ravel()[order]
    starts, lengths = tie_groups(values)
    positives = np.add.reduceat(labels.astype(np.int64), starts) if starts.size else np.zeros(0, np.int64)
    return values[starts], positives, lengths - positives


def _auroc(cam: np.ndarray, mask: np.ndarray) -> float:
    _, positives, negatives = _sorted_groups(cam, mask)
    n_pos, n_neg = int(positives.sum()), int(negatives.sum())
    if n_neg == 0:
        return _undefined("The mask covers every voxel: AUROC needs background voxels (NaN).")
    # Mann-Whitney U: each (positive, negative) pair counts 1 when the positive scores higher, 1/2 on a
    # tie; identical to the trapezoidal area under sklearn's ROC curve.
    negatives_below = np.cumsum(negatives) - negatives
    u = float((positives * (negatives_below + 0.5 * negatives)).sum())
    return u / (n_pos * n_neg)


def _average_precision(cam: np.ndarray, mask: np.ndarray) -> float:
    _, positives, negatives = _sorted_groups(cam, mask)
    # thresholds from the highest value down, tied voxels entering together
    tps = np.cumsum(positives[::-1]).astype(np.float64)
    fps = np.cumsum(negatives[::-1]).astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def auroc(cam: Any, mask: Any, spacing: Sequence[float] | None = None) -> Score:
    """Area under the ROC curve of the map values as a voxel-wise score for the mask, in [0, 1]
    (0.5: no better than chance). Ties count one half, exactly as ``sklearn.metrics.roc_auc_score``.
    NaN with a ``RuntimeWarning`` when the mask covers every voxel."""
    prepared = prepare(cam, mask, spacing)
    return _out([_auroc(c, m) for c, m in _pairs(prepared)], prepared)


def average_precision(cam: Any, mask: Any, spacing: Sequence[float] | None = None) -> Score:
    """Average precision of the map values as a voxel-wise score for the mask,
    ``sum_k (R_k - R_{k-1}) P_k`` over the distinct values from the highest down (tied voxels enter
    together), exactly as ``sklearn.metrics.average_precision_score``. Chance level is the mask's
    share of the voxels."""
    prepared = prepare(cam, mask, spacing)
    return _out([_average_precision(c, m) for c, m in _pairs(prepared)], prepared)


# ------------------------------------------------------------------------------------- centre of mass
def _centroid(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    centre = []
    for axis in range(weights.ndim):
        other = tuple(a for a in range(weights.ndim) if a != axis)
        profile = weights.sum(axis=other) if other else weights
        centre.append(float((profile * np.arange(weights.shape[axis])).sum() / total))
    return np.asarray(centre)


def _com_distance(cam: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> float:
    positive = np.clip(cam, 0.0, None)
    if float(positive.sum()) <= 0:
        return _undefined("The map has no positive values: its centre of mass is undefined (NaN).")
    offset = (_centroid(positive) - _centroid(mask.astype(np.float64))) * np.asarray(spacing)
    return float(np.sqrt((offset**2).sum()))


def centre_of_mass_distance_mm(cam: Any, mask: Any, spacing: Sequence[float] | None = None) -> Score:
    """Distance (mm) between the centroid of the map's positive mass (``max(cam, 0)`` as weights) and
    the mask's centroid (every mask voxel weighted 1), with the voxel ``spacing``. With a geometry the
    direction cosines are orthonormal, so this is the world distance. NaN with a ``RuntimeWarning``
    for a map without positive values."""
    prepared = prepare(cam, mask, spacing)
    return _out([_com_distance(c, m, prepared.spacing) for c, m in _pairs(prepared)], prepared)


# ------------------------------------------------------------------------------------- all at once
@dataclass(frozen=True)
class LocalisationScores:
    """Every localisation score of one map against one mask.

    Attributes:
        pointing_game: hit of :func:`pointing_game` (with ``tolerance_mm`` and ``ties``).
        peak_index: the first maximum (C order), array index (``(z, y, x)`` for a volume).
        peak_distance_mm: its distance to the nearest mask voxel (0 inside).
        peaks: how many voxels hold the maximum (ties).
        energy: share of positive map mass inside the mask.
        energy_box: share inside the mask's bounding box.
        iou_threshold, dice_threshold: overlap of ``cam >= threshold`` with the mask.
        iou_top_percent, dice_top_percent: overlap of the ``top_percent`` % highest voxels.
        iou_otsu, dice_otsu: overlap of ``cam > otsu_threshold``.
        otsu_threshold: Otsu's threshold of the map.
        auroc: area under the voxel-wise ROC curve.
        average_precision: voxel-wise average precision.
        centre_of_mass_distance_mm: positive-mass centroid of the map to the mask centroid.
        tolerance_mm, threshold, top_percent, ties: the settings used.
    """

    pointing_game: float
    peak_index: tuple[int, ...]
    peak_distance_mm: float
    peaks: int
    energy: float
    energy_box: float
    iou_threshold: float
    dice_threshold: float
    iou_top_percent: float
    dice_top_percent: float
    iou_otsu: float
    dice_otsu: float
    otsu_threshold: float
    auroc: float
    average_precision: float
    centre_of_mass_distance_mm: float
    tolerance_mm: float
    threshold: float
    top_percent: float
    ties: str

    def to_dict(self) -> dict[str, Any]:
        """The scores as a plain ``dict`` (JSON-friendly: ``peak_index`` becomes a list)."""
        out = asdict(self)
        out["peak_index"] = list(self.peak_index)
        return out


def localisation_scores(
    cam: Any,
    mask: Any,
    spacing: Sequence[float] | None = None,
    *,
    tolerance_mm: float = 0.0,
    threshold: float = 0.5,
    top_percent: float = 5.0,
    ties: str = "fraction",
) -> LocalisationScores | list[LocalisationScores]:
    """Every localisation score in one call (the map is read, checked and resampled once).

    Args:
        cam: map(s) ``(*S)`` or ``(N, *S)``, an ``(array, Geometry)`` pair or an image file; see the
            module docstring.
        mask: ground truth (non-zero voxels), same forms.
        spacing: voxel size in mm per spatial axis, array order (``(z, y, x)``); taken from the mask's
            geometry when it has one.
        tolerance_mm: pointing-game tolerance (mm).
        threshold: value threshold for ``iou_threshold`` / ``dice_threshold`` (``cam >= threshold``).
        top_percent: share of voxels for ``iou_top_percent`` / ``dice_top_percent``.
        ties: pointing-game rule for tied maxima (see :func:`pointing_game`).

    Returns:
        :class:`LocalisationScores` for one map; a list of them for a batch.
    """
    tolerance = _check_tolerance(tolerance_mm)
    if ties not in TIE_RULES:
        raise ConfigurationError(f"ties must be one of {TIE_RULES}, got {ties!r}.")
    _check_rule(threshold, None, False)
    _check_rule(None, top_percent, False)
    prepared = prepare(cam, mask, spacing)
    results = []
    for c, m in _pairs(prepared):
        peaks = _peaks(c)
        first = tuple(int(v) for v in peaks[0])
        iou_t, dice_t = _overlap(_binarise(c, threshold, None, False), m)
        iou_k, dice_k = _overlap(_binarise(c, None, top_percent, False), m)
        otsu_value = _otsu(c, 256)
        iou_o, dice_o = _overlap(c > otsu_value, m)
        results.append(
            LocalisationScores(
                pointing_game=_hit(c, m, prepared.spacing, tolerance, ties),
                peak_index=first,
                peak_distance_mm=float(_distances_to_mask(peaks[:1], m, prepared.spacing)[0]),
                peaks=int(peaks.shape[0]),
                energy=_energy(c, m, "mask"),
                energy_box=_energy(c, m, "box"),
                iou_threshold=iou_t,
                dice_threshold=dice_t,
                iou_top_percent=iou_k,
                dice_top_percent=dice_k,
                iou_otsu=iou_o,
                dice_otsu=dice_o,
                otsu_threshold=otsu_value,
                auroc=_auroc(c, m),
                average_precision=_average_precision(c, m),
                centre_of_mass_distance_mm=_com_distance(c, m, prepared.spacing),
                tolerance_mm=tolerance,
                threshold=float(threshold),
                top_percent=float(top_percent),
                ties=ties,
            )
        )
    return results if prepared.batched else results[0]
