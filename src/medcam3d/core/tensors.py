"""N-dimensional tensor helpers used by the pipeline.

Spatial axes are always ``range(2, x.ndim)`` for a batch ``(N, C, *S)`` and ``range(1, x.ndim)``
for a batch of maps ``(N, *S)``. :func:`interpolation_mode` is the only place where the number of
spatial dimensions picks anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "interpolation_mode",
    "spatial_axes",
    "resize_maps",
    "minmax_normalize",
    "spatial_mean",
    "spatial_sum",
    "broadcast_channels",
    "block_pool",
    "block_unpool",
    "finish_layer_map",
]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def interpolation_mode(num_spatial_dims: int) -> str:
    """The linear interpolation mode of ``torch.nn.functional.interpolate`` for 1, 2 or 3 spatial dims."""
    try:
        return _MODES[num_spatial_dims]
    except KeyError:
        raise ValueError(
            f"Linear interpolation supports 1, 2 or 3 spatial dimensions, got {num_spatial_dims}."
        ) from None


def spatial_axes(x: torch.Tensor, first: int = 2) -> tuple[int, ...]:
    """The spatial axes of ``x``: ``(first, …, x.ndim - 1)``."""
    return tuple(range(first, x.ndim))


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize maps ``(N, *s)`` or ``(N, K, *s)`` to spatial ``size`` with linear interpolation.

    ``size`` has one entry per spatial axis, in tensor order (``D, H, W`` for 3D).
    Interpolation uses ``align_corners=False`` and stays on the maps' device.
    """
    size = tuple(int(s) for s in size)
    has_channels = maps.ndim == len(size) + 2
    x = maps if has_channels else maps.unsqueeze(1)
    if tuple(x.shape[2:]) != size:
        if not x.is_floating_point():
            x = x.float()
        x = F.interpolate(x, size=size, mode=interpolation_mode(len(size)), align_corners=False)
    return x if has_channels else x.squeeze(1)


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of maps ``(N, *S)`` to exactly ``[0, 1]``.

    Divides by the range itself (no additive epsilon, which would distort maps whose raw values
    are small, e.g. 1e-4); a constant map becomes all zeros. Idempotent.
    """
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    shifted = flat - low
    high = shifted.max(dim=1, keepdim=True).values
    safe = torch.where(high > 0, high, torch.ones_like(high))
    return (shifted / safe).reshape(maps.shape)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of ``(N, K, *s)`` → ``(N, K)``."""
    return x.mean(dim=spatial_axes(x)) if x.ndim > 2 else x


def spatial_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial axes of ``(N, K, *s)`` → ``(N, K)``."""
    return x.sum(dim=spatial_axes(x)) if x.ndim > 2 else x


def broadcast_channels(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-channel weights ``(N, K)`` to ``(N, K, 1, …, 1)`` to broadcast against ``like``."""
    return weights.reshape(*weights.shape[:2], *([1] * (like.ndim - 2)))


def block_pool(x: torch.Tensor, size: int, mode: str = "max") -> torch.Tensor:
    """Pool ``(N, K, *s)`` in non-overlapping blocks of ``size`` along every spatial axis.

    Axes whose length is not a multiple of ``size`` get a partial last block (like
    ``ceil_mode=True``): its max, or the mean of its existing elements. One code path for any
    number of spatial axes.
    """
    if size < 1:
        raise ValueError(f"pool size must be >= 1, got {size}.")
    if mode not in ("max", "mean"):
        raise ValueError(f"pool mode must be 'max' or 'mean', got {mode!r}.")
    spatial = x.shape[2:]
    pads: list[int] = []
    for length in reversed(spatial):
        pads += [0, (-length) % size]
    fill = float("-inf") if mode == "max" else 0.0
    padded = torch.nn.functional.pad(x, pads, value=fill) if any(pads) else x
    blocks = [length // size for length in padded.shape[2:]]
    shape: list[int] = list(padded.shape[:2])
    for count in blocks:
        shape += [count, size]
    view = padded.reshape(shape)
    block_axes = tuple(3 + 2 * i for i in range(len(blocks)))
    if mode == "max":
        return view.amax(dim=block_axes)
    ones = torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device)
    counts = torch.nn.functional.pad(ones, pads, value=0.0) if any(pads) else ones
    count_view = counts.reshape([1, 1, *shape[2:]]).sum(dim=block_axes)
    return view.sum(dim=block_axes) / count_view


def block_unpool(x: torch.Tensor, size: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour inverse of :func:`block_pool`: repeat each block value ``size`` times
    along every spatial axis and crop to ``spatial``."""
    out = x
    for axis in range(2, x.ndim):
        out = out.repeat_interleave(size, dim=axis)
    index = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    return out[index]


def finish_layer_map(cam: Any, spatial: Sequence[int], normalize: bool, device: torch.device) -> torch.Tensor:
    """The pipeline's last per-layer step: ``(N, *s)`` raw map → ``(N, *S)``.

    float32 on ``device``, ReLU (non-finite values set to 0), linear resize to ``spatial``, and
    per-sample min-max normalisation when ``normalize``.
    """
    out = torch.as_tensor(cam, device=device).detach().to(torch.float32)
    out = torch.nan_to_num(out.clamp_min(0), nan=0.0, posinf=0.0)
    out = resize_maps(out, spatial)
    return minmax_normalize(out) if normalize else out
