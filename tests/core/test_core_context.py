"""The per-call context: a CAM object holds configuration only, hooks get the call's context when
they ask for it, calls from several threads leave the model intact, and the core depends on nothing
above it."""

from __future__ import annotations

import ast
import threading
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
    GuidedBackpropReLUModel,
    GuidedGradCAM,
    LayerCAM,
    ScoreCAM,
    available_methods,
    get_method,
    guided_backprop,
)
from medcam3d.core.context import CallContext
from medcam3d.core.protocol import CAMMethod
from medcam3d.core.tensors import spatial_mean
from medcam3d.errors import InputShapeError, NonFiniteInputError
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


def test_concurrent_calls_on_one_model_keep_it_intact() -> None:
    """Four threads share one model (two CAM objects); the model is in training mode with trainable
    parameters, so a lost restore or a BatchNorm update would show."""
    model = _model()
    model.train()
    x = _x(batch=1)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    cams = [GradCAM(model, ["layer4"]), LayerCAM(model, ["layer3"])]
    expected = [cam(x, [ClassifierOutputTarget(1)]) for cam in cams]
    errors: list[BaseException] = []
    results: list[tuple[int, np.ndarray]] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        try:
            for _ in range(6):
                out = cams[index % 2](x, [ClassifierOutputTarget(1)])
                with lock:
                    results.append((index % 2, out))
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 24
    for which, out in results:
        np.testing.assert_allclose(out, expected[which], atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, params[name]), name


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


def test_inputs_of_another_dtype_or_on_meta_are_refused_before_any_work() -> None:
    model = _model()
    with pytest.raises(InputShapeError, match=r"Cast the input to the model's dtype"):
        GradCAM(model, ["layer4"])(_x().half(), [ClassifierOutputTarget(0)] * 2)
    with pytest.raises(InputShapeError, match="meta"):
        GradCAM(model, ["layer4"])(torch.empty(2, 1, 16, 16, device="meta"), [ClassifierOutputTarget(0)] * 2)
    meta_model = TinyResNet(ndim=2).to("meta")
    with pytest.raises(InputShapeError, match="meta"):
        GradCAM(meta_model, ["layer4"])(_x(), [ClassifierOutputTarget(0)] * 2)


def test_guided_backprop_runs_the_common_input_checks() -> None:
    model = _model()
    bad = _x()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteInputError):
        guided_backprop(model, bad, 0)
    with pytest.raises(NonFiniteInputError):
        GuidedBackpropReLUModel(model)(bad, 0)
    with pytest.raises(InputShapeError, match=r"\(N, C, H, W\)"):
        guided_backprop(model, torch.randn(1, 1, 4, 8, 8), 0)
    with pytest.raises(InputShapeError, match="floating point"):
        guided_backprop(model, torch.ones(1, 1, 16, 16, dtype=torch.int64), 0)


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


def test_target_layers_none_is_a_clear_error() -> None:
    from medcam3d.errors import LayerNotFoundError

    with pytest.raises(LayerNotFoundError, match="suggest_target_layer"):
        GradCAM(_model(), None)  # type: ignore[arg-type]


def test_methods_that_read_no_target_run_on_a_segmenter_without_targets() -> None:
    from helpers_models import TinySegNet
    from medcam3d import FEM, KPCA_CAM, EigenCAM, RandomCAM

    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    x = torch.randn(2, 1, 8, 12, 10)
    for method in (EigenCAM, KPCA_CAM, FEM, RandomCAM):
        result = method(model, ["down"]).compute(x)
        assert result.maps.shape == (2, 8, 12, 10) and result.scores is None
        assert bool(torch.isfinite(result.maps).all())
    with pytest.raises(medcam3d.errors.TargetError, match="SemanticSegmentationTarget"):
        GradCAM(model, ["down"]).compute(x)  # reads targets: still asks for them


def test_an_empty_segmentation_mask_warns() -> None:
    from helpers_models import TinySegNet
    from medcam3d.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model = TinySegNet(ndim=2).eval()
    x = torch.randn(1, 1, 16, 16)
    empty = np.zeros((16, 16), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="the given mask is empty"):
        maps = GradCAM(model, ["down"])(x, [SemanticSegmentationTarget(1, empty)])
    assert float(np.abs(maps).max()) == 0.0
