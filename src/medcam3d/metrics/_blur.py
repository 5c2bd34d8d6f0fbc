"""Separable N-D Gaussian blur on the tensor's device (private)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medcam3d.errors import ConfigurationError

__all__ = ["gaussian_blur"]


def gaussian_blur(x: torch.Tensor, sigma: float | Sequence[float], truncate: float = 4.0) -> torch.Tensor:
    """Blur ``(N, C, *S)`` along every spatial axis with a Gaussian of ``sigma`` voxels.

    Equals ``scipy.ndimage.gaussian_filter(x, (0, 0, *sigma), mode="nearest", truncate=truncate)``:
    a normalised kernel of radius ``int(truncate * sigma + 0.5)`` per axis, edges extended with
    the border value. ``sigma`` is one value or one per spatial axis (0 leaves an axis alone).
    """
    spatial = x.ndim - 2
    sigmas = [float(sigma)] * spatial if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != spatial or any(not (s >= 0 and math.isfinite(s)) for s in sigmas):
        raise ConfigurationError(
            f"blur_sigma must be one non-negative number or one per spatial axis ({spatial}), got {sigma!r}."
        )
    out = x
    for axis, s in enumerate(sigmas):
        radius = int(truncate * s + 0.5)
        if s == 0 or radius == 0:
            continue
        grid = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (grid / s) ** 2)
        kernel = (kernel / kernel.sum()).to(x.dtype).reshape(1, 1, -1)
        moved = out.movedim(2 + axis, -1)
        shape = moved.shape
        lines = moved.reshape(-1, 1, shape[-1])
        lines = F.pad(lines, (radius, radius), mode="replicate")
        out = F.conv1d(lines, kernel).reshape(shape).movedim(-1, 2 + axis)
    return out.contiguous()
