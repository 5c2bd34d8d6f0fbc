"""Sliding-window CAM on any model (MONAI UNet / SegResNet), against nnU-Net's geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam3d import GradCAM, HiResCAM
from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.sliding import (
    SlidingSegmentationTarget,
    SlidingWindowCAM,
    accumulator_device_for,
    compute_steps,
    gaussian_importance_map,
    mirror_combinations,
    patch_slicers,
    sliding_window_cam,
)

monai_nets = pytest.importorskip("monai.networks.nets")


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return monai_nets.UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()


@pytest.mark.parametrize(
    "image, patch, step",
    [
        ((40, 30, 20), (16, 16, 16), 0.5),
        ((110,), (64,), 0.5),
        ((16, 17), (16, 8), 0.33),
        ((200, 96), (64, 96), 1.0),
    ],
)
def test_steps_match_nnunet(image, patch, step):
    nn_sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    assert compute_steps(image, patch, step) == nn_sw.compute_steps_for_sliding_window(image, patch, step)


def test_gaussian_matches_nnunet():
    nn_sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    for patch in [(16, 16, 16), (12, 20), (7, 9, 11)]:
        ours = gaussian_importance_map(patch, dtype=torch.float64)
        theirs = nn_sw.compute_gaussian(
            patch, value_scaling_factor=1, dtype=torch.float64, device=torch.device("cpu")
        )
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-9)
        assert ours.min() > 0


def test_mirror_combinations_and_slicers():
    assert mirror_combinations(None) == [()]
    assert mirror_combinations((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    slicers = patch_slicers((3, 20, 20), (16, 16), 0.5)  # 2D patches over a 3D volume
    assert len(slicers) == 3 * 2 * 2 and slicers[0][1] == 0 and slicers[-1][1] == 2


def test_unet_maps_shape_range_and_class_specific(unet):
    torch.manual_seed(1)
    volume = torch.randn(1, 28, 24, 20)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(cam, (16, 16, 16), step_size=0.5, mirror_axes=(1,), progress=False)
    maps = engine(volume, [SlidingSegmentationTarget(0), SlidingSegmentationTarget(1)])
    assert maps.shape == (2, 28, 24, 20)
    assert torch.isfinite(maps).all() and maps.min() == 0 and maps.max() == pytest.approx(1.0)
    assert not torch.allclose(maps[0], maps[1])


def test_several_targets_one_forward_each_equal_single_runs(unet):
    """T targets: one batch-1 forward per (patch, mirror), and each map equals its single-target run."""
    torch.manual_seed(3)
    volume = torch.randn(1, 24, 20, 18)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(cam, (16, 16, 16), step_size=0.5, mirror_axes=(0,), progress=False)
    batch_sizes: list[int] = []
    handle = unet.register_forward_pre_hook(lambda _m, args: batch_sizes.append(int(args[0].shape[0])))
    try:
        both = engine(volume, [SlidingSegmentationTarget(0), SlidingSegmentationTarget(1)])
        n_both = len(batch_sizes)
        singles = [engine(volume, [SlidingSegmentationTarget(k)])[0] for k in (0, 1)]
    finally:
        handle.remove()
    assert set(batch_sizes) == {1}
    assert n_both == 8 * 2 and len(batch_sizes) == 3 * n_both  # 8 patches x 2 mirrors, per run
    for k in range(2):
        torch.testing.assert_close(both[k], singles[k], rtol=0, atol=0)


def test_single_patch_equals_plain_cam(unet):
    """A volume of exactly one patch without mirroring gives the plain CAM, normalised once."""
    from medcam3d.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(2)
    volume = torch.randn(1, 16, 16, 16)
    cam = HiResCAM(unet, target_layers=["model.1.submodule.0"])
    plain = cam(volume[None], [SemanticSegmentationTarget(1)])[0]
    ours = sliding_window_cam(cam, volume, (16, 16, 16), targets=1, progress=False)[0]
    np.testing.assert_allclose(ours.numpy(), plain, atol=1e-5)


def test_raw_maps_are_on_one_scale(unet):
    """Accumulation is of raw maps: with normalization='none' the result is the weighted mean of the raw
    per-patch maps, so a constant model contribution is preserved exactly (no per-patch min-max)."""
    torch.manual_seed(3)
    volume = torch.randn(1, 24, 24, 24)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(cam, (16, 16, 16), normalization="none", progress=False)
    state = engine.accumulate(volume, [SlidingSegmentationTarget(1, whole_channel=True)])
    assert state.map_sum.shape == (1, 24, 24, 24) and state.weight.shape == (
        24,
        24,
        24,
    )  # grows with the volume
    assert state.n_patches == 8
    raw = engine.finalize(state)
    scaled = engine.finalize(type(state)(state.map_sum * 3, state.weight, state.crop, state.pad))
    np.testing.assert_allclose(scaled.numpy(), 3 * raw.numpy(), rtol=1e-5)


def test_short_axis_is_padded_not_nan(unet):
    """An axis shorter than half a patch: padded, never NaN."""
    volume = torch.randn(1, 5, 30, 20)
    maps = sliding_window_cam(
        GradCAM(unet, target_layers=["model.1.submodule.0"]), volume, (16, 16, 16), progress=False
    )
    assert maps.shape == (1, 5, 30, 20) and torch.isfinite(maps).all()


def test_mask_target_is_cropped_and_mirrored(unet):
    volume = torch.randn(1, 24, 24, 24)
    mask = torch.zeros(24, 24, 24)
    mask[2:8, 2:8, 2:8] = 1
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(cam, (16, 16, 16), mirror_axes=(0, 1), progress=False)
    maps = engine(volume, [SlidingSegmentationTarget(1, mask=mask)])
    assert maps.shape == (1, 24, 24, 24) and torch.isfinite(maps).all()
    with pytest.raises(Exception, match="mask has shape"):
        engine(volume, [SlidingSegmentationTarget(1, mask=torch.zeros(3, 3, 3))])


def test_2d_network_over_3d_volume_and_slice_normalisation():
    torch.manual_seed(4)
    net = monai_nets.SegResNet(
        spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)
    ).eval()
    volume = torch.randn(1, 3, 20, 24)
    cam = GradCAM(net, target_layers=["down_layers.1"])
    maps = SlidingWindowCAM(cam, (16, 16), normalization="slice", progress=False)(
        volume, [SlidingSegmentationTarget(1)]
    )
    assert maps.shape == (1, 3, 20, 24)
    per_slice = maps[0].reshape(3, -1).amax(dim=1)
    assert all(v == pytest.approx(1.0) or v == 0 for v in per_slice.tolist())


def test_bad_arguments(unet):
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    with pytest.raises(ConfigurationError):
        SlidingWindowCAM(cam, (16, 16, 16), step_size=0)
    with pytest.raises(ConfigurationError):
        SlidingWindowCAM(cam, (16, 16, 16), mirror_axes=(3,))
    with pytest.raises(InputShapeError):
        SlidingWindowCAM(cam, (16, 16, 16), progress=False)(
            torch.randn(16, 16), [SlidingSegmentationTarget(1)]
        )


# ---------------------------------------------------------------------------------- FinerCAM, any CAMMethod
@pytest.fixture(scope="module")
def unet4() -> torch.nn.Module:
    """A 3D segmenter with four classes (so that FinerCAM has classes to compare against)."""
    torch.manual_seed(5)
    return monai_nets.UNet(3, 1, 4, channels=(4, 8, 16), strides=(2, 2)).eval()


def _finer_reference_target(category: int, others: list[int], alpha: float):
    """FinerCAM's score for segmentation written out in the test: over the voxels predicted as
    ``category``, Σ_j p_j (y_k − α y_j) / Σ_j p_j with p the per-voxel softmax."""

    def score(output: torch.Tensor) -> torch.Tensor:
        region = (output.detach().argmax(dim=0) == category).to(output.dtype)
        probs = torch.exp(output) / torch.exp(output).sum(dim=0, keepdim=True)
        numerator = sum(probs[j] * (output[category] - alpha * output[j]) for j in others)
        denominator = sum(probs[j] for j in others)
        return (region * numerator / denominator).sum()

    return score


def test_finercam_through_the_engine_equals_its_formula_on_one_patch(unet4):
    """FinerCAM (a wrapper holding a base method) runs through the engine; on a one-patch volume its
    map is Grad-CAM of FinerCAM's comparison score, the comparison class chosen as the class whose mean
    logit over the predicted region is closest to the target class's (rank 1)."""
    from medcam3d import FinerCAM
    from medcam3d.sliding import SlidingFinerTarget

    torch.manual_seed(6)
    volume = torch.randn(1, 16, 16, 16)
    layer = ["model.1.submodule.0"]
    finer = FinerCAM(unet4, target_layers=layer)
    engine = SlidingWindowCAM(finer, (16, 16, 16), normalization="none", progress=False)
    ours = engine(volume, [SlidingFinerTarget(2, comparison_ranks=(1,), alpha=0.7)])[0]

    with torch.no_grad():
        logits = unet4(volume[None])[0]
    inside = (logits.argmax(dim=0) == 2).flatten()
    assert inside.any()
    means = logits.flatten(1)[:, inside].mean(dim=1).numpy()
    closest = min((j for j in range(4) if j != 2), key=lambda j: abs(means[j] - means[2]))
    reference = GradCAM(unet4, target_layers=layer).compute(
        volume[None], [_finer_reference_target(2, [closest], 0.7)], normalize=False
    )
    np.testing.assert_allclose(ours.numpy(), reference.maps[0].numpy(), rtol=1e-4, atol=1e-6)
    plain = engine(volume, [SlidingSegmentationTarget(2)])[0]
    assert not torch.allclose(ours, plain)  # the comparison changes the map


