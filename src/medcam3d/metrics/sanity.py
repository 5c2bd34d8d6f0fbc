"""Sanity checks for saliency maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

A map that explains the *model* must change when the model's learned parameters are destroyed.
:func:`model_randomisation_test` re-initialises the parameters of a **deep copy** of the model, group
by group from the output side down, recomputes the map with the same method class and settings on
the copy, and measures how similar the randomised map still is to the original one:

* ``mode="cascading"``: step ``k`` randomises the top ``k + 1`` groups (cumulative);
* ``mode="independent"``: step ``k`` randomises group ``k`` alone (a fresh copy per step).

Similarity is the Spearman rank correlation of the two maps (of their values and of their absolute
values) and the structural similarity index (SSIM, Gaussian window, 1-3 spatial axes). The caller's
model is never modified: not its parameters, buffers, train/eval flags or ``requires_grad`` flags,
also when a step raises.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from medcam3d.core.model import unwrap_compiled
from medcam3d.errors import (
    ConfigurationError,
    InputShapeError,
    LayerNotFoundError,
    NonFiniteInputError,
    OutputPathError,
    ValueRangeError,
    require_extra,
)
from medcam3d.metrics._loc_inputs import as_numpy
from medcam3d.metrics._loc_ranks import average_ranks

__all__ = [
    "SanityStep",
    "SanityResult",
    "model_randomisation_test",
    "randomisation_groups",
    "spearman_correlation",
    "ssim",
    "MODES",
    "DEFAULT_THRESHOLD",
]

logger = logging.getLogger(__name__)

#: The two randomisation schemes of Adebayo et al.
MODES = ("cascading", "independent")
#: Similarity below which a method "passes" (see :meth:`SanityResult.verdict`).
DEFAULT_THRESHOLD = 0.5
_METRICS = ("spearman", "spearman_abs", "ssim")
_INITS = ("reset", "normal")
_FIGURE_ENDINGS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

LayerGroups = Sequence[Union[str, Sequence[str]]]


# ------------------------------------------------------------------------------------- similarity
def spearman_correlation(a: Any, b: Any, absolute: bool = False) -> float:
    """Spearman rank correlation of two maps of the same shape (all values pooled).

    Ranks are averaged over ties (as ``scipy.stats.spearmanr``); the correlation is Pearson's of the
    ranks. NaN when either map is constant (no ranking).

    Args:
        a, b: maps, any identical shape (numpy or torch), e.g. ``(D, H, W)``.
        absolute: rank ``|a|`` and ``|b|`` instead (for signed maps, where the sign is arbitrary).
    """
    x = _finite(a, "a").ravel()
    y = _finite(b, "b").ravel()
    if x.shape != y.shape:
        raise InputShapeError(f"The maps have different sizes ({x.size} and {y.size} values).")
    if absolute:
        x, y = np.abs(x), np.abs(y)
    return _rank_correlation(_unit_ranks(x), _unit_ranks(y))


def _unit_ranks(values: np.ndarray) -> np.ndarray | None:
    """Average ranks, centred and scaled to unit length (``None`` for a constant map)."""
    flat = values.ravel()
    if flat.size < 2 or np.all(flat == flat[0]):
        return None
    ranks = average_ranks(flat)
    ranks -= ranks.mean()
    return ranks / math.sqrt(float((ranks * ranks).sum()))


def _rank_correlation(x: np.ndarray | None, y: np.ndarray | None) -> float:
    if x is None or y is None:
        return float("nan")
    return float(np.clip(x @ y, -1.0, 1.0))


def _finite(value: Any, name: str) -> np.ndarray:
    array = as_numpy(value, name).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise NonFiniteInputError(f"Map {name} holds NaN/Inf values; similarity needs finite maps.")
    return array


def _gaussian_window(sigma: float, truncate: float, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(B, *S)`` over every spatial axis, valid part only (each axis
    shrinks by ``len(window) - 1``): a weighted sum of shifted views, exact in float64."""
    width = window.numel()
    for axis in range(1, x.ndim):
        length = x.shape[axis] - width + 1
        out = x.narrow(axis, 0, length) * window[0]
        for k in range(1, width):
            out = out + x.narrow(axis, k, length) * window[k]
        x = out
    return x


