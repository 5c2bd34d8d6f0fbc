"""Test-time transforms for ``aug_smooth``: flips and in-plane 90° rotations, invertible, N-D.

A transform acts on tensors whose first ``lead`` axes are not spatial: ``lead=2`` for an input
batch ``(N, C, *S)`` and ``lead=1`` for maps ``(N, *S)``. ``spatial_axes`` are counted within the
spatial dimensions (``0`` is ``D`` for a volume, ``H`` for an image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from medcam3d.core.context import CAMResult
from medcam3d.core.tensors import minmax_normalize

__all__ = ["TTATransform", "Identity", "Flip", "Rot90", "default_tta_transforms", "smooth_over_transforms"]

#: one CAM computation of a transformed input; the callable maps that pass's model output back to
#: the untransformed frame (for the targets)
ComputeOnce = Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], CAMResult]


class TTATransform:
    """An invertible spatial transform used for augmentation smoothing."""

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, x: torch.Tensor, lead: int = 1) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Identity(TTATransform):
    """Leaves the tensor unchanged."""

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        return x

    def inverse(self, x: torch.Tensor, lead: int = 1) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Flip(TTATransform):
    """Mirror along the given spatial axes (its own inverse)."""

    spatial_axes: tuple[int, ...]

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        return torch.flip(x, dims=[lead + a for a in self.spatial_axes])

    def inverse(self, x: torch.Tensor, lead: int = 1) -> torch.Tensor:
        return torch.flip(x, dims=[lead + a for a in self.spatial_axes])


@dataclass(frozen=True)
class Rot90(TTATransform):
    """Rotate by ``k`` quarter turns in the plane of two spatial axes (default: the last two, in-plane)."""

    k: int = 1
    plane: tuple[int, int] = (-2, -1)

    def _dims(self, x: torch.Tensor, lead: int) -> list[int]:
        n_spatial = x.ndim - lead
        return [lead + (a % n_spatial) for a in self.plane]

    def forward(self, x: torch.Tensor, lead: int = 2) -> torch.Tensor:
        return torch.rot90(x, self.k, dims=self._dims(x, lead))

    def inverse(self, x: torch.Tensor, lead: int = 1) -> torch.Tensor:
        return torch.rot90(x, -self.k, dims=self._dims(x, lead))


def default_tta_transforms(spatial_shape: Sequence[int]) -> list[TTATransform]:
    """Identity, a flip along each spatial axis and, when the last two axes have equal size,
    in-plane rotations by 90°, 180° and 270° (rotations of a non-square plane change the shape,
    which not every network accepts; pass them explicitly in that case)."""
    transforms: list[TTATransform] = [Identity()]
    transforms += [Flip((axis,)) for axis in range(len(spatial_shape))]
    if len(spatial_shape) >= 2 and spatial_shape[-1] == spatial_shape[-2]:
        transforms += [Rot90(k) for k in (1, 2, 3)]
    return transforms


def smooth_over_transforms(
    compute_once: ComputeOnce,
    input_tensor: torch.Tensor,
    transforms: Sequence[TTATransform],
    normalize: bool,
) -> CAMResult:
    """``aug_smooth``: the mean of the maps of every transformed input, each transformed back first.

    Args:
        compute_once: computes one :class:`CAMResult` for a transformed input ``(N, C, *S')``; its
            second argument maps an output with the transformed input's spatial shape back to the
            original frame, so segmentation targets with masks stay aligned.
        input_tensor: ``(N, C, *S)``.
        transforms: the test-time transforms (the first result's output and scores are kept).
        normalize: min-max normalise the mean map.

    Returns:
        The first transform's result with ``maps`` ``(N, *S)`` = the normalised mean and
        ``layer_maps`` = the per-layer means.
    """
    if not transforms:
        raise ValueError(
            "aug_smooth needs at least one test-time transform; pass tta_transforms=[Identity()]."
        )
    maps_sum: torch.Tensor | None = None
    layer_sums: list[torch.Tensor] = []
    first: CAMResult | None = None
    for transform in transforms:
        transformed = transform.forward(input_tensor, lead=2)
        shape = tuple(transformed.shape[2:])

        def back(
            out: torch.Tensor, t: TTATransform = transform, shape: tuple[int, ...] = shape
        ) -> torch.Tensor:
            if out.ndim == input_tensor.ndim and tuple(out.shape[2:]) == shape:
                return t.inverse(out, lead=2)
            return out

        result = compute_once(transformed, back)
        maps = transform.inverse(result.maps, lead=1)
        layers = [transform.inverse(m, lead=1) for m in result.layer_maps]
        if first is None or maps_sum is None:
            first, maps_sum, layer_sums = result, maps, layers
        else:
            maps_sum = maps_sum + maps
            layer_sums = [a + b for a, b in zip(layer_sums, layers)]
    assert first is not None and maps_sum is not None
    count = float(len(transforms))
    mean = maps_sum / count
    first.maps = minmax_normalize(mean) if normalize else mean
    first.layer_maps = [m / count for m in layer_sums]
    return first
