"""The per-call context: a CAM object holds configuration only, hooks get the call's context when
they ask for it, calls from several threads leave the model intact, and the core depends on nothing
above it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import medcam3d
import medcam3d.errors
from helpers_models import TinyResNet
from medcam3d import (
    BaseCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GuidedGradCAM,
    ScoreCAM,
    available_methods,
    get_method,
)
from medcam3d.core.context import CallContext
from medcam3d.core.protocol import CAMMethod
from medcam3d.core.tensors import spatial_mean
from medcam3d.utils.model_targets import ClassifierOutputTarget


def _model(ndim: int = 2, seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    return TinyResNet(ndim=ndim).eval()


def _x(ndim: int = 2, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (16, 16) if ndim == 2 else (8, 12, 10)
    return torch.randn(batch, 1, *shape, generator=generator)


@pytest.mark.parametrize("method", [GradCAM, ScoreCAM, FullGrad, GuidedGradCAM])
def test_a_call_leaves_no_state_on_the_object(method: type[BaseCAM]) -> None:
    model = _model()
    kwargs = {"progress": False} if method is ScoreCAM else {}
    cam = method(model, ["layer4"], **kwargs)
    before = {key: value for key, value in vars(cam).items() if key not in ("outputs", "_probe_cache")}
    cam(_x(), [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    after = {key: value for key, value in vars(cam).items() if key not in ("outputs", "_probe_cache")}
    assert before.keys() == after.keys()
    for key in before:
        assert before[key] is after[key], key
    assert cam.outputs is not None and cam.outputs.shape == (2, 3)  # pytorch-grad-cam's attribute


class PlainWeights(BaseCAM):
    """Written for the earlier two-argument hook: no context parameter."""

    def weights(self, activations, grads):  # type: ignore[no-untyped-def, override]
        return spatial_mean(grads)


class ContextWeights(BaseCAM):
    """A hook that reads the call's context: the layer and the targets of this call."""

    seen: list[tuple[str, int, tuple[int, ...]]]

    def weights(self, activations: torch.Tensor, grads: torch.Tensor, context: CallContext) -> torch.Tensor:
        assert context.output is not None and context.scores is not None
        self.seen.append((context.layer_name, len(context.targets), tuple(context.input_tensor.shape)))
        return spatial_mean(grads)


def test_hooks_get_the_context_only_when_they_declare_it() -> None:
    model, x = _model(), _x()
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    reference = GradCAM(model, ["layer3", "layer4"])(x, targets)
    np.testing.assert_allclose(PlainWeights(model, ["layer3", "layer4"])(x, targets), reference, atol=1e-6)
    cam = ContextWeights(model, ["layer3", "layer4"])
    cam.seen = []
    np.testing.assert_allclose(cam(x, targets), reference, atol=1e-6)
    assert cam.seen == [("layer3", 2, tuple(x.shape)), ("layer4", 2, tuple(x.shape))]


def _count_forwards(model: torch.nn.Module) -> list[int]:
    count = [0]

    def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
        count[0] += 1

    model.register_forward_hook(hook)
    return count


@pytest.mark.parametrize("method", [FullGrad, GuidedGradCAM])
def test_compute_multi_serves_every_set_from_one_forward(method: type[BaseCAM]) -> None:
    model, x = _model(), _x()
    cam = method(model, ["layer4"])
    sets = [[ClassifierOutputTarget(c), ClassifierOutputTarget(c)] for c in (0, 1, 2)]
    singles = [cam.compute(x, t).maps for t in sets]
    count = _count_forwards(model)
    multi = cam.compute_multi(x, sets)
    assert count[0] == 1
    for one, many in zip(singles, multi):
        torch.testing.assert_close(many.maps, one, atol=1e-5, rtol=1e-5)


def test_every_method_satisfies_the_protocol() -> None:
    model = _model()
    for name in available_methods():
        cls = get_method(name)
        cam = cls(model, ["layer4"]) if cls is not FullGrad else cls(model)
        assert isinstance(cam, CAMMethod), name
    assert isinstance(FinerCAM(model, ["layer4"]), CAMMethod)


def test_finer_cam_compute_multi_equals_compute() -> None:
    torch.manual_seed(3)
    model = TinyResNet(ndim=2, num_classes=5).eval()
    x = _x()
    cam = FinerCAM(model, ["layer4"])
    sets = [None, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]]
    multi = cam.compute_multi(x, sets)
    for given, result in zip(sets, multi):
        torch.testing.assert_close(result.maps, cam.compute(x, given).maps, atol=1e-5, rtol=1e-5)
    assert cam.layer_names == ["layer4"]


def test_the_core_imports_nothing_above_it() -> None:
    core = Path(medcam3d.__file__).parent / "core"
    forbidden = ("medcam3d.utils", "medcam3d.methods", "medcam3d.nnunet", "medcam3d.io", "medcam3d.viz")
    forbidden += ("medcam3d.sliding", "medcam3d.cli", "medcam3d.demo", "medcam3d.metrics")
    offenders = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(forbidden)]
    assert not offenders, offenders
