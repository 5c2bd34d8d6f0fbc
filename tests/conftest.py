"""Shared fixtures: tiny real N-D networks (random init, fixed seeds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import TinyResNet, TinySegNet  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def ndim(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def classifier(ndim: int) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(ndim=ndim, num_classes=3).eval()


@pytest.fixture
def segmenter(ndim: int) -> TinySegNet:
    torch.manual_seed(0)
    return TinySegNet(ndim=ndim, num_classes=3).eval()


def spatial_shape(ndim: int) -> tuple[int, ...]:
    """Non-cubic test shapes: 24×40×32 in 3D, 40×32 in 2D."""
    return (24, 40, 32)[-ndim:]