def test_finercam_several_targets_mirrored_patches(unet4):
    """Several Finer targets over several mirrored patches: one batch-1 forward per target set when the
    method has no compute_multi (or one per patch when it has); each map equals its single-target run
    and FinerCAM equals its base method given the same targets."""
    from medcam3d import FinerCAM
    from medcam3d.sliding import SlidingFinerTarget

    torch.manual_seed(7)
    volume = torch.randn(1, 24, 20, 18)
    layer = ["model.1.submodule.0"]
    finer = FinerCAM(unet4, target_layers=layer)
    engine = SlidingWindowCAM(finer, (16, 16, 16), mirror_axes=(0,), progress=False)
    targets = [SlidingFinerTarget(1), SlidingFinerTarget(3, comparison_categories=[0, 2], whole_channel=True)]
    batch_sizes: list[int] = []
    handle = unet4.register_forward_pre_hook(lambda _m, args: batch_sizes.append(int(args[0].shape[0])))
    try:
        both = engine(volume, targets)
    finally:
        handle.remove()
    assert set(batch_sizes) == {1}
    passes = 8 * 2  # 8 patches x 2 mirrors
    assert len(batch_sizes) == (passes if hasattr(finer, "compute_multi") else 2 * passes)
    assert both.shape == (2, 24, 20, 18) and torch.isfinite(both).all()
    assert float(both.min()) >= 0.0 and float(both.max()) == pytest.approx(1.0)
    for k, t in enumerate(targets):
        torch.testing.assert_close(both[k], engine(volume, [t])[0], rtol=0, atol=0)
    base = SlidingWindowCAM(
        GradCAM(unet4, target_layers=layer), (16, 16, 16), mirror_axes=(0,), progress=False
    )
    torch.testing.assert_close(both, base(volume, targets), rtol=1e-5, atol=1e-6)


