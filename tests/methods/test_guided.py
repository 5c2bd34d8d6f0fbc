"""Guided backpropagation against autograd with hand-masked gradients; Guided Grad-CAM, N-D, batch 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from medcam3d import GradCAM, GuidedBackpropReLUModel, GuidedGradCAM, guided_backprop
from medcam3d.utils.model_targets import ClassifierOutputTarget

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
RECTIFIERS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU)


class Chain(nn.Module):
    def __init__(self, ndim: int) -> None:
        super().__init__()
        torch.manual_seed(5)
        conv = CONV[ndim]
        self.layers = nn.Sequential(
            conv(2, 6, 3, padding=1), nn.ReLU(inplace=True),
            conv(6, 6, 3, padding=1), nn.LeakyReLU(0.01, inplace=True),  # nnU-Net's
            conv(6, 6, 3, stride=2, padding=1), nn.PReLU(6, init=0.2),
            conv(6, 6, 3, padding=1), nn.ELU(),
        )  # fmt: skip
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layers(x)
        return self.fc(f.mean(dim=tuple(range(2, f.ndim))))


def hand_guided(model: Chain, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Forward layer by layer keeping every layer's input, then backward by hand: through a rectifier the
    gradient becomes ReLU(g)·[input > 0]; through anything else plain autograd (vector-Jacobian)."""
    inputs, h = [], x.detach()
    for m in model.layers:
        inputs.append(h)
        h = m(h.clone()).detach()  # clone: the in-place rectifiers must not overwrite the saved input
    feat = h.requires_grad_(True)
    out = model.fc(feat.mean(dim=tuple(range(2, feat.ndim))))
    (g,) = torch.autograd.grad(sum(out[i, c] for i, c in enumerate(classes)), feat)
    for m, inp in zip(reversed(list(model.layers)), reversed(inputs)):
        if isinstance(m, RECTIFIERS):
            g = g.clamp_min(0) * (inp > 0).to(g.dtype)
        else:
            leaf = inp.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(m(leaf), leaf, grad_outputs=g)
    return g


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_guided_backprop_matches_hand_masked_autograd(ndim: int) -> None:
    model = Chain(ndim).eval()
    x = torch.randn(2, 2, *(6, 10, 8)[-ndim:])
    classes = [2, 0]
    ours = guided_backprop(model, x, [ClassifierOutputTarget(c) for c in classes])
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, hand_guided(model, x, classes), rtol=1e-5, atol=1e-7)
    # differs from the plain gradient (the guidance does something)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (plain,) = torch.autograd.grad(out[0, 2] + out[1, 0], xg)
    assert not torch.allclose(plain, ours)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_pytorch_grad_cam_entry_point() -> None:
    model = Chain(3).eval()
    x = torch.randn(2, 2, 6, 10, 8)
    result = GuidedBackpropReLUModel(model, device="cpu")(x, target_category=1)
    # channels last, as pytorch-grad-cam; a batch of 2 keeps its batch axis: (N, D, H, W, C)
    assert isinstance(result, np.ndarray) and result.shape == (2, 6, 10, 8, 2)
    expected = hand_guided(model, x, [1, 1]).movedim(1, -1).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)
    top = GuidedBackpropReLUModel(model)(x)  # target_category=None: the top class of each sample
    classes = model(x).argmax(dim=1).tolist()
    np.testing.assert_allclose(
        top, hand_guided(model, x, classes).movedim(1, -1).numpy(), rtol=1e-5, atol=1e-7
    )
    one = GuidedBackpropReLUModel(model)(x[:1], target_category=1)  # one volume: (D, H, W, C)
    np.testing.assert_allclose(one, expected[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ndim", [2, 3])
def test_guided_gradcam_is_guided_times_cam(ndim: int) -> None:
    model = Chain(ndim).eval()
    x = torch.randn(2, 2, *(6, 10, 8)[-ndim:])
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    layer = model.layers[4]
    cam = GradCAM(model, [layer], return_tensor=True)(x, targets)
    guided = hand_guided(model, x, [1, 2])
    full = GuidedGradCAM(model, [layer], channel_reduction=None, return_tensor=True)(x, targets)
    assert full.shape == x.shape
    torch.testing.assert_close(full, guided * cam[:, None], rtol=1e-4, atol=1e-7)
    reduced = GuidedGradCAM(model, [layer], return_tensor=True)(x, targets)
    assert reduced.shape == (2, *x.shape[2:])
    expected = (guided * cam[:, None]).abs().sum(dim=1)
    peak = expected.reshape(2, -1).max(dim=1).values.reshape(2, *([1] * ndim))
    expected = expected / torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map stays 0
    torch.testing.assert_close(reduced, expected, rtol=1e-4, atol=1e-6)


def test_guided_gradcam_takes_one_forward_pass_and_leaves_no_hooks() -> None:
    torch.manual_seed(0)
    model = Chain(3).eval()
    x = torch.randn(2, 2, 6, 10, 8)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    layer = model.layers[4]
    calls = [0]
    counter = model.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + 1))
    try:
        full = GuidedGradCAM(model, [layer], channel_reduction=None, return_tensor=True)(x, targets)
    finally:
        counter.remove()
    assert calls[0] == 1, "Grad-CAM and guided backpropagation should share one forward pass"
    cam = GradCAM(model, [layer], return_tensor=True)(x, targets)
    torch.testing.assert_close(full, hand_guided(model, x, [1, 2]) * cam[:, None], rtol=1e-4, atol=1e-7)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0 and all(p.grad is None for p in model.parameters())
    # aug_smooth: the smoothed Grad-CAM map times the guided gradient of the original input
    smoothed = GuidedGradCAM(model, [layer], channel_reduction=None, return_tensor=True)(
        x, targets, aug_smooth=True
    )
    smoothed_cam = GradCAM(model, [layer], return_tensor=True)(x, targets, aug_smooth=True)
    torch.testing.assert_close(
        smoothed, hand_guided(model, x, [1, 2]) * smoothed_cam[:, None], rtol=1e-4, atol=1e-6
    )
