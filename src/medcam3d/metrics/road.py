"""ROAD: Remove And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022), pytorch-grad-cam's ``pytorch_grad_cam.metrics.road`` (1.5.7) for
any spatial rank, on the model's device.

The noisy linear imputation fills every removed voxel with the weighted mean of its neighbours
(removed neighbours included, so the filled values solve one sparse linear system) plus Gaussian
noise. pytorch-grad-cam builds that system for a 2D grid only (its neighbour offsets are pairs and
its index arithmetic assumes ``(H, W)``), so on a volume it imputes from wrong voxels and its
solver returns NaN; it also runs on the CPU with ``scipy.sparse.linalg.spsolve``.

Here the system is built for 1, 2 or 3 spatial axes and solved matrix-free on the tensor's device
with the preconditioned conjugate gradient method (Jacobi preconditioner): for removed voxels
``U`` the equations are ``s_i x_i - Σ_{o, i+o ∈ U} w_o x_{i+o} = Σ_{o, i+o known} w_o v_{i+o}``,
where ``s_i = Σ_{o, i+o inside the grid} w_o``. With symmetric weights (``w_o = w_{-o}``) this
matrix is a principal block of a weighted grid Laplacian with a Dirichlet boundary: symmetric
positive definite as long as some voxel is kept. Memory is a few copies of the input (linear in
the voxel count); each iteration costs one pass over the grid per neighbour offset.

Exactness: the iteration stops when the residual of every channel satisfies
``‖b − A x‖₂ ≤ rtol · ‖b‖₂`` (``rtol=1e-6`` by default, in float64), which the tests compare to a
direct ``scipy.sparse.linalg.spsolve`` of the same system (agreement to about 1e-6 absolute on data
in [0, 1]). When every voxel of a sample is removed, the system is singular; its minimum-norm
solution, zeros (plus the noise), is returned.

Default neighbours: the ``2·d`` axis neighbours with weight ``1/(2d)`` each (4 in 2D, 6 in 3D).
Pass ``weighting=neighbors_weights`` for the ROAD paper's 8-neighbour 2D weights (axis 1/6,
diagonal 1/12), which pytorch-grad-cam uses (it ignores its ``weighting`` argument; this class
honours it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.metrics._common import Target
from medcam3d.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)

__all__ = [
    "NoisyLinearImputer",
    "ROADMostRelevantFirst",
    "ROADLeastRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "ROADLeastRelevantFirstAverage",
    "ROADCombined",
    "neighbors_weights",
    "axis_neighbour_weights",
]

logger = logging.getLogger(__name__)

Weighting = Sequence[tuple[Sequence[int], float]]

#: the ROAD paper's 2D neighbour weights (pytorch-grad-cam's ``neighbors_weights``): axis 1/6, diagonal 1/12
neighbors_weights: list[tuple[tuple[int, int], float]] = [
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
]


def axis_neighbour_weights(spatial_dims: int) -> list[tuple[tuple[int, ...], float]]:
    """The ``2·d`` axis neighbours of a voxel on a ``d``-D grid, weight ``1/(2d)`` each."""
    weights: list[tuple[tuple[int, ...], float]] = []
    for axis in range(spatial_dims):
        for step in (1, -1):
            offset = [0] * spatial_dims
            offset[axis] = step
            weights.append((tuple(offset), 1.0 / (2 * spatial_dims)))
    return weights


def _check_weighting(weighting: Weighting, spatial_dims: int) -> list[tuple[tuple[int, ...], float]]:
    checked: dict[tuple[int, ...], float] = {}
    for entry in weighting:
        offset, weight = tuple(int(v) for v in entry[0]), float(entry[1])
        if len(offset) != spatial_dims:
            raise ConfigurationError(
                f"The imputer's neighbour offset {offset} has {len(offset)} components but the input has "
                f"{spatial_dims} spatial axes: give one offset component per axis (or weighting=None for "
                "the axis neighbours)."
            )
        if not any(offset) or not weight > 0 or not np.isfinite(weight):
            raise ConfigurationError(
                f"Every neighbour needs a non-zero offset and a positive weight, got {offset}: {weight}."
            )
        checked[offset] = checked.get(offset, 0.0) + weight
    for offset, weight in checked.items():
        mirror = tuple(-v for v in offset)
        if not np.isclose(checked.get(mirror, 0.0), weight, rtol=1e-12, atol=0.0):
            raise ConfigurationError(
                f"The neighbour weights must be symmetric (w(o) = w(-o)) so that the imputation system is "
                f"symmetric positive definite; offset {offset} has {weight} but {mirror} has "
                f"{checked.get(mirror, 0.0)}."
            )
    return list(checked.items())


class _Grid:
    """Zero-padded buffers whose shifted views give every voxel's neighbour (0 outside the grid)."""

    def __init__(self, shape: tuple[int, ...], spatial: tuple[int, ...], radius: int, like: torch.Tensor):
        self.radius = radius
        self.spatial = spatial
        padded = (*shape[: len(shape) - len(spatial)], *(s + 2 * radius for s in spatial))
        self.buffer = torch.zeros(padded, dtype=like.dtype, device=like.device)
        lead = (slice(None),) * (len(shape) - len(spatial))
        self.lead = lead
        self.interior = self.buffer[lead + tuple(slice(radius, radius + s) for s in spatial)]

    def view(self, offset: tuple[int, ...]) -> torch.Tensor:
        r = self.radius
        return self.buffer[self.lead + tuple(slice(r + o, r + o + s) for o, s in zip(offset, self.spatial))]


