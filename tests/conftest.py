"""Shared fixtures: tiny real N-D networks (random init, fixed seeds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import TinyResNet, TinySegNet, spatial_shape  # noqa: E402, F401

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
