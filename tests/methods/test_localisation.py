"""A tiny 3D classifier trained here in seconds (a bright blob present or absent): the maximum of
every gradient method's map falls inside the blob."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import medcam3d
from medcam3d.utils.model_targets import ClassifierOutputTarget

SHAPE = (12, 16, 14)  # non-cubic
RADIUS = 2.5


def blob_volume(generator: torch.Generator, center: tuple[int, int, int] | None) -> torch.Tensor:
    volume = 0.3 * torch.randn(1, *SHAPE, generator=generator)
    if center is not None:
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in SHAPE], indexing="ij"))
        dist2 = sum((grid[i] - center[i]) ** 2 for i in range(3))
        volume[0] += 2.0 * torch.exp(-dist2 / (2 * (RADIUS / 1.5) ** 2))
    return volume


def random_center(generator: torch.Generator) -> tuple[int, int, int]:
    return tuple(int(torch.randint(3, s - 3, (1,), generator=generator)) for s in SHAPE)  # type: ignore[return-value]


class BlobNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
            nn.Conv3d(4, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
            nn.Conv3d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def trained() -> BlobNet:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = BlobNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(30):
        labels = torch.randint(0, 2, (8,), generator=generator)
        x = torch.stack(
            [blob_volume(generator, random_center(generator) if y else None) for y in labels.tolist()]
        )
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


GRADIENT_METHODS = [
    "gradcam", "gradcam++", "hirescam", "gradcamelementwise", "xgradcam", "layercam",
    "eigengradcam", "shapleycam", "segxrescam", "fullgrad", "guidedgradcam", "finercam",
]  # fmt: skip


def test_the_classifier_learned(trained: BlobNet) -> None:
    generator = torch.Generator().manual_seed(1)
    labels = [i % 2 for i in range(20)]
    x = torch.stack([blob_volume(generator, random_center(generator) if y else None) for y in labels])
    with torch.no_grad():
        accuracy = (trained(x).argmax(1) == torch.tensor(labels)).float().mean()
    assert accuracy >= 0.9


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_maximum_falls_in_the_blob(trained: BlobNet, name: str) -> None:
    generator = torch.Generator().manual_seed(2)
    centers = [(3, 4, 10), (8, 11, 4), (6, 8, 7), (4, 12, 3)]
    x = torch.stack([blob_volume(generator, c) for c in centers])
    cls = medcam3d.available_methods()[name]
    cam = cls(trained) if name == "fullgrad" else cls(trained, [trained.features[5]])
    targets = None if name == "finercam" else [ClassifierOutputTarget(1)] * len(centers)
    maps = cam(x, targets)
    for i, center in enumerate(centers):
        peak = np.unravel_index(int(np.argmax(maps[i])), SHAPE)
        distance = float(np.linalg.norm(np.subtract(peak, center)))
        assert distance <= 2 * RADIUS, (
            f"{name}: peak {peak} is {distance:.1f} voxels from the blob at {center}"
        )