def ssim(
    a: Any,
    b: Any,
    data_range: float | None = None,
    *,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
    spatial_dims: int | None = None,
) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) of two maps with 1, 2 or 3 spatial axes, in torch.

    A Gaussian window (``sigma``, cut at ``truncate * sigma``, i.e. 11 voxels wide by default) gives
    local means, variances (normalised by the window weights, i.e. population covariances) and the
    covariance; the SSIM map is averaged over the voxels whose window lies inside the image. With
    ``data_range`` set this is ``skimage.metrics.structural_similarity(a, b, data_range=...,
    gaussian_weights=True, sigma=sigma, use_sample_covariance=False)``.

    Args:
        a, b: maps ``(*S)``, or batches ``(N, *S)`` with ``spatial_dims`` given; numpy or torch.
        data_range: the value range used for the stabilising constants ``(k1 R)^2`` and ``(k2 R)^2``;
            default: the joint range ``max - min`` of both maps (1.0 for maps normalised to [0, 1]
            that reach both ends; 1.0 when both maps are constant).
        sigma, truncate: the Gaussian window.
        k1, k2: the SSIM constants.
        spatial_dims: how many trailing axes are spatial (default: all of them).

    Returns:
        the mean SSIM in [-1, 1] (a float, or ``(N,)`` for a batch).
    """
    x = torch.as_tensor(_finite(a, "a"))
    y = torch.as_tensor(_finite(b, "b"))
    if x.shape != y.shape:
        raise InputShapeError(f"The maps have different shapes: {tuple(x.shape)} and {tuple(y.shape)}.")
    rank = x.ndim if spatial_dims is None else int(spatial_dims)
    if rank not in (1, 2, 3) or x.ndim not in (rank, rank + 1):
        raise InputShapeError(
            f"ssim needs maps (*S) or batches (N, *S) with 1, 2 or 3 spatial axes; got shape "
            f"{tuple(x.shape)} with spatial_dims={spatial_dims}."
        )
    if sigma <= 0 or truncate <= 0:
        raise ValueRangeError(f"sigma and truncate must be positive, got {sigma} and {truncate}.")
    batched = x.ndim == rank + 1
    x = x.reshape(-1, *x.shape[x.ndim - rank :])
    y = y.reshape(x.shape)
    window = _gaussian_window(float(sigma), float(truncate), x.dtype)
    if min(x.shape[1:]) < window.numel():
        raise InputShapeError(
            f"SSIM with sigma={sigma} needs at least {window.numel()} voxels along every spatial axis, "
            f"the maps have {tuple(x.shape[1:])}; lower sigma (or truncate)."
        )
    if data_range is None:
        joint = torch.cat([x.flatten(1), y.flatten(1)], dim=1)
        ranges = joint.max(dim=1).values - joint.min(dim=1).values
        ranges = torch.where(ranges > 0, ranges, torch.ones_like(ranges))
    else:
        if not (math.isfinite(float(data_range)) and float(data_range) > 0):
            raise ValueRangeError(f"data_range must be positive and finite, got {data_range!r}.")
        ranges = torch.full((x.shape[0],), float(data_range), dtype=x.dtype)
    shape = (-1,) + (1,) * rank
    c1 = ((k1 * ranges) ** 2).reshape(shape)
    c2 = ((k2 * ranges) ** 2).reshape(shape)
    n = x.shape[0]
    stats = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), window)
    mx, my, mxx, myy, mxy = (
        stats[:n],
        stats[n : 2 * n],
        stats[2 * n : 3 * n],
        stats[3 * n : 4 * n],
        stats[4 * n :],
    )
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    index = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    values = index.flatten(1).mean(dim=1).numpy()
    return values.astype(np.float64) if batched else float(values[0])


# ------------------------------------------------------------------------------------- layer groups
def _own_parameter_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None
    }


def _group_by_prefix(names: list[str]) -> dict[str, list[str]]:
    """Group module names by their shortest dotted prefix that splits them into two or more groups."""
    deepest = max((len(n.split(".")) if n else 0 for n in names), default=0)
    groups: dict[str, list[str]] = {}
    for depth in range(1, max(deepest, 1) + 1):
        groups = {}
        for name in names:
            key = ".".join(name.split(".")[:depth]) if name else ""
            groups.setdefault(key, []).append(name)
        if len(groups) >= 2:
            break
    return groups


def _execution_order(model: nn.Module, run: Callable[[], Any]) -> dict[str, int]:
    """The order in which the modules that own parameters are first called during ``run()``."""
    order: dict[str, int] = {}
    handles = []
    for name, module in _own_parameter_modules(model).items():

        def hook(_module: nn.Module, _inputs: Any, name: str = name) -> None:
            order.setdefault(name, len(order))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return order


def randomisation_groups(
    model: nn.Module, input_tensor: torch.Tensor | None = None
) -> list[tuple[str, list[str]]]:
    """The default randomisation steps: every module that owns parameters, grouped by top-level block,
    ordered from the output side down.

    Modules are grouped by the shortest dotted-name prefix that gives two or more groups (the model's
    top-level children, usually). With ``input_tensor`` the order is the order the modules run in a
    forward pass (on a deep copy, without gradients) and modules that never run are left out; without
    it, the order of registration.

    Returns:
        ``[(group_name, [module names]), ...]``, the group nearest the output first.
    """
    base = unwrap_compiled(model)
    owners = list(_own_parameter_modules(base))
    if input_tensor is not None:
        work = copy.deepcopy(base)

        def forward() -> None:
            with torch.no_grad():
                work(input_tensor)

        rank = _execution_order(work, forward)
    else:
        rank = {name: i for i, name in enumerate(owners)}
    return _groups_from_order(owners, rank)


def _groups_from_order(owners: list[str], rank: dict[str, int]) -> list[tuple[str, list[str]]]:
    skipped = [n for n in owners if n not in rank]
    if skipped:
        logger.info("Not randomised (never ran in the forward pass): %s", ", ".join(skipped))
    used = sorted((n for n in owners if n in rank), key=lambda n: rank[n])
    groups = _group_by_prefix(used)
    ordered = sorted(groups.items(), key=lambda item: max(rank[n] for n in item[1]), reverse=True)
    return [(key or "(model)", members) for key, members in ordered]


def _resolve_steps(model: nn.Module, layers: LayerGroups) -> list[tuple[str, list[str]]]:
    modules = dict(model.named_modules())
    owners = _own_parameter_modules(model)
    steps = []
    for entry in layers:
        names = [entry] if isinstance(entry, str) else list(entry)
        if not names:
            raise ConfigurationError(
                "An entry of layers is empty; give module names, e.g. layers=['fc', 'layer4']."
            )
        members: list[str] = []
        for raw in names:
            name = re.sub(r"\[(-?\d+)\]", r".\1", str(raw)).strip(".")
            if name not in modules:
                import difflib

                close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise LayerNotFoundError(f"The model has no module named {raw!r} to randomise.{hint}")
            prefix = f"{name}." if name else ""
            found = [n for n in owners if n == name or n.startswith(prefix)]
            if not found:
                raise ConfigurationError(f"Module {raw!r} has no parameters to randomise.")
            members.extend(n for n in found if n not in members)
        steps.append((", ".join(str(n) for n in names), members))
    return steps


def _randomise(model: nn.Module, members: list[str], init: str, seed: int) -> None:
    """Re-initialise the parameters owned by the named modules of ``model`` (in place, seeded)."""
    modules = dict(model.named_modules())
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for name in members:
            module = modules[name]
            reset = getattr(module, "reset_parameters", None)
            if init == "reset" and callable(reset):
                reset()
                continue
            for parameter in module.parameters(recurse=False):
                values = parameter.detach().float()
                std = float(values.std()) if values.numel() > 1 else 0.0
                if not math.isfinite(std) or std == 0.0:
                    std = float(values.abs().mean()) or 1.0
                parameter.normal_(0.0, std)


# ------------------------------------------------------------------------------------- results
@dataclass
class SanityStep:
    """One randomisation step.

    Attributes:
        index: 0 for the first step (the top group).
        name: the group's name (a module-name prefix, or the names given in ``layers``).
        layers: the modules whose own parameters this step re-initialised (in ``"independent"`` mode)
            or that are random after it (in ``"cascading"`` mode: this step's and every earlier one's).
        spearman, spearman_abs, ssim: similarity of the randomised and the original map, mean over
            the batch (see :func:`model_randomisation_test`).
        spearman_per_sample, spearman_abs_per_sample, ssim_per_sample: ``(N,)`` the same per sample.
        maps: ``(N, *S)`` the randomised maps (``None`` with ``keep_maps=False``).
    """

    index: int
    name: str
    layers: tuple[str, ...]
    spearman: float
    spearman_abs: float
    ssim: float
    spearman_per_sample: np.ndarray
    spearman_abs_per_sample: np.ndarray
    ssim_per_sample: np.ndarray
    maps: np.ndarray | None = None


@dataclass
class SanityResult:
    """What :func:`model_randomisation_test` found.

    Attributes:
        method: the method class's name.
        target_layers: the target layer names.
        mode: ``"cascading"`` or ``"independent"``.
        seed: the seed of the first step (step ``k`` uses ``seed + k``).
        init: ``"reset"`` or ``"normal"``.
        original_maps: ``(N, *S)`` the maps of the unchanged model.
        steps: one :class:`SanityStep` per randomisation step, from the output side down.
    """

    method: str
    target_layers: list[str]
    mode: str
    seed: int
    init: str
    original_maps: np.ndarray
    steps: list[SanityStep] = field(default_factory=list)

    def similarity(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(steps,)`` one similarity per step (``"spearman"``, ``"spearman_abs"`` or ``"ssim"``)."""
        if metric not in _METRICS:
            raise ConfigurationError(f"metric must be one of {_METRICS}, got {metric!r}.")
        return np.asarray([getattr(step, metric) for step in self.steps], dtype=np.float64)

    def verdict(
        self, threshold: float = DEFAULT_THRESHOLD, metric: str = "spearman_abs", top_steps: int = 1
    ) -> str:
        """``"passes"`` when the map is no longer similar to the original once the top layers are random.

        Cascading mode: the similarity after the first ``top_steps`` steps (the top ``top_steps``
        groups randomised together) must be below ``threshold``. Independent mode: the similarity
        after each of the first ``top_steps`` steps (each group randomised alone) must be below
        ``threshold``. Otherwise ``"fails"``: the map hardly depends on those parameters, which is the
        failure Adebayo et al. reported for guided backprop.
        """
        values = self.similarity(metric)
        if not 1 <= int(top_steps) <= len(values):
            raise ConfigurationError(f"top_steps must be between 1 and {len(values)}, got {top_steps}.")
        if self.mode == "cascading":
            value = float(values[int(top_steps) - 1])
        else:
            value = float(values[: int(top_steps)].max())
        return "passes" if value < float(threshold) else "fails"

    @property
    def passes(self) -> bool:
        """``verdict() == "passes"`` with the defaults."""
        return self.verdict() == "passes"

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain ``dict`` per step: step, mode, group, layers, spearman, spearman_abs, ssim."""
        return [
            {
                "step": step.index,
                "mode": self.mode,
                "group": step.name,
                "layers": ", ".join(step.layers),
                "spearman": step.spearman,
                "spearman_abs": step.spearman_abs,
                "ssim": step.ssim,
            }
            for step in self.steps
        ]

    def table(self) -> str:
        """The steps as a plain-text table (one line per step), with the verdict underneath."""
        header = f"{'step':>4}  {'randomised':<28} {'spearman':>9} {'|spearman|':>10} {'ssim':>7}"
        lines = [f"{self.method} on {', '.join(self.target_layers)}, {self.mode} randomisation", header]
        for step in self.steps:
            lines.append(
                f"{step.index:>4}  {step.name[:28]:<28} {step.spearman:>9.3f} {step.spearman_abs:>10.3f} "
                f"{step.ssim:>7.3f}"
            )
        lines.append(f"verdict: {self.verdict()} (|spearman| after the top group < {DEFAULT_THRESHOLD})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, sample: int = 0, threshold: float = DEFAULT_THRESHOLD) -> Any:
        """The classic figure: similarity against randomisation depth, and the maps themselves.

        Top: Spearman (signed and absolute) and SSIM for the original model (1.0) and after each
        step, with ``threshold`` dashed. Bottom: the original map and each randomised map of
        ``sample`` (for volumes the axial slice ``z`` through the original map's maximum; each panel
        scaled to its own range; 1-D maps as curves). Needs ``medcam3d[viz]`` (matplotlib).

        Returns:
            a ``matplotlib.figure.Figure`` (not attached to pyplot).
        """
        require_extra("matplotlib", "viz", "sanity-check figures")
        from matplotlib.figure import Figure

        if not 0 <= sample < self.original_maps.shape[0]:
            raise ConfigurationError(f"sample must be in [0, {self.original_maps.shape[0]}), got {sample}.")
        panels = [("original", self.original_maps[sample])]
        for step in self.steps:
            if step.maps is not None:
                panels.append((step.name, step.maps[sample]))
        columns = max(len(panels), 2)
        figure = Figure(figsize=(max(2.2 * columns, 6.0), 6.0), layout="constrained")
        grid = figure.add_gridspec(2, columns, height_ratios=(1.2, 1.0))
        axes = figure.add_subplot(grid[0, :])
        depth = np.arange(len(self.steps) + 1)
        labels = ["original"] + [step.name for step in self.steps]
        for metric, style in (("spearman", "o-"), ("spearman_abs", "s--"), ("ssim", "^-")):
            values = np.concatenate([[1.0], self.similarity(metric)])
            axes.plot(depth, values, style, label=metric.replace("_abs", " (abs)"))
        axes.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
        axes.set_xticks(depth, labels, rotation=30, ha="right")
        axes.set_ylim(min(-0.1, float(np.nanmin(self._all_values())) - 0.05), 1.05)
        axes.set_ylabel("similarity to the original map")
        axes.set_xlabel(f"{self.mode} randomisation, output side first")
        axes.set_title(f"{self.method} ({', '.join(self.target_layers)}): {self.verdict(threshold)}")
        axes.legend(loc="best", fontsize="small")
        original = self.original_maps[sample]
        slicer = self._slicer(original)
        for column, (title, cam) in enumerate(panels):
            ax = figure.add_subplot(grid[1, column])
            view = cam[slicer]
            if view.ndim == 1:
                ax.plot(view)
            else:
                ax.imshow(
                    view, cmap="jet", interpolation="nearest", vmin=float(view.min()), vmax=float(view.max())
                )
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_title(title, fontsize="small")
        return figure

    def _all_values(self) -> np.ndarray:
        return np.concatenate([self.similarity(m) for m in _METRICS] + [np.ones(1)])

    @staticmethod
    def _slicer(original: np.ndarray) -> tuple[Any, ...]:
        if original.ndim == 3:
            peak = np.unravel_index(int(np.argmax(original)), original.shape)
            return (int(peak[0]), slice(None), slice(None))
        return (slice(None),) * original.ndim

    def save_figure(
        self, path: str | os.PathLike[str], overwrite: bool = True, dpi: float = 120, **plot_kwargs: Any
    ) -> Path:
        """Draw :meth:`plot` and write it atomically to ``path`` (``.png``, ``.pdf``, ``.svg``, ``.jpg``)."""
        from medcam3d._atomic import atomic_path

        out = Path(path)
        if out.suffix.lower() not in _FIGURE_ENDINGS:
            raise OutputPathError(f"Cannot write a figure to {out}: use one of {', '.join(_FIGURE_ENDINGS)}.")
        figure = self.plot(**plot_kwargs)
        fmt = out.suffix.lower().lstrip(".")
        with atomic_path(out, overwrite=overwrite) as tmp:
            figure.savefig(tmp, dpi=dpi, format="jpeg" if fmt == "jpg" else fmt)
        logger.info("Wrote %s", out)
        return out


# ------------------------------------------------------------------------------------- the test
def _layer_names(model: nn.Module, target_layers: Any) -> list[str]:
    specs = target_layers if isinstance(target_layers, (list, tuple)) else [target_layers]
    names = []
    lookup = {id(module): name for name, module in model.named_modules()}
    for spec in specs:
        if isinstance(spec, str):
            names.append(spec)
        elif isinstance(spec, nn.Module) and id(spec) in lookup:
            names.append(lookup[id(spec)])
        else:
            raise LayerNotFoundError(
                f"Target layer {spec!r} is neither a module name nor a module of the model; give names "
                "such as 'features' (they are looked up again on every randomised copy)."
            )
    if not names:
        raise ConfigurationError("target_layers is empty; name at least one layer, e.g. ['features'].")
    return names


def _rank_pair(cam: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Unit ranks of a map and of its absolute values (the same when the map is non-negative)."""
    plain = _unit_ranks(cam)
    return plain, (plain if bool(np.all(cam >= 0)) else _unit_ranks(np.abs(cam)))