def test_any_cam_method_is_accepted_and_anything_else_refused(unet):
    class Minimal:
        """Only what CAMMethod needs for one target: a model and compute()."""

        def __init__(self, cam: GradCAM) -> None:
            self.model = cam.model
            self.inner = cam

        def compute(self, x, targets, **kwargs):
            return self.inner.compute(x, targets, **kwargs)

    volume = torch.randn(1, 20, 16, 16)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    minimal = SlidingWindowCAM(Minimal(cam), (16, 16, 16), progress=False)(
        volume, [SlidingSegmentationTarget(1)]
    )
    full = SlidingWindowCAM(cam, (16, 16, 16), progress=False)(volume, [SlidingSegmentationTarget(1)])
    torch.testing.assert_close(minimal, full, rtol=0, atol=0)
    with pytest.raises(ConfigurationError, match="CAMMethod"):
        SlidingWindowCAM(unet, (16, 16, 16))  # a model, not a method
    with pytest.raises(ConfigurationError, match="has no model or compute"):
        SlidingWindowCAM(object(), (16, 16, 16))


# ---------------------------------------------------------------------------------- the engine's parts
def test_prepare_is_called_once_per_volume_with_shape_and_padding(unet):
    """PatchTarget.prepare(spatial_shape, pad) runs once per volume before the patches; a target with
    only for_patch still works."""
    from medcam3d.sliding import PatchInfo, PatchTarget

    class Recording:
        def __init__(self) -> None:
            self.prepared: list[tuple[tuple[int, ...], list[tuple[int, int]]]] = []
            self.patches = 0

        def prepare(self, spatial_shape, pad):
            self.prepared.append((spatial_shape, pad))

        def for_patch(self, info: PatchInfo):
            self.patches += 1
            return lambda output: output[1].sum()

    class OnlyForPatch:
        def for_patch(self, info: PatchInfo):
            return lambda output: output[1].sum()

    recording = Recording()
    assert isinstance(recording, PatchTarget) and isinstance(SlidingSegmentationTarget(1), PatchTarget)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(cam, (16, 16, 16), mirror_axes=(2,), progress=False)
    volume = torch.randn(1, 11, 20, 16)  # the first axis is padded by 5: (2, 3)
    maps = engine(volume, [recording, OnlyForPatch()])
    assert recording.prepared == [((11, 20, 16), [(2, 3), (0, 0), (0, 0)])]
    assert recording.patches == 2 * 2  # 2 patches x 2 mirrors
    whole = engine(volume, [SlidingSegmentationTarget(1, whole_channel=True)])[0]
    torch.testing.assert_close(maps[0], whole, rtol=0, atol=0)
    torch.testing.assert_close(maps[1], whole, rtol=0, atol=0)