class NoisyLinearImputer:
    """Noisy linear imputation of removed voxels, any spatial rank, solved on the input's device.

    Args:
        noise: standard deviation of the Gaussian noise added to every imputed value (absolute;
            0 for none). pytorch-grad-cam's default, 0.01.
        weighting: ``[(offset, weight), ...]`` neighbour offsets (one component per spatial
            axis) and weights; symmetric (``w(o) = w(-o)``). ``None``: the axis neighbours
            (:func:`axis_neighbour_weights`); :data:`neighbors_weights` is the 2D 8-neighbour set.
        rtol: relative residual at which the conjugate gradient iteration stops (per channel).
        max_iterations: iteration cap (``None``: ``10 ·`` the sum of the spatial sizes ``+ 100``);
            a warning is logged if it is reached before ``rtol``.
        generator: a ``torch.Generator`` on the input's device for reproducible noise.
        dtype: the precision of the solve (float64 by default; the result has the input's dtype).
    """

    def __init__(
        self,
        noise: float = 0.01,
        weighting: Weighting | None = None,
        *,
        rtol: float = 1e-6,
        max_iterations: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if not noise >= 0:
            raise ConfigurationError(f"noise must be >= 0, got {noise!r}.")
        if not 0 < rtol < 1:
            raise ConfigurationError(f"rtol must be in (0, 1), got {rtol!r}.")
        if max_iterations is not None and max_iterations < 1:
            raise ConfigurationError(f"max_iterations must be a positive integer, got {max_iterations!r}.")
        self.noise = float(noise)
        self.weighting = None if weighting is None else list(weighting)
        self.rtol = float(rtol)
        self.max_iterations = max_iterations
        self.generator = generator
        self.dtype = dtype
        #: iterations of the last solve (the most over the samples of a batch)
        self.last_iterations = 0

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Impute one sample.

        Args:
            img: ``(C, *S)`` (``(C, D, H, W)`` for a volume).
            mask: ``(*S)``: 1 (> 0.5) where the voxel is kept, 0 where it is imputed.

        Returns:
            ``(C, *S)``: ``img`` with the removed voxels replaced.
        """
        if img.ndim < 2:
            raise InputShapeError(f"img must be (C, *S), got shape {tuple(img.shape)}.")
        return self.impute(img.unsqueeze(0), torch.as_tensor(mask, device=img.device).unsqueeze(0))[0]

    def solve(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The noise-free imputation of a batch: ``images`` ``(N, C, *S)``, ``keep`` ``(N, *S)``
        (true where kept) → ``(N, C, *S)`` in the solver's dtype."""
        spatial = tuple(images.shape[2:])
        if not 1 <= len(spatial) <= 3:
            raise InputShapeError(
                f"The imputer takes 1 to 3 spatial axes, got an input of shape {tuple(images.shape)}."
            )
        if tuple(keep.shape) != (images.shape[0], *spatial):
            raise InputShapeError(
                f"The mask has shape {tuple(keep.shape)} but the images {tuple(images.shape)} need "
                f"{(images.shape[0], *spatial)}."
            )
        weights = (
            axis_neighbour_weights(len(spatial))
            if self.weighting is None
            else _check_weighting(self.weighting, len(spatial))
        )
        values = images.to(self.dtype)
        known = keep.to(torch.bool).unsqueeze(1)  # (N, 1, *S)
        unknown = (~known).to(self.dtype)
        if not bool(unknown.any()):
            self.last_iterations = 0
            return values.clone()
        radius = max(max(abs(v) for v in offset) for offset, _ in weights)
        grid = _Grid(tuple(values.shape), spatial, radius, values)
        ones = _Grid((1, 1, *spatial), spatial, radius, values)
        ones.interior.fill_(1.0)
        degree = sum(w * ones.view(o) for o, w in weights)  # (1, 1, *S): weight of the neighbours inside
        assert isinstance(degree, torch.Tensor)
        degree = degree.expand_as(values) * unknown + (1.0 - unknown)  # 1 on kept voxels (unused there)

        # right-hand side: the weighted known neighbours of every removed voxel
        grid.interior.copy_(values * (1.0 - unknown))
        rhs = torch.zeros_like(values)
        for offset, weight in weights:
            rhs.add_(grid.view(offset), alpha=weight)
        rhs.mul_(unknown)

        batch, channels = values.shape[:2]

        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (N, C, *S) x2 -> (N, C)
            flat_a = a.reshape(batch * channels, 1, -1)
            flat_b = b.reshape(batch * channels, -1, 1)
            return torch.bmm(flat_a, flat_b).reshape(batch, channels)

        def expand(per_channel: torch.Tensor) -> torch.Tensor:  # (N, C) -> (N, C, 1, ...)
            return per_channel.reshape(batch, channels, *([1] * len(spatial)))

        # the search direction lives in the padded buffer, so its neighbours are views (no copies)
        direction = grid.interior

        def apply_direction(out: torch.Tensor) -> torch.Tensor:
            torch.mul(degree, direction, out=out)
            for offset, weight in weights:
                out.sub_(grid.view(offset), alpha=weight)
            return out.mul_(unknown)

        axes = tuple(range(2, values.ndim))
        known_count = (1.0 - unknown).sum(dim=axes)  # (N, 1)
        known_mean = (values * (1.0 - unknown)).sum(dim=axes) / known_count.clamp_min(1.0)
        rhs_norm = dot(rhs, rhs).sqrt()  # (N, C)
        start = torch.where(rhs_norm > 0, known_mean, torch.zeros_like(known_mean))
        x = expand(start) * unknown
        product = torch.empty_like(values)
        direction.copy_(x)
        residual = rhs - apply_direction(product)
        inverse_degree = 1.0 / degree  # the Jacobi preconditioner
        z = residual * inverse_degree
        direction.copy_(z)
        rz = dot(residual, z)
        tolerance = self.rtol * rhs_norm
        cap = self.max_iterations or (10 * sum(spatial) + 100)
        iterations = 0
        norm = dot(residual, residual).sqrt()
        while iterations < cap:
            active = norm > tolerance
            if not bool(active.any()):
                break
            iterations += 1
            apply_direction(product)
            curvature = dot(direction, product)
            alpha = expand(torch.where(active & (curvature > 0), rz / curvature.clamp_min(1e-300), 0.0))
            x.addcmul_(direction, alpha)
            residual.addcmul_(product, alpha, value=-1.0)
            norm = dot(residual, residual).sqrt()
            torch.mul(residual, inverse_degree, out=z)
            rz_new = dot(residual, z)
            beta = expand(torch.where(active, rz_new / rz.clamp_min(1e-300), 0.0))
            direction.mul_(beta).add_(z)
            rz = rz_new
        self.last_iterations = iterations
        if bool((norm > tolerance).any()):
            worst = float((norm / rhs_norm.clamp_min(1e-300)).max())
            logger.warning(
                "ROAD imputation stopped after %d conjugate gradient iterations at relative residual %.3g "
                "(rtol %.3g); raise max_iterations for a more exact fill.",
                iterations,
                worst,
                self.rtol,
            )
        return values * (1.0 - unknown) + x * unknown

    def impute(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Impute a batch: ``images`` ``(N, C, *S)``, ``keep`` ``(N, *S)`` (> 0.5 where kept)
        → ``(N, C, *S)``, the input's dtype, with noise added to the imputed voxels."""
        keep_bool = keep > 0.5 if keep.is_floating_point() else keep.to(torch.bool)
        filled = self.solve(images, keep_bool)
        if self.noise > 0:
            noise = torch.randn(
                filled.shape, generator=self.generator, device=filled.device, dtype=filled.dtype
            )
            filled = filled + self.noise * noise * (~keep_bool).unsqueeze(1).to(filled.dtype)
        return filled.to(images.dtype)


class ROADMostRelevantFirst(PerturbationConfidenceMetric):
    """ROAD, most relevant first: impute the voxels with ``cam >= percentile(cam, percentile)``
    (the top ``100 - percentile`` per cent) and return the score change.

    Args:
        percentile: 0..100 or ``"auto"`` (see
            :class:`~medcam3d.metrics.perturbation_confidence.RemoveMostRelevantFirst`).
        imputer: the imputer (default ``NoisyLinearImputer()``: noise 0.01, axis neighbours).
    """

    def __init__(self, percentile: float | str = 80, imputer: Any = None) -> None:
        super().__init__(RemoveMostRelevantFirst(percentile, imputer or NoisyLinearImputer()))


class ROADLeastRelevantFirst(PerturbationConfidenceMetric):
    """ROAD, least relevant first: impute the ``100 - percentile`` per cent of voxels with the lowest
    map and return the score change."""

    def __init__(self, percentile: float | str = 20, imputer: Any = None) -> None:
        super().__init__(RemoveLeastRelevantFirst(percentile, imputer or NoisyLinearImputer()))


_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class ROADMostRelevantFirstAverage(AveragerAcrossThresholds):
    """:class:`ROADMostRelevantFirst` averaged over ``percentiles``."""

    def __init__(self, percentiles: Sequence[float] = _PERCENTILES, imputer: Any = None) -> None:
        super().__init__(lambda p: ROADMostRelevantFirst(p, imputer), percentiles)


class ROADLeastRelevantFirstAverage(AveragerAcrossThresholds):
    """:class:`ROADLeastRelevantFirst` averaged over ``percentiles``."""

    def __init__(self, percentiles: Sequence[float] = _PERCENTILES, imputer: Any = None) -> None:
        super().__init__(lambda p: ROADLeastRelevantFirst(p, imputer), percentiles)


class ROADCombined:
    """``(LeRF average - MoRF average) / 2`` over ``percentiles``: high when removing the least
    relevant voxels keeps the score and removing the most relevant ones drops it."""

    def __init__(self, percentiles: Sequence[float] = _PERCENTILES, imputer: Any = None) -> None:
        self.percentiles = list(percentiles)
        self.morf_averager = ROADMostRelevantFirstAverage(self.percentiles, imputer)
        self.lerf_averager = ROADLeastRelevantFirstAverage(self.percentiles, imputer)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: np.ndarray | torch.Tensor,
        targets: Sequence[Target] | None,
        model: nn.Module,
        **kwargs: Any,
    ) -> np.ndarray:
        """``(N,)`` float32 (keyword options such as ``batch_memory_bytes`` go to every metric)."""
        scores_lerf = self.lerf_averager(input_tensor, cams, targets, model, **kwargs)
        scores_morf = self.morf_averager(input_tensor, cams, targets, model, **kwargs)
        return ((scores_lerf - scores_morf) / 2).astype(np.float32)
