"""SESS, Saliency Enhancing with Scaling and Sliding (Tursun et al., ECCV 2022), for 1-3 spatial axes.

The input is resized to several scales; windows of the network's input size slide over every
spatial axis of each scaled input (in 3D, over depth as well as height and width); the
windows that score lowest for the target are dropped (pre-filtering); a base CAM method
explains the others; each window's map, weighted by its score relative to the best window, is
put back at its place in the scaled frame and resized to the input; the maps are fused by a
voxel-wise max or a thresholded mean, and optionally smoothed by a Gaussian. Everything stays
on the model's device.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from medcam3d.core.base import BaseCAM, CAMResult, Target
from medcam3d.core.checks import (
    check_gradients_allowed,
    check_input,
    check_targets,
    default_targets,
    resolve_normalize,
    select_output,
)
from medcam3d.core.gradients import target_scores
from medcam3d.core.layers import LayerSpec
from medcam3d.core.model import conv_spatial_rank, model_state
from medcam3d.core.tensors import interpolation_mode, minmax_normalize, resize_maps
from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.methods.gradient import GradCAM

__all__ = ["SESS", "sliding_window", "window_starts", "window_positions", "gaussian_smooth"]

logger = logging.getLogger(__name__)

#: a method call that runs more forward passes than this logs a warning with the estimate
LONG_RUN_FORWARDS = 300


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Start offsets of windows of size ``window`` every ``step`` along an axis of ``length``;
    a window that would cross the end is shifted back inside (so the end is always covered)."""
    if window > length:
        raise InputShapeError(f"A window of {window} does not fit an axis of length {length}.")
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_positions(
    shape: Sequence[int], step: Sequence[int], window: Sequence[int]
) -> list[tuple[int, ...]]:
    """Every window start, one offset per axis in tensor order (``z, y, x``), last axis fastest."""
    axes = [window_starts(int(n), int(s), int(w)) for n, s, w in zip(shape, step, window)]
    return list(itertools.product(*axes))


def sliding_window(height: int, width: int, step_size: int, window_size: int) -> list[tuple[int, int]]:
    """pytorch-grad-cam's 2D helper: window starts ``(x, y)`` over an image of ``height × width``
    (``x`` varies fastest), windows crossing the border shifted back inside."""
    return [(x, y) for y, x in window_positions((height, width), (step_size,) * 2, (window_size,) * 2)]


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, *S)`` maps along every spatial axis (``sigma`` in voxels,
    kernel radius ``round(sigma)``, mirrored borders as OpenCV's default)."""
    radius = max(1, int(round(sigma)))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1).float()
    rank = out.ndim - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    for axis in range(rank):
        shape = [1, 1] + [1] * rank
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * rank
        pad[2 * (rank - 1 - axis)] = pad[2 * (rank - 1 - axis) + 1] = radius
        mode = "reflect" if out.shape[2 + axis] > radius else "replicate"
        out = conv(F.pad(out, pad, mode=mode), kernel.reshape(shape))
    return out.squeeze(1)


def _per_axis(
    value: int | Sequence[int] | None, rank: int, default: Sequence[int], what: str
) -> tuple[int, ...]:
    if value is None:
        return tuple(int(v) for v in default)
    values = (int(value),) * rank if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(values) != rank or any(v < 1 for v in values):
        raise ConfigurationError(
            f"{what} must be a positive integer or one per spatial axis ({rank}); got {value!r}."
        )
    return values


