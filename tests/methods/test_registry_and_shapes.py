"""Every registered method on 2D and 3D models, batch 2, non-cubic input; the registry and its CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medcam3d
from helpers_models import TinyResNet, TinySegNet
from medcam3d.cli import main as cli_main
from medcam3d.errors import ConfigurationError
from medcam3d.utils.model_targets import SemanticSegmentationTarget

NAMES = [
    "gradcam", "gradcam++", "hirescam", "gradcamelementwise", "xgradcam", "layercam", "eigencam",
    "eigengradcam", "kpcacam", "ablationcam", "scorecam", "fullgrad", "shapleycam", "fem", "finercam",
    "segxrescam", "randomcam", "guidedgradcam", "segeigencam", "refinecam", "sess",
]  # fmt: skip


def build(name: str, model: torch.nn.Module, layer: torch.nn.Module) -> object:
    cls = medcam3d.available_methods()[name]
    kwargs: dict[str, object] = {"progress": False} if name in ("scorecam", "ablationcam", "sess") else {}
    if name == "fullgrad":
        return cls(model)
    return cls(model, [layer], **kwargs)


def test_registry_names_and_flags() -> None:
    methods = medcam3d.available_methods()
    assert list(methods) == NAMES
    table = {info.name: info for info in medcam3d.method_table()}
    for name, cls in methods.items():
        info = table[name]
        assert info.cls is cls and info.description and "\n" not in info.description
        assert info.uses_gradients == bool(getattr(cls, "uses_gradients", True)), name
    assert medcam3d.get_method("GradCAM++") is medcam3d.GradCAMPlusPlus
    with pytest.raises(ConfigurationError, match="Available"):
        medcam3d.get_method("nope")


def test_methods_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"\n{name} " in out
    assert "ScoreCAM" in out and "gradients" in out


@pytest.mark.parametrize("name", NAMES)
def test_every_method_nd_batch2(name: str, ndim: int) -> None:
    torch.manual_seed(0)
    model = TinyResNet(ndim=ndim).eval()
    x = torch.randn(2, 1, *(10, 18, 14)[-ndim:])
    cam = build(name, model, model.layer3)
    for eigen_smooth in (False, True) if ndim == 3 else (False,):
        maps = cam(x, eigen_smooth=eigen_smooth)
        assert isinstance(maps, np.ndarray) and maps.shape == (2, *x.shape[2:]), name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
        assert maps.reshape(2, -1).max(axis=1).min() > 0.5, f"{name}: an empty map"
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()), name


@pytest.mark.parametrize(
    "name", ["gradcam", "eigencam", "scorecam", "ablationcam", "fullgrad", "fem", "guidedgradcam"]
)
def test_methods_on_a_segmenter_with_tuple_output(name: str) -> None:
    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    x = torch.randn(2, 1, 8, 12, 10)
    cam = build(name, model, model.dec)
    targets = [SemanticSegmentationTarget(1, None)] * 2
    maps = cam(x, targets)
    assert maps.shape == (2, 8, 12, 10) and np.isfinite(maps).all()
