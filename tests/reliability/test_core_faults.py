"""Faults and bad input in the core (issue "nothing silently wrong", items 2, 5, 14, 15): threads, dtypes,
the meta device, missing layers, budgets given as strings, targets a method never reads, empty masks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import medcam3d
import medcam3d.errors
from helpers_models import TinyResNet
from medcam3d import GradCAM, GuidedBackpropReLUModel, LayerCAM, ScoreCAM, guided_backprop
from medcam3d.errors import ConfigurationError, InputShapeError, NonFiniteInputError
from medcam3d.utils.model_targets import ClassifierOutputTarget


def _model(ndim: int = 2, seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    return TinyResNet(ndim=ndim).eval()


def _x(ndim: int = 2, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (16, 16) if ndim == 2 else (8, 12, 10)
    return torch.randn(batch, 1, *shape, generator=generator)


def test_a_budget_given_as_a_string_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="positive number of bytes"):
        ScoreCAM(_model(), ["layer4"], batch_memory_bytes="1GB")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gradient_memory_bytes"):
        GradCAM(_model(), ["layer4"], gradient_memory_bytes=0)


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
