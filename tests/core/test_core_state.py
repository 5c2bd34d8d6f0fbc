"""The caller's model is left exactly as it was, also when a call fails half-way."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import medcam3d
from helpers_models import TinyResNet, TinySegNet, spatial_shape
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def snapshot(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        hook_counts(model),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_same_state(model: nn.Module, before) -> None:
    training, requires, grads, hooks, state = before
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters()), "a parameter .grad was created"
    assert hook_counts(model) == hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed (BatchNorm statistics updated?)"


def mixed_state_model(ndim: int) -> TinyResNet:
    torch.manual_seed(0)
    model = TinyResNet(ndim=ndim)
    model.train()  # the caller is training
    model.layer1.eval()  # … with one frozen sub-module in eval
    model.stem[0].weight.requires_grad_(False)  # … and one frozen parameter
    return model


def test_state_untouched_after_a_successful_call(ndim):
    model = mixed_state_model(ndim)
    before = snapshot(model)
    maps = medcam3d.GradCAM(model, [model.layer4])(
        torch.randn(2, 1, *spatial_shape(ndim)), [ClassifierOutputTarget(0)] * 2
    )
    assert maps.shape[0] == 2
    assert_same_state(model, before)


class Boom(RuntimeError):
    pass


def test_state_untouched_when_the_model_raises(ndim):
    model = mixed_state_model(ndim)
    before = snapshot(model)

    def explode(module, inputs, output):
        raise Boom("model failure in the middle of the forward pass")

    handle = model.layer4.register_forward_hook(explode)
    try:
        before = snapshot(model)
        with pytest.raises(Boom):
            medcam3d.GradCAM(model, [model.layer3])(
                torch.randn(2, 1, *spatial_shape(ndim)), [ClassifierOutputTarget(0)] * 2
            )
        assert_same_state(model, before)
    finally:
        handle.remove()


def test_state_untouched_when_a_target_raises(ndim):
    model = mixed_state_model(ndim)
    before = snapshot(model)

    def bad_target(output: torch.Tensor) -> torch.Tensor:
        raise Boom("target failure")

    with pytest.raises(Boom):
        medcam3d.HiResCAM(model, [model.layer4])(
            torch.randn(2, 1, *spatial_shape(ndim)), [bad_target, bad_target]
        )
    assert_same_state(model, before)


def test_works_inside_no_grad(ndim):
    model = TinyResNet(ndim=ndim).eval()
    x = torch.randn(2, 1, *spatial_shape(ndim))
    expected = medcam3d.GradCAM(model, [model.layer4])(x, [ClassifierOutputTarget(1)] * 2)
    with torch.no_grad():
        got = medcam3d.GradCAM(model, [model.layer4])(x, [ClassifierOutputTarget(1)] * 2)
    np.testing.assert_array_equal(got, expected)
    assert torch.is_grad_enabled()


def test_inference_mode_gets_a_clear_error():
    model = TinyResNet(ndim=2).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        medcam3d.GradCAM(model, [model.layer4])(torch.randn(1, 1, 16, 16), [ClassifierOutputTarget(0)])


def test_in_place_activation_after_the_target_layer_does_not_corrupt_it():
    # TinySegNet's convs are followed by LeakyReLU(inplace=True), as in nnU-Net.
    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    x = torch.randn(1, 1, 16, 24, 20)
    conv = model.down[0]
    acts = (
        conv(model.enc(x)).detach().requires_grad_(True)
    )  # pre-activation values, as the layer returns them
    act = model.down[1](acts.clone())
    logits = model.head(model.dec(torch.cat([model.up(act), model.enc(x)], 1)))
    mask = logits.detach()[0].argmax(0) == 1
    (g,) = torch.autograd.grad((logits[0, 1] * mask).sum(), acts)
    expected = torch.relu((g * acts).sum(1))
    res = medcam3d.HiResCAM(model, [conv], normalize=False).compute(x, [SemanticSegmentationTarget(1)])
    got = res.layer_maps[0]
    ref = torch.nn.functional.interpolate(expected[:, None].detach(), size=x.shape[2:], mode="trilinear")[
        :, 0
    ]
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _live_tensors() -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the resident memory")
def test_memory_stays_flat_over_200_calls():
    torch.manual_seed(0)
    model = TinyResNet(ndim=3).eval()
    x = torch.randn(2, 1, 8, 12, 10)
    cam = medcam3d.GradCAM(model, [model.layer4])
    targets = [ClassifierOutputTarget(1)] * 2
    for _ in range(20):
        cam(x, targets)
    gc.collect()
    tensors_before, rss_before = _live_tensors(), _rss_mb()
    for _ in range(200):
        cam(x, targets)
    gc.collect()
    tensors_after, rss_after = _live_tensors(), _rss_mb()
    assert tensors_after - tensors_before <= 2, "tensors accumulate across calls"
    assert rss_after - rss_before < 40, f"resident memory grew by {rss_after - rss_before:.1f} MB"


class _Recorder(torch.overrides.TorchFunctionMode):
    FORBIDDEN = {"cpu", "numpy", "tolist"}

    def __init__(self, allowed: torch.Tensor) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.allowed = allowed  # the input may move to the model's device (the CPU here)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.FORBIDDEN:
            self.calls.append(name)
        if (
            name == "to"
            and args
            and args[0] is not self.allowed
            and any(
                (isinstance(a, (str, torch.device)) and str(a).startswith("cpu"))
                for a in list(args[1:]) + list((kwargs or {}).values())
            )
        ):
            self.calls.append("to(cpu)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "method",
    [medcam3d.GradCAM, medcam3d.GradCAMPlusPlus, medcam3d.HiResCAM, medcam3d.LayerCAM, medcam3d.SegXResCAM],
)
def test_no_numpy_and_no_cpu_copy_inside_the_pipeline(method):
    torch.manual_seed(0)
    model = TinyResNet(ndim=3).eval()
    x = torch.randn(2, 1, 16, 24, 20)
    cam = method(model, [model.layer4, model.layer3])
    numpy_calls: list[str] = []

    def profiler(frame, event, arg):
        if event == "call" and "/numpy/" in frame.f_code.co_filename:
            numpy_calls.append(frame.f_code.co_name)
        elif event == "c_call" and (getattr(arg, "__module__", "") or "").startswith("numpy"):
            numpy_calls.append(arg.__name__)

    recorder = _Recorder(allowed=x)
    sys.setprofile(profiler)
    try:
        with recorder:
            result = cam.compute(x, None, aug_smooth=False)
            cam.compute(x, [ClassifierOutputTarget(2)] * 2, aug_smooth=True)
    finally:
        sys.setprofile(None)
    assert isinstance(result.maps, torch.Tensor) and result.maps.shape == (2, 16, 24, 20)
    assert recorder.calls == [], f"host copies inside the pipeline: {recorder.calls}"
    assert numpy_calls == [], f"numpy used inside the pipeline: {sorted(set(numpy_calls))}"


def test_return_tensor_gives_torch_on_the_model_device():
    model = TinyResNet(ndim=2).eval()
    maps = medcam3d.GradCAM(model, [model.layer4], return_tensor=True)(torch.randn(2, 1, 20, 12))
    assert isinstance(maps, torch.Tensor) and maps.device == next(model.parameters()).device
    assert maps.shape == (2, 20, 12)
