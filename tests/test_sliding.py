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
