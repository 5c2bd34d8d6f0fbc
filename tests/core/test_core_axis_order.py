"""Axis order: a bright blob at a known voxel of a non-cubic volume → the map peaks there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medcam3d
from helpers_models import BlobFollower, spatial_shape
from medcam3d.utils.model_targets import ClassifierOutputTarget

METHODS = [
    medcam3d.GradCAM,
    medcam3d.HiResCAM,
    medcam3d.GradCAMElementWise,
    medcam3d.GradCAMPlusPlus,
    medcam3d.XGradCAM,
    medcam3d.LayerCAM,
    medcam3d.SegXResCAM,
]


def blob_volume(shape: tuple[int, ...], centre: tuple[int, ...], radius: float = 2.5) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-dist2 / (2 * radius**2))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_map_peaks_at_the_blob(method, ndim):
    torch.manual_seed(0)
    model = BlobFollower(ndim).eval()
    shape = spatial_shape(ndim)
    centres = [(5, 30, 9)[-ndim:], (18, 8, 25)[-ndim:]]  # away from the middle, different per sample
    x = torch.stack([blob_volume(shape, c) for c in centres])[:, None]
    maps = method(model, ["features"])(x, [ClassifierOutputTarget(1)] * 2)
    for sample, centre in enumerate(centres):
        peak = np.unravel_index(np.argmax(maps[sample]), shape)
        assert np.abs(np.array(peak) - np.array(centre)).max() <= 2, (method.__name__, peak, centre)
