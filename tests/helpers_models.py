"""Tiny real networks used across the tests (any number of spatial axes)."""

from __future__ import annotations

import torch
import torch.nn as nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class Block(nn.Module):
    def __init__(self, ndim: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = CONV[ndim](cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = BN[ndim](cout)
        self.relu = nn.ReLU(inplace=True)
        self.skip = (
            CONV[ndim](cin, cout, 1, stride=stride, bias=False)
            if (stride != 1 or cin != cout)
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)) + self.skip(x))


class TinyResNet(nn.Module):
    """A ResNet-shaped classifier: stem → layer1..layer4 (``layer4`` downsamples ×4 overall) → pool → fc."""

    def __init__(self, ndim: int = 3, in_channels: int = 1, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.ndim = ndim
        self.stem = nn.Sequential(CONV[ndim](in_channels, width, 3, padding=1), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(Block(ndim, width, width, 1))
        self.layer2 = nn.Sequential(Block(ndim, width, 2 * width, 2))
        self.layer3 = nn.Sequential(Block(ndim, 2 * width, 2 * width, 1))
        self.layer4 = nn.Sequential(
            Block(ndim, 2 * width, 4 * width, 2), Block(ndim, 4 * width, 4 * width, 1)
        )
        self.fc = nn.Linear(4 * width, num_classes)
        self.unused = CONV[ndim](1, 1, 1)  # never called in forward

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc(f.mean(dim=tuple(range(2, f.ndim))))


class TinySegNet(nn.Module):
    """A small encoder-decoder segmenter returning ``(logits, deep_supervision_logits)``."""

    def __init__(self, ndim: int = 3, in_channels: int = 1, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        conv = CONV[ndim]
        self.enc = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.LeakyReLU(0.01, inplace=True))
        self.down = nn.Sequential(
            conv(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.01, inplace=True)
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(conv(3 * width, width, 3, padding=1), nn.LeakyReLU(0.01, inplace=True))
        self.head = conv(width, num_classes, 1)
        self.aux = conv(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.enc(x)
        d = self.down(e)
        u = self.dec(torch.cat([self.up(d), e], dim=1))
        return self.head(u), self.aux(d)


class BlobFollower(nn.Module):
    """A model whose feature map follows the input intensity: a positive smoothing conv, a
    stride-2 pooling (so upsampling is exercised), ReLU, and a global sum as the class-1 score."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        conv = CONV[ndim](1, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.rand_like(conv.weight) + 0.5)
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[ndim](2)
        self.features = nn.Sequential(conv, pool, nn.ReLU())
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc(f.pow(2).sum(dim=tuple(range(2, f.ndim))))


def spatial_shape(ndim: int) -> tuple[int, ...]:
    """Non-cubic test shapes: 24×40×32 in 3D, 40×32 in 2D."""
    return (24, 40, 32)[-ndim:]
