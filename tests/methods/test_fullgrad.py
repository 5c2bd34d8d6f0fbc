"""FullGrad against a hand sum of its terms, for every conv and norm type and dimensionality."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from helpers_models import TinyResNet, TinySegNet
from medcam3d import FullGrad
from medcam3d.methods.fullgrad import bias_layers
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class Chain(nn.Module):
    """conv(bias) → InstanceNorm(affine) → ReLU → conv(no bias) → GroupNorm(no affine) → LeakyReLU
    → InstanceNorm(no affine) → ReLU → conv(bias, stride 2) → BatchNorm(running stats, affine) → ReLU
    → pool → fc."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.layers = nn.ModuleList(
            [
                CONV[ndim](2, 4, 3, padding=1),
                IN[ndim](4, affine=True),
                nn.ReLU(),
                CONV[ndim](4, 6, 3, padding=1, bias=False),
                nn.GroupNorm(2, 6, affine=False),
                nn.LeakyReLU(0.1),
                IN[ndim](6),
                nn.ReLU(),
                CONV[ndim](6, 6, 3, stride=2, padding=1),
                BN[ndim](6),
                nn.ReLU(),
            ]
        )
        with torch.no_grad():
            for m in self.layers:
                if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
            bn = self.layers[9]
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = m(x)
        return self.fc(x.mean(dim=tuple(range(2, x.ndim))))


def psi_sum(t: torch.Tensor) -> torch.Tensor:
    """(N, K, *s) → (N, *s): each (sample, channel) min-max scaled, channels summed (by a plain loop)."""
    out = torch.zeros(t.shape[0], *t.shape[2:])
    for i in range(t.shape[0]):
        for k in range(t.shape[1]):
            c = t[i, k]
            if c.max() > c.min():
                out[i] += (c - c.min()) / (c.max() - c.min())
    return out


def hand_fullgrad(model: Chain, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    outputs, biases = [], []
    h = x
    for m in model.layers:
        inp = h
        h = m(h)
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.bias is None:
                continue
            bias = m.bias.detach()[None].expand(x.shape[0], -1)
        elif isinstance(m, nn.GroupNorm):
            g = inp.detach().reshape(x.shape[0], m.num_groups, -1)
            mean = g.mean(2).repeat_interleave(inp.shape[1] // m.num_groups, 1)
            var = g.var(2, unbiased=False).repeat_interleave(inp.shape[1] // m.num_groups, 1)
            bias = -mean / torch.sqrt(var + m.eps)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            bias = (
                (m.bias - m.weight * m.running_mean / torch.sqrt(m.running_var + m.eps))
                .detach()[None]
                .expand(x.shape[0], -1)
            )
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
            flat = inp.detach().reshape(*inp.shape[:2], -1)
            mean, var = flat.mean(2), flat.var(2, unbiased=False)
            gamma = m.weight.detach()[None] if m.affine else 1.0
            beta = m.bias.detach()[None] if m.affine else 0.0
            bias = beta - gamma * mean / torch.sqrt(var + m.eps)
        else:
            continue
        outputs.append(h)
        biases.append(bias)
    out = model.fc(h.mean(dim=tuple(range(2, h.ndim))))
    score = sum(out[i, c] for i, c in enumerate(classes))
    grads = torch.autograd.grad(score, [x, *outputs])
    spatial = x.shape[2:]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    total = psi_sum((grads[0] * x).abs().detach())
    for g, b in zip(grads[1:], biases):
        term = psi_sum((g * b.reshape(*b.shape, *([1] * len(spatial)))).abs().detach())
        total += torch.nn.functional.interpolate(term[:, None], size=spatial, mode=mode, align_corners=False)[
            :, 0
        ]
    return total


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_fullgrad_is_the_hand_sum(ndim: int) -> None:
    model = Chain(ndim).eval()
    x = torch.randn(2, 2, *(6, 10, 8)[-ndim:])
    classes = [0, 2]
    cam = FullGrad(model, return_tensor=True)
    assert len(cam.layers) == 6  # 2 convs with bias, 2 instance norms, group norm, batch norm
    raw = cam.compute(x, [ClassifierOutputTarget(c) for c in classes], normalize=False).maps
    torch.testing.assert_close(raw, hand_fullgrad(model, x, classes), rtol=1e-4, atol=1e-4)
    normalized = cam(x, [ClassifierOutputTarget(c) for c in classes])
    assert float(normalized.max()) == pytest.approx(1.0, abs=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bias_layers_found_in_any_dimensionality() -> None:
    model = TinyResNet(ndim=3)
    found = bias_layers(model)
    assert model.unused in found  # never called: contributes nothing, no error
    assert all(isinstance(m, (nn.Conv3d, nn.BatchNorm3d)) for m in found)
    maps = FullGrad(model, [model.layer4])(torch.randn(2, 1, 8, 12, 10))
    assert maps.shape == (2, 8, 12, 10)


def test_fullgrad_ignores_deep_supervision_heads() -> None:
    torch.manual_seed(0)
    model = TinySegNet(ndim=2).eval()
    maps = FullGrad(model)(torch.randn(2, 1, 12, 10), [SemanticSegmentationTarget(1, None)] * 2)
    assert maps.shape == (2, 12, 10)
