"""Test-time transforms for ``aug_smooth``: flips and in-plane 90° rotations, invertible, N-D.

A transform acts on tensors whose first ``lead`` axes are not spatial: ``lead=2`` for an input
batch ``(N, C, *S)`` and ``lead=1`` for maps ``(N, *S)``. ``spatial_axes`` are counted within the
spatial dimensions (``0`` is ``D`` for a volume, ``H`` for an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["TTATransform", "Identity", "Flip", "Rot90", "default_tta_transforms"]


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