def test_importance_computed_once_and_handed_to_the_outputs_hook(unet):
    """The patch weight is computed once per state (not per run or patch); the outputs hook gets that
    very tensor and one output per mirror; raw_mean is Σ w·map / Σ w without the padding."""
    calls: list[tuple[int, ...]] = []

    def counting_gaussian(size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        calls.append(size)
        return gaussian_importance_map(size, sigma_scale=0.5, device=device).to(torch.float16)  # no zeros

    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    engine = SlidingWindowCAM(
        cam,
        (16, 16, 16),
        mirror_axes=(0, 1),
        normalization="none",
        progress=False,
        gaussian_fn=counting_gaussian,
    )
    volume = torch.randn(1, 14, 24, 16)
    seen: list[tuple[int, torch.Tensor]] = []
    state = engine.new_state(tuple(volume.shape), 1)
    for _ in range(2):  # two "folds" into one state
        engine.accumulate(
            volume,
            [SlidingSegmentationTarget(1)],
            state,
            on_outputs=lambda slicer, outputs, importance: seen.append((len(outputs), importance)),
        )
    assert calls == [(16, 16, 16)]
    assert state.importance is not None and state.importance.dtype == torch.float16
    assert all(n == 4 and w is state.importance for n, w in seen) and len(seen) == state.n_patches == 4
    expected = (state.map_sum / state.weight)[:, 1:15]  # padding (1, 1) on the first axis
    torch.testing.assert_close(engine.raw_mean(state), expected, rtol=0, atol=0)
    torch.testing.assert_close(engine.finalize(state), engine.raw_mean(state), rtol=0, atol=0)  # "none"
    w = state.importance.to(torch.float32)
    steps = compute_steps((16, 24, 16), (16, 16, 16), 0.5)
    total = torch.zeros(16, 24, 16)
    for a in steps[1]:
        total[:, a : a + 16, :] += w
    torch.testing.assert_close(state.weight, 2 * 4 * total)  # 2 runs x 4 mirrors


def test_accumulators_move_to_the_cpu_only_when_they_would_not_fit_the_device():
    gpu = torch.device("cuda", 0)  # a device object; no GPU is needed to decide
    cpu = torch.device("cpu")
    assert accumulator_device_for(cpu, 10**15) == cpu
    assert accumulator_device_for(gpu, 4 * 2**30, free_bytes=40 * 2**30) == gpu
    assert accumulator_device_for(gpu, 30 * 2**30, free_bytes=40 * 2**30) == cpu  # > half the free memory
    assert accumulator_device_for(gpu, 30 * 2**30, free_bytes=40 * 2**30, share=0.9) == gpu


def test_accumulator_device_option(unet):
    """``accumulator_device`` places the state's sums there; the maps are the same as with "auto"."""
    torch.manual_seed(4)
    volume = torch.randn(1, 20, 20, 18)
    cam = GradCAM(unet, target_layers=["model.1.submodule.0"])
    auto = SlidingWindowCAM(cam, (16, 16, 16), mirror_axes=(1,), progress=False)
    on_cpu = SlidingWindowCAM(cam, (16, 16, 16), mirror_axes=(1,), progress=False, accumulator_device="cpu")
    state = on_cpu.new_state(tuple(volume.shape), 2)
    assert state.map_sum.device.type == "cpu" and state.weight.device.type == "cpu"
    targets = [SlidingSegmentationTarget(0), SlidingSegmentationTarget(1)]
    torch.testing.assert_close(
        on_cpu.finalize(on_cpu.accumulate(volume, targets, state=state)), auto(volume, targets)
    )
    with pytest.raises(ConfigurationError, match="accumulator_device must be 'auto' or a device"):
        SlidingWindowCAM(cam, (16, 16, 16), accumulator_device="no-such-device")
