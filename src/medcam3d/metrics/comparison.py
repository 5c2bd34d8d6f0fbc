"""Which method, which layer? Every method × layer scored in one call, ranked.

:func:`compare` computes the map of every method on every target layer for one batch of inputs and
scores each map with the metrics of this package:

* **faithfulness** (``faithfulness=True``, default): the areas under the deletion and insertion
  curves (:func:`medcam3d.metrics.curves.deletion_insertion`, most relevant voxels first, one
  baseline for both). A faithful map has a low deletion AUC and a high insertion AUC;
* **ROAD** (``road=True``, off by default because it is costly: every percentile imputes the whole
  input by a sparse solve): :class:`medcam3d.metrics.road.ROADCombined` over ``road_percentiles``
  (higher is better);
* **sanity** (``sanity=True``, off by default: one more map per row): the absolute Spearman rank
  correlation between the map and the map of a copy of the model whose top parameter group (the one
  nearest the output, :func:`medcam3d.metrics.sanity.randomisation_groups`) is re-initialised
  (:func:`medcam3d.metrics.sanity.model_randomisation_test`, cascading, first step). Lower is
  better: a map that explains the model must change when the model is destroyed;
* **localisation** (when ``masks`` are given): pointing game (with ``tolerance_mm``), energy inside the
  mask, Dice of the map's Otsu foreground and voxel-wise AUROC
  (:func:`medcam3d.metrics.localisation.localisation_scores`).

Every score is the mean over the samples of the batch. Each row also records the seconds its map
and each of its scores took.

Ranking (``rank_by="auto"``): with masks, by the **localisation score**, the mean of pointing game,
energy, Dice at Otsu and AUROC (each in [0, 1], higher is better); without masks, by
**insertion AUC − deletion AUC** (higher is better); ties are broken by insertion − deletion, then by
the order the methods and layers were given. Any score column can be named instead (``"deletion_auc"``
and ``"sanity_spearman"`` rank the lowest first, every other the highest first).

Segmenters: give segmentation targets (``SemanticSegmentationTarget(category, mask)``, one per
sample). A volume larger than the network's input goes through :mod:`medcam3d.sliding` with
``patch_size=``: the maps come from :func:`~medcam3d.sliding.sliding_window_cam` (a
``SemanticSegmentationTarget`` becomes the equivalent
:class:`~medcam3d.sliding.SlidingSegmentationTarget`), and the perturbed volumes of the faithfulness
metrics are scored by a sliding-window inference of the whole volume (Gaussian-weighted patches,
as nnU-Net), so the target sees the full-volume output.

Cost: one CAM call per method (all layers of a method share one forward and backward pass when the
method supports it, ``shared_forward=True``; its time is then split evenly over its layers), plus
``2 · steps`` forward passes per row and sample for the curves. On the demo's 91 x 109 x 91 volume
and 2 CPU cores: about 0.5 s per map and 4 s per row for ``steps=10``.

>>> result = compare(model, x, [ClassifierOutputTarget(1)], ["gradcam", "hirescam"], ["layer4"])  # doctest: +SKIP
>>> print(result.table())                                                                        # doctest: +SKIP
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.errors import ConfigurationError, InputShapeError, OutputPathError, TargetError, require_extra

__all__ = ["CompareRow", "CompareResult", "compare", "RANK_KEYS", "LOCALISATION_COLUMNS"]

logger = logging.getLogger(__name__)

#: Localisation scores averaged into the ``localisation`` ranking score.
LOCALISATION_COLUMNS = ("pointing_game", "energy", "dice_otsu", "auroc")
#: Columns a result can be ranked by; the ones in ``_LOWER_IS_BETTER`` rank the lowest first.
RANK_KEYS = (
    "auto",
    "localisation",
    "insertion_minus_deletion",
    "deletion_auc",
    "insertion_auc",
    "road",
    "sanity_spearman",
    "pointing_game",
    "energy",
    "dice_otsu",
    "auroc",
)
_LOWER_IS_BETTER = ("deletion_auc", "sanity_spearman")
_FIGURE_ENDINGS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_NAN = float("nan")


# ------------------------------------------------------------------------------------- results
@dataclass
class CompareRow:
    """One method on one layer, scored (means over the batch; NaN where a score was not computed).

    Attributes:
        method: the method's registry name (``"gradcam"``) or, for an unregistered class, its name.
        layer: the target layer's dotted name.
        rank: 1 for the best row under the result's ranking key.
        score: the value the rows are ranked by.
        deletion_auc, insertion_auc: areas under the deletion / insertion curves.
        road: ROADCombined score.
        sanity_spearman: |Spearman| between the map and the map after randomising the top group.
        pointing_game, energy, dice_otsu, auroc: localisation scores against the masks.
        peak_distance_mm: distance from the map's peak to the mask (0 inside), mm.
        localisation: mean of ``pointing_game``, ``energy``, ``dice_otsu`` and ``auroc``.
        seconds_cam, seconds_faithfulness, seconds_road, seconds_sanity, seconds_localisation: time
            each part took (``seconds_cam`` is a share of the method's call when layers share it).
        seconds: their sum.
        maps: ``(N, *S)`` float32, the maps on the input's grid (``None`` with ``keep_maps=False``).
    """

    method: str
    layer: str
    rank: int = 0
    score: float = _NAN
    deletion_auc: float = _NAN
    insertion_auc: float = _NAN
    road: float = _NAN
    sanity_spearman: float = _NAN
    pointing_game: float = _NAN
    energy: float = _NAN
    dice_otsu: float = _NAN
    auroc: float = _NAN
    peak_distance_mm: float = _NAN
    localisation: float = _NAN
    seconds_cam: float = 0.0
    seconds_faithfulness: float = 0.0
    seconds_road: float = 0.0
    seconds_sanity: float = 0.0
    seconds_localisation: float = 0.0
    maps: np.ndarray | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """Total time of this row."""
        return (
            self.seconds_cam
            + self.seconds_faithfulness
            + self.seconds_road
            + self.seconds_sanity
            + self.seconds_localisation
        )

    @property
    def insertion_minus_deletion(self) -> float:
        """``insertion_auc - deletion_auc`` (higher is better)."""
        return self.insertion_auc - self.deletion_auc

    def value(self, key: str) -> float:
        """The value of a ranking column (see :data:`RANK_KEYS`)."""
        return float(getattr(self, key))

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain ``dict`` (no maps), columns in table order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "maps":
                continue
            out[f.name] = getattr(self, f.name)
        out["insertion_minus_deletion"] = self.insertion_minus_deletion
        out["seconds"] = self.seconds
        return out


@dataclass
class CompareResult:
    """What :func:`compare` found: one :class:`CompareRow` per method × layer, best first.

    Attributes:
        rows: the rows, sorted by rank (best first).
        rank_by: the ranking column actually used (``"localisation"``, ``"insertion_minus_deletion"``...).
        settings: the options the scores were computed with (steps, baseline, tolerance...).
    """

    rows: list[CompareRow]
    rank_by: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> CompareRow:
        """The top-ranked row."""
        return self.rows[0]

    def best_for(self, method: str) -> CompareRow:
        """The best-ranked row of ``method`` (its registry name, case-insensitive)."""
        for row in self.rows:
            if row.method == method.strip().lower() or row.method == method:
                return row
        raise ConfigurationError(
            f"No row for method {method!r}; compared: {', '.join(dict.fromkeys(r.method for r in self.rows))}."
        )

    def row(self, method: str, layer: str) -> CompareRow:
        """The row of ``method`` on ``layer``."""
        for row in self.rows:
            if row.method == method.strip().lower() and row.layer == layer:
                return row
        raise ConfigurationError(f"No row for method {method!r} on layer {layer!r}.")

    def rerank(self, rank_by: str) -> CompareResult:
        """The same rows ranked by another column of :data:`RANK_KEYS` (a new result; rows are copies)."""
        import copy

        if rank_by not in RANK_KEYS or rank_by == "auto":
            raise ConfigurationError(f"rank_by must be one of {', '.join(RANK_KEYS[1:])}, got {rank_by!r}.")
        if not any(math.isfinite(r.value(rank_by)) for r in self.rows):
            raise ConfigurationError(f"Cannot rank by {rank_by!r}: it was not computed for these rows.")
        rows = [copy.copy(r) for r in self.rows]
        _rank(rows, rank_by)
        return CompareResult(rows=rows, rank_by=rank_by, settings=dict(self.settings))

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain ``dict`` per row, best first (no maps)."""
        return [row.to_dict() for row in self.rows]

    def to_csv(self, path: str | os.PathLike[str], overwrite: bool = True) -> Path:
        """Write :meth:`to_rows` as CSV (atomically, verified); returns the path."""
        from medcam3d._atomic import write_text_atomic

        out = Path(path)
        if out.suffix.lower() != ".csv":
            raise OutputPathError(f"Give a file name ending in .csv, not {out.name}.")
        rows = self.to_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        write_text_atomic(out, buffer.getvalue(), overwrite)
        logger.info("Wrote %s", out)
        return out

    def table(self) -> str:
        """The ranking as a plain-text table, with the ranking key underneath."""
        columns = [
            ("deletion_auc", "del AUC"),
            ("insertion_auc", "ins AUC"),
            ("road", "ROAD"),
            ("sanity_spearman", "sanity"),
            ("pointing_game", "point"),
            ("peak_distance_mm", "peak mm"),
            ("energy", "energy"),
            ("dice_otsu", "Dice"),
            ("auroc", "AUROC"),
        ]
        shown = [(k, h) for k, h in columns if any(math.isfinite(r.value(k)) for r in self.rows)]
        width_m = max(6, *(len(r.method) for r in self.rows))
        width_l = max(5, *(len(r.layer) for r in self.rows))
        header = f"{'rank':>4}  {'method':<{width_m}}  {'layer':<{width_l}}  {'score':>7}"
        header += "".join(f"  {h:>8}" for _, h in shown) + f"  {'seconds':>7}"
        lines = [header]
        for r in self.rows:
            line = f"{r.rank:>4}  {r.method:<{width_m}}  {r.layer:<{width_l}}  {_fmt(r.score):>7}"
            line += "".join(f"  {_fmt(r.value(k)):>8}" for k, _ in shown) + f"  {r.seconds:>7.1f}"
            lines.append(line)
        lines.append(f"ranked by {_describe_key(self.rank_by)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self) -> Any:
        """A figure: the ranking score per method × layer (bars, best on top) and, when the curves
        were computed, deletion AUC against insertion AUC (one marker per row; the best corner is the
        top left). Needs ``medcam3d[viz]`` (matplotlib).

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot).
        """
        require_extra("matplotlib", "viz", "comparison figures")
        from matplotlib.figure import Figure

        curves = any(math.isfinite(r.deletion_auc) for r in self.rows)
        n = len(self.rows)
        figure = Figure(figsize=(11.0 if curves else 6.0, max(3.0, 0.35 * n + 1.5)), layout="constrained")
        axes = figure.subplots(1, 2 if curves else 1, squeeze=False)[0]
        methods = list(dict.fromkeys(r.method for r in self.rows))
        layers = list(dict.fromkeys(r.layer for r in self.rows))
        colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
        markers = {name: "osD^vP*X<>"[i % 10] for i, name in enumerate(layers)}
        bars = axes[0]
        labels = [f"{r.method} @ {r.layer}" for r in self.rows]
        values = [r.score if math.isfinite(r.score) else 0.0 for r in self.rows]
        bars.barh(range(n), values, color=[colours[r.method] for r in self.rows])
        bars.set_yticks(range(n), labels, fontsize="small")
        bars.invert_yaxis()
        bars.set_xlabel(_describe_key(self.rank_by))
        bars.set_title("ranking (best on top)")
        if curves:
            scatter = axes[1]
            for r in self.rows:
                scatter.scatter(
                    r.deletion_auc, r.insertion_auc, color=colours[r.method], marker=markers[r.layer], s=60
                )
                scatter.annotate(
                    f"{r.method}@{r.layer}",
                    (r.deletion_auc, r.insertion_auc),
                    fontsize="x-small",
                    xytext=(4, 2),
                    textcoords="offset points",
                )
            scatter.set_xlabel("deletion AUC (lower is better)")
            scatter.set_ylabel("insertion AUC (higher is better)")
            scatter.set_title("faithfulness")
        return figure

    def save_figure(self, path: str | os.PathLike[str], overwrite: bool = True, dpi: float = 120) -> Path:
        """Draw :meth:`plot` and write it atomically to ``path`` (``.png``, ``.pdf``, ``.svg``, ``.jpg``)."""
        from medcam3d._atomic import atomic_path

        out = Path(path)
        if out.suffix.lower() not in _FIGURE_ENDINGS:
            raise OutputPathError(f"Cannot write a figure to {out}: use one of {', '.join(_FIGURE_ENDINGS)}.")
        figure = self.plot()
        fmt = out.suffix.lower().lstrip(".")
        with atomic_path(out, overwrite=overwrite) as tmp:
            figure.savefig(tmp, dpi=dpi, format="jpeg" if fmt == "jpg" else fmt)
        logger.info("Wrote %s", out)
        return out


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _describe_key(key: str) -> str:
    if key == "localisation":
        return "localisation = mean(pointing game, energy, Dice at Otsu, AUROC), higher is better"
    if key == "insertion_minus_deletion":
        return "insertion AUC - deletion AUC, higher is better"
    return f"{key}, {'lower' if key in _LOWER_IS_BETTER else 'higher'} is better"


# ------------------------------------------------------------------------------------- inputs
def _method_entries(methods: Sequence[str | type]) -> list[tuple[str, type]]:
    from medcam3d.methods.registry import available_methods, get_method

    if isinstance(methods, (str, type)):
        methods = [methods]
    entries: list[tuple[str, type]] = []
    by_class = {cls: name for name, cls in available_methods().items()}
    for method in methods:
        if isinstance(method, str):
            name, cls = method.strip().lower(), get_method(method)
        elif isinstance(method, type):
            cls = method
            name = by_class.get(cls, cls.__name__.lower())
        else:
            raise ConfigurationError(
                f"A method must be a registry name (e.g. 'gradcam') or a CAM class, got {method!r}; "
                "pass the class, not an instance (its options go in method_kwargs)."
            )
        if name in (n for n, _ in entries):
            raise ConfigurationError(f"Method {name!r} is listed twice.")
        entries.append((name, cls))
    if not entries:
        raise ConfigurationError("methods is empty: name at least one, e.g. ['gradcam', 'hirescam'].")
    return entries


def _layer_names(model: nn.Module, layers: Sequence[str | nn.Module] | str | nn.Module) -> list[str]:
    from medcam3d.core.layers import resolve_layers

    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved = resolve_layers(model, list(layers))  # raises LayerNotFoundError with close names
    names = [name for name, _ in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(f"Layer(s) {', '.join(duplicates)} listed twice.")
    return names


def _kwargs_for(name: str, cls: type, method_kwargs: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    kwargs = dict((method_kwargs or {}).get(name, (method_kwargs or {}).get(cls.__name__, {})))
    if "seed" not in kwargs:
        try:
            if "seed" in inspect.signature(cls).parameters:
                kwargs["seed"] = 0  # RandomCAM: repeatable maps
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            pass
    return kwargs


def _masks(masks: Any, n: int, spatial: tuple[int, ...]) -> np.ndarray | None:
    if masks is None:
        return None
    array = np.asarray(masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else masks)
    if tuple(array.shape) == spatial:
        array = np.broadcast_to(array, (n, *spatial))
    if tuple(array.shape) != (n, *spatial):
        raise InputShapeError(
            f"masks have shape {tuple(array.shape)}; the input needs (N, *S) = {(n, *spatial)} or one "
            f"mask {spatial} for every sample, on the input's grid."
        )
    empty = [i for i in range(n) if not np.any(array[i])]
    if empty:
        raise ConfigurationError(
            f"The mask of sample(s) {empty} is empty: localisation needs a target in every mask "
            "(drop those samples or pass masks=None)."
        )
    return array != 0


def _resolve_targets(
    model: nn.Module, x: torch.Tensor, targets: Any, patch_size: Sequence[int] | None
) -> list[Any]:
    from medcam3d.core.targets import ClassifierOutputTarget
    from medcam3d.metrics._common import check_targets

    listed = check_targets(targets, x.shape[0])
    if listed is not None:
        return listed
    if patch_size is not None:
        raise TargetError(
            "targets=None is for classifiers; a segmenter needs a target per sample, e.g. "
            "[SemanticSegmentationTarget(category, mask)]."
        )
    with torch.inference_mode():
        output = model(x)
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise TargetError(
            "targets=None explains each sample's predicted class, which needs a classifier output "
            "(N, classes); pass targets, e.g. [SemanticSegmentationTarget(category, mask)] per sample."
        )
    return [ClassifierOutputTarget(int(c)) for c in output.argmax(dim=1).tolist()]


def _cam_and_score_targets(targets: list[Any], sliding: bool) -> tuple[list[Any], list[Any]]:
    """The targets of the CAM and those of the whole-volume scoring (they differ with a sliding window)."""
    if not sliding:
        return targets, targets
    from medcam3d.core.targets import SemanticSegmentationTarget
    from medcam3d.sliding import SlidingSegmentationTarget

    cam_targets: list[Any] = []
    score_targets: list[Any] = []
    for target in targets:
        if isinstance(target, SlidingSegmentationTarget):
            cam_targets.append(target)
            if target.whole_channel:
                category = target.category
                score_targets.append(lambda output, c=category: output[c].sum())
            else:
                score_targets.append(SemanticSegmentationTarget(target.category, target.mask))
        elif isinstance(target, SemanticSegmentationTarget):
            cam_targets.append(SlidingSegmentationTarget(int(target.category), mask=target.mask))
            score_targets.append(target)
        else:
            cam_targets.append(target)
            score_targets.append(target)
    return cam_targets, score_targets


class _SlidingInference(nn.Module):
    """Whole-volume output of a patch network: Gaussian-weighted mean of overlapping patch outputs.

    ``(N, C, *S)`` → ``(N, K, *S)`` for a network ``(N, C, *patch)`` → ``(N, K, *patch)``; the volume
    is zero-padded to at least the patch (as :class:`medcam3d.sliding.SlidingWindowCAM` does) and the
    padding cropped from the output.
    """

    def __init__(self, network: nn.Module, patch_size: Sequence[int], step_size: float) -> None:
        super().__init__()
        self.network = network
        self.patch_size = tuple(int(p) for p in patch_size)
        self.step_size = float(step_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        from medcam3d.metrics._common import select_output
        from medcam3d.sliding import gaussian_importance_map, patch_slicers

        spatial = tuple(x.shape[2:])
        offset = len(spatial) - len(self.patch_size)
        pad = [(0, 0)] * offset + [
            ((max(p - s, 0)) // 2, max(p - s, 0) - max(p - s, 0) // 2)
            for s, p in zip(spatial[offset:], self.patch_size)
        ]
        flat = [v for before_after in reversed(pad) for v in before_after]
        padded = F.pad(x, flat) if any(flat) else x
        importance = gaussian_importance_map(self.patch_size, device=x.device, dtype=x.dtype)
        total: torch.Tensor | None = None
        weight = torch.zeros(padded.shape[2:], device=x.device, dtype=x.dtype)
        for slicer in patch_slicers(tuple(padded.shape[2:]), self.patch_size, self.step_size):
            patch = padded[(slice(None), *slicer)]
            out = select_output(self.network(patch))
            if tuple(out.shape[2:]) != self.patch_size:
                raise InputShapeError(
                    f"With patch_size the network must return (N, K, *patch); it returned "
                    f"{tuple(out.shape)} for a patch {tuple(patch.shape)}."
                )
            if total is None:
                total = torch.zeros(
                    (x.shape[0], out.shape[1], *padded.shape[2:]), device=x.device, dtype=x.dtype
                )
            total[(slice(None), *slicer)] += out * importance
            weight[slicer[1:]] += importance
        assert total is not None
        crop = tuple(slice(a, a + s) for s, (a, _) in zip(spatial, pad))
        return (total / weight.clamp_min(torch.finfo(x.dtype).tiny))[(slice(None), slice(None), *crop)]


# ------------------------------------------------------------------------------------- maps
def _maps_direct(
    cls: type,
    kwargs: dict[str, Any],
    model: nn.Module,
    layers: list[str],
    x: torch.Tensor,
    targets: list[Any],
    shared: bool,
) -> list[tuple[np.ndarray, float]]:
    """``(maps (N, *S), seconds)`` per layer, from one call over every layer when possible."""
    if shared and len(layers) > 1 and getattr(cls, "normalize_layer_maps", True):
        tic = time.perf_counter()
        cam = cls(model=model, target_layers=list(layers), **kwargs)
        result = cam.compute(x, targets)
        seconds = time.perf_counter() - tic
        if len(result.layer_maps) == len(layers):
            return [
                (m.detach().to("cpu", torch.float32).numpy(), seconds / len(layers))
                for m in result.layer_maps
            ]
    out = []
    for layer in layers:
        tic = time.perf_counter()
        cam = cls(model=model, target_layers=[layer], **kwargs)
        maps = cam.compute(x, targets).maps
        out.append((maps.detach().to("cpu", torch.float32).numpy(), time.perf_counter() - tic))
    return out


def _maps_sliding(
    cls: type,
    kwargs: dict[str, Any],
    model: nn.Module,
    layers: list[str],
    x: torch.Tensor,
    targets: list[Any],
    patch_size: Sequence[int],
    step_size: float,
) -> list[tuple[np.ndarray, float]]:
    from medcam3d.sliding import sliding_window_cam

    out = []
    for layer in layers:
        tic = time.perf_counter()
        cam = cls(model=model, target_layers=[layer], **kwargs)
        maps = [
            sliding_window_cam(cam, x[i], patch_size, [targets[i]], step_size=step_size, progress=False)[0]
            for i in range(x.shape[0])
        ]
        stacked = torch.stack(maps).detach().to("cpu", torch.float32).numpy()
        out.append((stacked, time.perf_counter() - tic))
    return out


# ------------------------------------------------------------------------------------- compare
def compare(
    model: nn.Module,
    input_tensor: torch.Tensor,
    targets: Sequence[Any] | Any | None,
    methods: Sequence[str | type],
    layers: Sequence[str | nn.Module] | str | nn.Module,
    masks: Any = None,
    *,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 0.0,
    faithfulness: bool = True,
    steps: int = 20,
    baseline: Any = "zero",
    road: bool = False,
    road_percentiles: Sequence[float] = (20, 50, 80),
    road_imputer: Any = None,
    sanity: bool = False,
    rank_by: str = "auto",
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    patch_size: Sequence[int] | None = None,
    step_size: float = 0.5,
    shared_forward: bool = True,
    keep_maps: bool = True,
    batch_memory_bytes: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> CompareResult:
    """Run every method on every layer, score each map and rank them (see the module docstring).

    Args:
        model: the network (classifier ``(N, C, *S) -> (N, classes)`` or segmenter
            ``-> (N, classes, *S)``); its parameters and train/eval flags are left as they were.
        input_tensor: ``(N, C, *S)`` with 1, 2 or 3 spatial axes (``(N, C, D, H, W)`` for volumes).
        targets: one target per sample (medcam3d or pytorch-grad-cam targets:
            ``ClassifierOutputTarget(c)``, ``SemanticSegmentationTarget(c, mask)``...) or one for all;
            ``None``: each sample's predicted class (classifiers). Maps explain these targets and the
            curves score them.
        methods: registry names (``"gradcam"``, see :func:`medcam3d.available_methods`) or classes.
        layers: target layers, dotted names or modules of ``model``.
        masks: ground truth for localisation, ``(N, *S)`` or one ``(*S)`` for every sample (non-zero
            voxels), on the input's grid; ``None`` skips localisation.
        spacing: voxel size in mm per spatial axis, array order (``(z, y, x)``), for the pointing
            game's distances; default 1 mm.
        tolerance_mm: pointing-game tolerance (0: the peak must be inside the mask).
        faithfulness: compute the deletion and insertion curves.
        steps: curve steps (``2 · steps`` forward passes per row and sample).
        baseline: the curves' baseline (``"zero"``, ``"blur"``, ``"mean"`` or a tensor).
        road: compute ROADCombined over ``road_percentiles`` (costly on volumes).
        road_imputer: ROAD's imputer (default ``NoisyLinearImputer()``, noise 0.01; pass
            ``NoisyLinearImputer(generator=...)`` or ``noise=0`` for repeatable scores).
        sanity: compute the randomisation similarity (not with ``patch_size``).
        rank_by: ``"auto"`` or a column of :data:`RANK_KEYS`.
        method_kwargs: ``{method name: {option: value}}`` for the method constructors (a method
            taking ``seed``, as RandomCAM, gets ``seed=0`` unless given).
        patch_size: the network's input size for volumes larger than it: maps by sliding window and
            the curves scored on the sliding-window output of the whole volume.
        step_size: sliding-window step as a fraction of the patch.
        shared_forward: compute all layers of a method in one call when the method allows it (same
            maps as one call per layer, fewer passes); ``False`` times each layer on its own.
        keep_maps: keep each row's maps (``row.maps``).
        batch_memory_bytes, batch_size: chunking of the perturbed forward passes (see
            :func:`~medcam3d.metrics.curves.deletion_curve`).
        progress: tqdm bars over the rows.

    Returns:
        :class:`CompareResult`, rows best first.

    Raises:
        ConfigurationError: unknown method, duplicate methods or layers, an unknown ``rank_by``,
            nothing to rank by, ``sanity`` with ``patch_size``.
        LayerNotFoundError: a layer that is not in the model (with the closest names).
        InputShapeError / TargetError: input, masks or targets that do not fit.
    """
    from tqdm.auto import tqdm

    from medcam3d.core.model import model_device
    from medcam3d.metrics._common import DEFAULT_BATCH_MEMORY_BYTES, check_input

    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    entries = _method_entries(methods)
    names = _layer_names(model, layers)
    if rank_by not in RANK_KEYS:
        raise ConfigurationError(f"rank_by must be one of {', '.join(RANK_KEYS)}, got {rank_by!r}.")
    if sanity and patch_size is not None:
        raise ConfigurationError(
            "sanity=True runs the method on the whole input, which a patch network (patch_size) cannot "
            "take; run compare without sanity, or on inputs of the patch size."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"steps must be a positive integer, got {steps!r}.")
    x = check_input(input_tensor).detach().to(model_device(model))
    n, spatial = x.shape[0], tuple(x.shape[2:])
    if spacing is not None and len(tuple(spacing)) != len(spatial):
        raise ConfigurationError(
            f"spacing {tuple(spacing)} needs one value per spatial axis of the input {spatial}."
        )
    voxel = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * len(spatial)
    mask_array = _masks(masks, n, spatial)
    key = rank_by
    if key == "auto":
        key = "localisation" if mask_array is not None else "insertion_minus_deletion"
    needs = {
        "localisation": mask_array is not None,
        "pointing_game": mask_array is not None,
        "energy": mask_array is not None,
        "dice_otsu": mask_array is not None,
        "auroc": mask_array is not None,
        "insertion_minus_deletion": faithfulness,
        "deletion_auc": faithfulness,
        "insertion_auc": faithfulness,
        "road": road,
        "sanity_spearman": sanity,
    }
    if not needs[key]:
        raise ConfigurationError(
            f"Cannot rank by {key!r}: it is not computed with these options (masks, faithfulness, road, "
            "sanity). Pass masks, or leave faithfulness=True, or choose another rank_by."
        )
    if patch_size is not None:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) not in (len(spatial), len(spatial) - 1) or min(patch) < 1:
            raise ConfigurationError(
                f"patch_size {patch} must have one positive size per spatial axis of the input {spatial} "
                "(or one fewer, a 2D network on a volume)."
            )
    resolved = _resolve_targets(model, x, targets, patch_size)
    cam_targets, score_targets = _cam_and_score_targets(resolved, patch_size is not None)
    scorer: nn.Module = model if patch_size is None else _SlidingInference(model, patch_size, step_size)
    memory = DEFAULT_BATCH_MEMORY_BYTES if batch_memory_bytes is None else batch_memory_bytes
    top_group: list[str] | None = None
    if sanity:
        from medcam3d.metrics.sanity import randomisation_groups

        top_group = randomisation_groups(model, x)[0][1]

    rows: list[CompareRow] = []
    bar = tqdm(total=len(entries) * len(names), desc="compare", unit="map", disable=not progress)
    try:
        for name, cls in entries:
            kwargs = _kwargs_for(name, cls, method_kwargs)
            if patch_size is None:
                per_layer = _maps_direct(cls, kwargs, model, names, x, cam_targets, shared_forward)
            else:
                per_layer = _maps_sliding(cls, kwargs, model, names, x, cam_targets, patch_size, step_size)
            for layer, (maps, seconds) in zip(names, per_layer):
                row = CompareRow(method=name, layer=layer, seconds_cam=seconds)
                if faithfulness:
                    _score_curves(row, scorer, x, maps, score_targets, steps, baseline, memory, batch_size)
                if road:
                    _score_road(
                        row,
                        scorer,
                        x,
                        maps,
                        score_targets,
                        road_percentiles,
                        road_imputer,
                        memory,
                        batch_size,
                    )
                if sanity:
                    assert top_group is not None
                    _score_sanity(row, model, cls, kwargs, layer, x, cam_targets, top_group)
                if mask_array is not None:
                    _score_localisation(row, maps, mask_array, voxel, tolerance_mm)
                row.maps = maps if keep_maps else None
                rows.append(row)
                logger.info(
                    "%s @ %s: %s", name, layer, ", ".join(f"{k} {_fmt(row.value(k))}" for k in _LOG_KEYS)
                )
                bar.update()
    finally:
        bar.close()
    _rank(rows, key)
    settings = {
        "steps": steps if faithfulness else None,
        "baseline": baseline if isinstance(baseline, str) else "tensor",
        "road_percentiles": list(road_percentiles) if road else None,
        "sanity": bool(sanity),
        "tolerance_mm": float(tolerance_mm),
        "spacing": list(voxel),
        "patch_size": list(patch_size) if patch_size is not None else None,
        "samples": n,
        "shared_forward": bool(shared_forward),
    }
    return CompareResult(rows=rows, rank_by=key, settings=settings)


_LOG_KEYS = ("deletion_auc", "insertion_auc", "localisation")


def _score_curves(
    row: CompareRow,
    scorer: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    targets: list[Any],
    steps: int,
    baseline: Any,
    memory: int,
    batch_size: int | None,
) -> None:
    from medcam3d.metrics.curves import deletion_insertion

    tic = time.perf_counter()
    deletion, insertion = deletion_insertion(
        scorer,
        x,
        maps,
        targets,
        steps=steps,
        baseline=baseline,
        batch_memory_bytes=memory,
        batch_size=batch_size,
        progress=False,
    )
    row.deletion_auc = float(np.mean(deletion.auc))
    row.insertion_auc = float(np.mean(insertion.auc))
    row.seconds_faithfulness = time.perf_counter() - tic


def _score_road(
    row: CompareRow,
    scorer: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    targets: list[Any],
    percentiles: Sequence[float],
    imputer: Any,
    memory: int,
    batch_size: int | None,
) -> None:
    from medcam3d.metrics.road import ROADCombined

    tic = time.perf_counter()
    values = ROADCombined(percentiles=list(percentiles), imputer=imputer)(
        x, maps, targets, scorer, batch_memory_bytes=memory, batch_size=batch_size
    )
    row.road = float(np.mean(values))
    row.seconds_road = time.perf_counter() - tic


def _score_sanity(
    row: CompareRow,
    model: nn.Module,
    cls: type,
    kwargs: dict[str, Any],
    layer: str,
    x: torch.Tensor,
    targets: list[Any],
    top_group: list[str],
) -> None:
    from medcam3d.errors import ValueRangeError
    from medcam3d.metrics.sanity import model_randomisation_test

    tic = time.perf_counter()
    try:
        result = model_randomisation_test(
            model, cls, [layer], x, targets, layers=[top_group], method_kwargs=kwargs, keep_maps=False
        )
        row.sanity_spearman = float(result.steps[0].spearman_abs)
    except ValueRangeError as error:  # a constant map has no ranking to compare
        logger.warning("Sanity check of %s @ %s skipped: %s", row.method, layer, error)
    row.seconds_sanity = time.perf_counter() - tic


def _score_localisation(
    row: CompareRow, maps: np.ndarray, masks: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float
) -> None:
    from medcam3d.metrics.localisation import localisation_scores

    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a map without positive mass: NaN energy
        scores = localisation_scores(maps, masks, spacing, tolerance_mm=tolerance_mm)
    listed = scores if isinstance(scores, list) else [scores]
    row.pointing_game = float(np.mean([s.pointing_game for s in listed]))
    row.energy = float(np.mean([s.energy for s in listed]))
    row.dice_otsu = float(np.mean([s.dice_otsu for s in listed]))
    row.auroc = float(np.mean([s.auroc for s in listed]))
    row.peak_distance_mm = float(np.mean([s.peak_distance_mm for s in listed]))
    parts = [row.value(k) for k in LOCALISATION_COLUMNS]
    row.localisation = float(np.mean([p if math.isfinite(p) else 0.0 for p in parts]))
    row.seconds_localisation = time.perf_counter() - tic


def _rank(rows: list[CompareRow], key: str) -> None:
    sign = 1.0 if key in _LOWER_IS_BETTER else -1.0

    def order(item: tuple[int, CompareRow]) -> tuple[float, float, int]:
        index, row = item
        value = row.value(key)
        primary = sign * value if math.isfinite(value) else math.inf
        tie = row.insertion_minus_deletion
        return (primary, -tie if math.isfinite(tie) else 0.0, index)

    ranked = sorted(enumerate(rows), key=order)
    rows[:] = [row for _, row in ranked]
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
        row.score = row.value(key)