def _similarities(
    original: np.ndarray,
    original_ranks: list[tuple[np.ndarray | None, np.ndarray | None]],
    randomised: np.ndarray,
    rank: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spearman, spearman_abs = [], []
    for (plain, absolute), cam in zip(original_ranks, randomised):
        other_plain, other_absolute = _rank_pair(cam)
        # a flat randomised map has no ranking, hence no rank association with the original: 0.0
        spearman.append(_rank_correlation(plain, other_plain) if other_plain is not None else 0.0)
        spearman_abs.append(
            _rank_correlation(absolute, other_absolute) if other_absolute is not None else 0.0
        )
    structural = np.atleast_1d(ssim(original, randomised, spatial_dims=rank))
    return (
        np.asarray(spearman, dtype=np.float64),
        np.asarray(spearman_abs, dtype=np.float64),
        np.asarray(structural, dtype=np.float64),
    )


def _maps(
    method: Callable[..., Any],
    model: nn.Module,
    names: list[str],
    kwargs: dict[str, Any],
    x: Any,
    targets: Any,
) -> np.ndarray:
    cam = method(model=model, target_layers=list(names), **kwargs)
    result = cam.compute(x, targets)
    return result.maps.detach().to("cpu", torch.float64).numpy()


def model_randomisation_test(
    model: nn.Module,
    method: Callable[..., Any],
    target_layers: Any,
    input_tensor: torch.Tensor,
    targets: Sequence[Any] | None = None,
    *,
    mode: str = "cascading",
    layers: LayerGroups | None = None,
    seed: int = 0,
    init: str = "reset",
    method_kwargs: dict[str, Any] | None = None,
    keep_maps: bool = True,
    progress: bool = False,
) -> SanityResult:
    """Model-parameter randomisation test (Adebayo et al. 2018) of a CAM method.

    The maps of the unchanged model are compared with maps of copies whose parameters are
    re-initialised, from the output side down. Every map is computed with
    ``method(model=copy, target_layers=names, **method_kwargs).compute(input_tensor, targets)``.

    Args:
        model: the trained network; it is deep-copied and never modified (parameters, buffers,
            train/eval and ``requires_grad`` flags stay bit for bit, also when a step raises).
        method: a CAM method class (``GradCAM``, ``HiResCAM``, ...), not an instance.
        target_layers: layer names (or modules of ``model``, turned into names), looked up on each copy.
        input_tensor: ``(N, C, *S)`` with 1, 2 or 3 spatial axes.
        targets: as for the method (``None``: the top class).
        mode: ``"cascading"`` (step ``k`` randomises the top ``k + 1`` groups) or ``"independent"``
            (step ``k`` randomises group ``k`` alone).
        layers: the steps, top down: each entry a module name or a list of names (all parameters of
            those modules and their children). Default: every module owning parameters that runs in
            the forward pass, grouped by top-level block and ordered by when they run, last first
            (:func:`randomisation_groups`).
        seed: step ``k`` draws with ``torch.manual_seed(seed + k)`` (under ``torch.random.fork_rng``,
            so the caller's random state is untouched); a group gets the same random values in both
            modes.
        init: ``"reset"``: each module's own ``reset_parameters()`` (PyTorch's default initialisation;
            batch norm returns to weight 1, bias 0 and fresh running statistics), a normal draw for
            modules without one; ``"normal"``: every parameter drawn from ``N(0, std of the trained
            tensor)``.
        method_kwargs: keyword arguments for the method (e.g. ``{"normalize": False}``).
        keep_maps: keep each step's maps in the result (for :meth:`SanityResult.plot`).
        progress: show a tqdm progress bar over the steps.

    Similarity, per sample, averaged over the batch: Spearman rank correlation of the two maps
    (``spearman``) and of their absolute values (``spearman_abs``), average ranks for ties; a
    randomised map that is flat (no ranking) counts as 0.0. SSIM (:func:`ssim`, Gaussian window,
    sigma 1.5, data range: the joint range of both maps).

    Returns:
        a :class:`SanityResult`; ``result.verdict()`` says ``"passes"`` when the similarity after
        randomising the top group is below 0.5.

    Raises:
        ConfigurationError: unknown ``mode`` / ``init``, a method instance instead of a class.
        LayerNotFoundError: a target layer or an entry of ``layers`` is not in the model.
        ValueRangeError: an original map is constant (nothing to compare).
    """
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}.")
    if init not in _INITS:
        raise ConfigurationError(f"init must be one of {_INITS}, got {init!r}.")
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(method, type):
        raise ConfigurationError(
            f"method must be a CAM method class (e.g. GradCAM), got an instance of {type(method).__name__}; "
            "pass the class and its settings as method_kwargs, so it can be re-created on each randomised copy."
        )
    if not isinstance(input_tensor, torch.Tensor) or input_tensor.ndim not in (3, 4, 5):
        raise InputShapeError(
            "input_tensor must be a torch tensor (N, C, *S) with 1, 2 or 3 spatial axes, got "
            f"{type(input_tensor).__name__} {tuple(getattr(input_tensor, 'shape', ()))}."
        )
    kwargs = dict(method_kwargs or {})
    base = unwrap_compiled(model)
    names = _layer_names(base, target_layers)
    rank = input_tensor.ndim - 2
    work = copy.deepcopy(base)
    if layers is None:
        holder: dict[str, np.ndarray] = {}

        def original_run() -> None:
            holder["maps"] = _maps(method, work, names, kwargs, input_tensor, targets)

        order = _execution_order(work, original_run)
        original = holder["maps"]
        if not order:  # the method never ran the model's modules itself: one plain forward pass

            def forward() -> None:
                with torch.no_grad():
                    work(input_tensor)

            order = _execution_order(work, forward)
        steps = _groups_from_order(list(_own_parameter_modules(work)), order)
    else:
        steps = _resolve_steps(work, layers)
        original = _maps(method, work, names, kwargs, input_tensor, targets)
    if not steps:
        raise ConfigurationError("The model has no parameters to randomise.")
    for i, cam in enumerate(original):
        if np.all(cam == cam.flat[0]):
            raise ValueRangeError(
                f"The original map of sample {i} is constant ({float(cam.flat[0])}): there is nothing to "
                "compare. Check the target (class) and the target layer."
            )
    result = SanityResult(
        method=method.__name__,
        target_layers=names,
        mode=mode,
        seed=int(seed),
        init=init,
        original_maps=original.astype(np.float32),
    )
    original_ranks = [_rank_pair(cam) for cam in original]
    randomised: list[str] = []
    for index, (group, members) in enumerate(tqdm(steps, desc="randomisation", disable=not progress)):
        if mode == "independent":
            target = copy.deepcopy(base)
            randomised = list(members)
        else:
            target = work
            randomised.extend(members)
        _randomise(target, members, init, int(seed) + index)
        try:
            maps = _maps(method, target, names, kwargs, input_tensor, targets)
        except Exception:
            logger.error("Randomisation step %d (%s) failed; the caller's model is unchanged.", index, group)
            raise
        spearman, spearman_abs, structural = _similarities(original, original_ranks, maps, rank)
        result.steps.append(
            SanityStep(
                index=index,
                name=group,
                layers=tuple(randomised),
                spearman=float(spearman.mean()),
                spearman_abs=float(spearman_abs.mean()),
                ssim=float(structural.mean()),
                spearman_per_sample=spearman,
                spearman_abs_per_sample=spearman_abs,
                ssim_per_sample=structural,
                maps=maps.astype(np.float32) if keep_maps else None,
            )
        )
        logger.info(
            "step %d (%s): spearman %.3f, |spearman| %.3f, ssim %.3f",
            index,
            group,
            spearman.mean(),
            spearman_abs.mean(),
            structural.mean(),
        )
    return result
