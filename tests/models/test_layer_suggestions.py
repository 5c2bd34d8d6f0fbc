"""Layer suggestions on MONAI networks and the README's models (small configurations).

For every network, each suggested layer must (independently checked here) not produce the model
output itself, lie on the gradient path to the selected output (autograd.grad of the output with
respect to the layer's output is not None and not all zero), and give a finite, non-constant
Grad-CAM map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import medcam3d
from helpers_models import TinyResNet, TinySegNet
from medcam3d.utils.find_layers import list_layers, suggest_target_layer, suggest_target_layers
from medcam3d.utils.model_targets import ClassifierOutputTarget

nets = pytest.importorskip("monai.networks.nets")


class ReadmeTinyUNet(nn.Module):  # the README's example, returns (logits, deep_supervision_logits)
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(inplace=True))
        self.down = nn.Sequential(nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(inplace=True))
        self.up = nn.ConvTranspose3d(16, 8, 2, stride=2)
        self.head = nn.Conv3d(16, 3, 1)
        self.aux = nn.Conv3d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.enc(x)
        d = self.down(e)
        return self.head(torch.cat([self.up(d), e], 1)), self.aux(d)


def _swinunetr() -> nn.Module:
    try:
        return nets.SwinUNETR(
            in_channels=1, out_channels=2, feature_size=12, spatial_dims=3, depths=(1, 1, 1, 1)
        )
    except TypeError:  # older MONAI needs img_size
        return nets.SwinUNETR(
            img_size=(64, 64, 64), in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1)
        )


# name: (factory, input shape, kind, expected suggestions)
CASES = {
    "monai_unet": (
        lambda: nets.UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        (1, 1, 32, 32, 32),
        "seg",
        ["model.1.submodule.1", "model.1"],
    ),
    "segresnet": (
        lambda: nets.SegResNet(
            spatial_dims=3,
            init_filters=8,
            in_channels=1,
            out_channels=2,
            blocks_down=(1, 1, 1),
            blocks_up=(1, 1),
        ),
        (1, 1, 32, 32, 32),
        "seg",
        ["down_layers.2", "up_layers.1"],
    ),
    "densenet": (
        lambda: nets.DenseNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            init_features=8,
            growth_rate=4,
            block_config=(2, 2, 2, 2),
        ),
        (1, 1, 64, 64, 64),
        "cls",
        ["features"],
    ),
    "resnet18": (
        lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2),
        (1, 1, 32, 32, 32),
        "cls",
        ["layer4"],
    ),
    "unetr": (
        lambda: nets.UNETR(
            in_channels=1,
            out_channels=2,
            img_size=(32, 32, 32),
            feature_size=4,
            hidden_size=24,
            mlp_dim=48,
            num_heads=4,
        ),
        (1, 1, 32, 32, 32),
        "seg",
        ["decoder5", "decoder2"],
    ),
    "readme_tiny_unet": (ReadmeTinyUNet, (1, 1, 32, 48, 40), "seg", ["down", "up"]),
    "tiny_segnet": (lambda: TinySegNet(ndim=3), (1, 1, 16, 24, 16), "seg", ["down", "dec"]),
    "tiny_resnet": (lambda: TinyResNet(ndim=3), (1, 1, 16, 24, 20), "cls", ["layer4"]),
}


def _outputs_and_selected(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o))
        for n, m in model.named_modules()
        if n
    ]
    try:
        raw = model(x.clone().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    return outputs, raw[0] if isinstance(raw, (tuple, list)) else raw


def _check_suggestions(model: nn.Module, shape: tuple[int, ...], kind: str, expected: list[str]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    suggestions = suggest_target_layers(model, x)
    names = [s.name for s in suggestions]
    assert names == expected
    assert suggest_target_layer(model, x) == expected[0]
    if kind == "seg":
        assert [s.role for s in suggestions] == ["bottleneck", "last decoder stage"]
    outputs, selected = _outputs_and_selected(model, x)
    for name in names:
        out = outputs[name]
        assert out.data_ptr() != selected.data_ptr() or out.shape != selected.shape, f"{name} is the output"
        (grad,) = torch.autograd.grad(selected.sum(), [out], retain_graph=True, allow_unused=True)
        assert grad is not None and bool(grad.abs().sum() > 0), f"{name} is off the gradient path"
        assert out.ndim == x.ndim and np.prod(out.shape[2:]) > 1
    target = ClassifierOutputTarget(1)
    for name in names:
        maps = medcam3d.GradCAM(model, [name], output_index=0)(x, [target])
        assert maps.shape == (1, *shape[2:]) and np.isfinite(maps).all()


SLOW = {"unetr", "resnet18"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_suggestions(name: str) -> None:
    factory, shape, kind, expected = CASES[name]
    torch.manual_seed(0)
    _check_suggestions(factory().eval(), shape, kind, expected)


@pytest.mark.slow
def test_suggestions_swinunetr() -> None:
    torch.manual_seed(0)
    _check_suggestions(_swinunetr().eval(), (1, 1, 64, 64, 64), "seg", ["encoder10", "decoder1"])


def test_monai_unet_was_given_its_own_output_and_tinyunet_its_side_head() -> None:
    """The two failures of the issue: 'model' (the whole UNet) and 'aux' (deep supervision)."""
    torch.manual_seed(0)
    unet = nets.UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    infos = {i.name: i for i in list_layers(unet, (1, 1, 32, 32, 32))}
    assert infos["model"].is_model_output and infos["model.2"].is_model_output
    assert suggest_target_layer(unet, (1, 1, 32, 32, 32)) not in ("model", "model.2")
    tiny = ReadmeTinyUNet().eval()
    infos = {i.name: i for i in list_layers(tiny, (1, 1, 32, 48, 40))}
    assert not infos["aux"].on_gradient_path and infos["head"].is_model_output
    assert suggest_target_layer(tiny, (1, 1, 32, 48, 40)) == "down"
