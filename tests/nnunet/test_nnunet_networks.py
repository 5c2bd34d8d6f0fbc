"""nnU-Net's network classes: ResidualEncoderUNet through the nnU-Net loop, deep supervision and
in-place LeakyReLU through the sliding engine, layer suggestions."""

from __future__ import annotations

import builder
import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from medcam3d import GradCAM
from medcam3d.nnunet import NnUNetCAM, load_predictor, suggested_layers
from medcam3d.sliding import SlidingSegmentationTarget, SlidingWindowCAM

KW = dict(
    conv_op=torch.nn.Conv3d,
    norm_op=torch.nn.InstanceNorm3d,
    norm_op_kwargs={"eps": 1e-5, "affine": True},
    nonlin=torch.nn.LeakyReLU,
    nonlin_kwargs={"inplace": True},
    conv_bias=True,
)


def _resenc(in_channels: int, classes: int) -> ResidualEncoderUNet:
    torch.manual_seed(0)
    return ResidualEncoderUNet(
        in_channels,
        4,
        [8, 16, 32, 64],
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 2, 2, 2],
        num_classes=classes,
        n_conv_per_stage_decoder=[1, 1, 1],
        **KW,
    ).eval()


def test_residual_encoder_unet_in_the_nnunet_loop(nnunet_models):
    """A ResidualEncoderUNet (random weights) in nnU-Net's predictor: our logits equal nnU-Net's."""
    base = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    network = _resenc(1, 2)
    predictor = type(base)(
        tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.manual_initialization(
        network,
        base.plans_manager,
        base.configuration_manager,
        [{k: v.clone() for k, v in network.state_dict().items()}],
        base.dataset_json,
        "nnUNetTrainer",
        base.allowed_mirroring_axes,
    )
    assert set(suggested_layers(network)) == {"encoder.stages.3", "decoder.stages.2", "decoder.stages.1"}
    data = torch.randn(1, 20, 24, 18)
    reference = predictor.predict_logits_from_preprocessed_data(data).numpy()
    runner = NnUNetCAM(predictor, "encoder.stages.3", method="gradcam++", target="channel", progress=False)
    logits, raw = runner.predict_preprocessed(data)
    np.testing.assert_array_equal(logits, reference)
    assert raw.shape == (1, 20, 24, 18) and torch.isfinite(raw).all() and raw.max() > 0


def test_deep_supervision_and_inplace_relu_block_outputs():
    """Deep supervision: the full-resolution output (index 0) is used; block outputs of in-place
    LeakyReLU blocks are tapped safely."""
    torch.manual_seed(0)
    net = PlainConvUNet(
        1,
        3,
        [4, 8, 16],
        kernel_sizes=3,
        strides=[1, 2, 2],
        n_conv_per_stage=2,
        num_classes=3,
        n_conv_per_stage_decoder=2,
        deep_supervision=True,
        **KW,
    ).eval()
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(out, (list, tuple)) and out[0].shape[2:] == (16, 16, 16)
    cam = GradCAM(net, target_layers=["encoder.stages.2", "decoder.stages.1"])
    maps = SlidingWindowCAM(cam, (16, 16, 16), progress=False)(
        torch.randn(1, 16, 20, 16), [SlidingSegmentationTarget(1), SlidingSegmentationTarget(2)]
    )
    assert maps.shape == (2, 16, 20, 16) and torch.isfinite(maps).all()
    assert set(suggested_layers(net)) >= {"encoder.stages.2", "decoder.stages.1"}


def test_unknown_layer_lists_close_matches(nnunet_models):
    from medcam3d.errors import LayerNotFoundError

    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    with pytest.raises(LayerNotFoundError, match="encoder.stages.3"):
        NnUNetCAM(predictor, "encoder.stage.3")