class SESS:
    """SESS: a base method's maps of windows at several scales, fused (Tursun et al., 2022), N-D.

    Args:
        model, target_layers, reshape_transform: as for every method.
        base_method: the method that explains each window (default :class:`GradCAM`); extra
            keyword arguments go to it.
        num_scales: how many scales when ``scales`` is not given: the shortest spatial axis is
            resized to ``s0 · (1 + 0.25 i)`` for ``i < num_scales``, ``s0`` the smallest size at
            which the windows fit.
        scales: the length of the shortest spatial axis at each scale (the others follow the
            aspect ratio), e.g. ``[224, 256]``; each must fit the window.
        window_size: the window, one size for every axis or one per axis (default: the input's
            spatial shape, i.e. the size the network was given).
        step_size: the step between windows (default: the window, no overlap).
        pool: ``"max"`` (voxel-wise maximum over windows) or ``"mean"`` (mean over the windows
            whose weighted value exceeds ``theta`` there).
        theta: the threshold of the ``"mean"`` pool.
        smooth: blur the fused map with a Gaussian of ``5 · min(S) / 224`` voxels (SESS's 5 px
            at 224), or ``smooth_sigma`` voxels when given.
        pre_filter_ratio: the fraction of each sample's windows with the lowest scores that are
            not explained, in [0, 1) (the best window is always kept).
        use_softmax_scores: score windows by the target applied to the softmax of the output (the
            class probability, SESS's choice) instead of to the raw output; weights are the scores
            divided by each sample's best score (negative raw scores weigh 0).
        batch_size: windows per forward pass of the scoring and the base method.
        progress: a tqdm bar over the chunks of windows.

    ``input_tensor`` ``(N, C, *S)`` → maps ``(N, *S)`` in [0, 1]. Targets apply to one window's
    output, so they must not depend on the input's size (classifier targets).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        base_method: type[BaseCAM] = GradCAM,
        *,
        num_scales: int = 3,
        scales: Sequence[int] | None = None,
        window_size: int | Sequence[int] | None = None,
        step_size: int | Sequence[int] | None = None,
        pool: Literal["max", "mean"] = "max",
        theta: float = 0.0,
        smooth: bool = True,
        smooth_sigma: float | None = None,
        pre_filter_ratio: float = 0.0,
        use_softmax_scores: bool = True,
        batch_size: int = 16,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        if pool not in ("max", "mean"):
            raise ConfigurationError(f"pool must be 'max' or 'mean', got {pool!r}.")
        if not 0.0 <= pre_filter_ratio < 1.0:
            raise ConfigurationError(
                f"pre_filter_ratio must be in [0, 1) (the fraction of windows dropped), got {pre_filter_ratio}."
            )
        if scales is None and (not isinstance(num_scales, int) or num_scales < 1):
            raise ConfigurationError(f"num_scales must be a positive integer, got {num_scales!r}.")
        if scales is not None and (len(scales) == 0 or any(int(s) < 1 for s in scales)):
            raise ConfigurationError(f"scales must be positive lengths, got {scales!r}.")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size}.")
        if smooth_sigma is not None and smooth_sigma <= 0:
            raise ConfigurationError(f"smooth_sigma must be positive, got {smooth_sigma}.")
        normalize = kwargs.pop("normalize", True)
        self.base_cam = base_method(model, target_layers, reshape_transform, **kwargs)
        self.model = model
        self.layer_names = list(self.base_cam.layer_names)
        self.target_layers = list(self.base_cam.target_layers)
        self.uses_gradients = self.base_cam.uses_gradients
        self.return_tensor = self.base_cam.return_tensor
        self.output_index = self.base_cam.output_index
        self.num_scales = num_scales
        self.scales = None if scales is None else [int(s) for s in scales]
        self.window_size = window_size
        self.step_size = step_size
        self.pool = pool
        self.theta = float(theta)
        self.smooth = smooth
        self.smooth_sigma = smooth_sigma
        self.pre_filter_ratio = float(pre_filter_ratio)
        self.use_softmax_scores = use_softmax_scores
        self.batch_size = int(batch_size)
        self.progress = progress
        self.normalize = bool(normalize)
        self.outputs: torch.Tensor | None = None
        self._expected_rank = conv_spatial_rank(model)

    # ------------------------------------------------------------------ geometry
    def geometry(self, spatial: Sequence[int]) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
        """For an input of spatial shape ``spatial``: ``(scaled shape, window starts)`` per scale."""
        rank = len(spatial)
        window = _per_axis(self.window_size, rank, spatial, "window_size")
        step = _per_axis(self.step_size, rank, window, "step_size")
        shortest = min(spatial)
        if self.scales is None:
            fit = max(w * shortest / s for w, s in zip(window, spatial))
            base = math.ceil(fit - 1e-9)
            scales = [int(round(base * (1 + 0.25 * i))) for i in range(self.num_scales)]
        else:
            scales = self.scales
        result = []
        for scale in scales:
            shape = tuple(int(round(s * scale / shortest)) for s in spatial)
            if any(n < w for n, w in zip(shape, window)):
                raise ConfigurationError(
                    f"At scale {scale} the input becomes {shape}, smaller than the window {window}: every "
                    "scale must be at least the window size. Use larger scales or a smaller window_size."
                )
            result.append((shape, window_positions(shape, step, window)))
        return result

    def forward_passes(self, input_tensor: torch.Tensor) -> int:
        """An estimate of the model's forward passes for ``input_tensor``: scoring every window,
        then the base method on the kept ones (its own extra passes counted for perturbation
        methods: one per channel of the target layers)."""
        n = input_tensor.shape[0]
        windows = sum(len(p) for _, p in self.geometry(tuple(input_tensor.shape[2:])))
        kept = max(1, math.ceil(windows * (1 - self.pre_filter_ratio)))
        per_window = 1
        if hasattr(self.base_cam, "chunk_size"):  # a perturbation method: about one pass per channel
            channels = [getattr(m, "out_channels", 0) or 0 for m in self.target_layers]
            per_window += sum(channels) or 64
        return n * (windows + kept * per_window)

    # ------------------------------------------------------------------ computation
    def _scores(self, outputs: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
        if self.use_softmax_scores:
            outputs = torch.softmax(outputs, dim=1)
        return target_scores(outputs, targets).float()

    def _chunks(self, count: int, what: str) -> list[tuple[int, int]]:
        starts = range(0, count, self.batch_size)
        bar = tqdm(starts, desc=what, unit="chunk", disable=not self.progress, leave=False)
        try:
            return [(s, min(s + self.batch_size, count)) for s in bar]
        finally:
            bar.close()

    def _explain_sample(
        self,
        x: torch.Tensor,
        target: Target,
        geometry: list[tuple[tuple[int, ...], list[tuple[int, ...]]]],
        eigen_smooth: bool,
    ) -> torch.Tensor:
        """The fused ``(*S)`` map of one sample ``(1, C, *S)``."""
        spatial = tuple(x.shape[2:])
        mode = interpolation_mode(len(spatial))
        scaled = [F.interpolate(x, size=shape, mode=mode, align_corners=False) for shape, _ in geometry]
        window = _per_axis(self.window_size, len(spatial), spatial, "window_size")
        jobs = [(k, start) for k, (_, starts) in enumerate(geometry) for start in starts]

        def crop(job: tuple[int, tuple[int, ...]]) -> torch.Tensor:
            k, start = job
            index = (slice(None), slice(None), *(slice(a, a + w) for a, w in zip(start, window)))
            return scaled[k][index]

        scores = torch.empty(len(jobs), device=x.device)
        with torch.no_grad():
            for a, b in self._chunks(len(jobs), "SESS scoring"):
                batch = torch.cat([crop(job) for job in jobs[a:b]])
                outputs = select_output(self.model(batch), self.output_index)
                scores[a:b] = self._scores(outputs, [target] * (b - a))
        keep = max(1, math.ceil(len(jobs) * (1 - self.pre_filter_ratio)))
        order = torch.argsort(scores, descending=True, stable=True)[:keep]
        best = scores[order[0]]
        weights = (scores / best).clamp_min(0) if float(best) > 0 else torch.ones_like(scores)
        kept = sorted(int(i) for i in order)
        fused = torch.zeros(spatial, device=x.device)
        count = torch.zeros(spatial, device=x.device) if self.pool == "mean" else None
        for a, b in self._chunks(len(kept), "SESS windows"):
            chosen = kept[a:b]
            batch = torch.cat([crop(jobs[i]) for i in chosen])
            maps = self.base_cam.compute(
                batch, [target] * len(chosen), eigen_smooth=eigen_smooth
            ).maps.float()
            maps = maps * weights[chosen].reshape(-1, *([1] * len(spatial)))
            for row, i in enumerate(chosen):
                k, start = jobs[i]
                canvas = torch.zeros(geometry[k][0], device=x.device)
                canvas[tuple(slice(s, s + w) for s, w in zip(start, window))] = maps[row]
                back = resize_maps(canvas[None], spatial)[0]
                if count is None:
                    fused = torch.maximum(fused, back)
                else:
                    above = back > self.theta
                    fused = fused + torch.where(above, back, torch.zeros_like(back))
                    count = count + above.float()
        if count is not None:
            fused = torch.where(count > 0, fused / count.clamp_min(1), torch.zeros_like(fused))
        return fused

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> CAMResult:
        """Maps ``(N, *S)`` and the model's output on the whole input, as torch tensors.

        ``aug_smooth`` is not supported (SESS is itself a multi-view fusion).
        """
        if aug_smooth:
            raise ConfigurationError("SESS does not combine with aug_smooth: it already fuses many views.")
        check_gradients_allowed()
        normalize = resolve_normalize(self.normalize, normalize)
        x = check_input(input_tensor, self.model, self._expected_rank)
        geometry = self.geometry(tuple(x.shape[2:]))
        estimate = self.forward_passes(x)
        if estimate > LONG_RUN_FORWARDS:
            logger.warning(
                "SESS will run about %d forward passes of the model (%d windows per sample at %d scales). "
                "Bound it with fewer scales (num_scales / scales), a larger step_size, pre_filter_ratio "
                "(e.g. 0.5 drops half the windows) or a gradient base method.",
                estimate,
                sum(len(p) for _, p in geometry),
                len(geometry),
            )
        with model_state(self.model, self.base_cam.eval_mode, freeze_parameters=True):
            with torch.no_grad():
                output = select_output(self.model(x), self.output_index).detach()
            target_list = check_targets(
                default_targets(output) if targets is None else list(targets), x.shape[0]
            )
            scores = target_scores(output, target_list).detach()
            fused = torch.stack(
                [
                    self._explain_sample(x[i : i + 1], target_list[i], geometry, eigen_smooth)
                    for i in range(x.shape[0])
                ]
            )
        if self.smooth:
            sigma = self.smooth_sigma if self.smooth_sigma is not None else 5.0 * min(x.shape[2:]) / 224.0
            fused = gaussian_smooth(fused, max(sigma, 1e-3))
        maps = minmax_normalize(fused) if normalize else fused
        self.outputs = output
        return CAMResult(
            maps=maps, layer_maps=[maps], output=output, scores=scores, layer_names=list(self.layer_names)
        )

    def compute_multi(
        self,
        input_tensor: torch.Tensor,
        target_sets: Sequence[Sequence[Target] | None],
        *,
        eigen_smooth: bool = False,
        normalize: bool | None = None,
    ) -> list[CAMResult]:
        """One :meth:`compute` per target set (every window is re-scored for each set)."""
        return [
            self.compute(input_tensor, t, eigen_smooth=eigen_smooth, normalize=normalize) for t in target_sets
        ]

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        result = self.compute(input_tensor, targets, eigen_smooth=eigen_smooth)
        if self.return_tensor:
            return result.maps
        return result.maps.detach().to("cpu", torch.float32).numpy()

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Maps ``(N, *S)``: float32 numpy in [0, 1] (torch with ``return_tensor=True``)."""
        if aug_smooth:
            raise ConfigurationError("SESS does not combine with aug_smooth: it already fuses many views.")
        return self.forward(input_tensor, targets, eigen_smooth=eigen_smooth)

    def __enter__(self) -> SESS:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"SESS(base_method={type(self.base_cam).__name__}, target_layers={self.layer_names})"
