"""utils: image helpers, reshape transforms for 2D/3D transformers, layer discovery and names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import medcam3d
from helpers_models import TinyResNet, TinySegNet
from medcam3d.core.layers import resolve_layers
from medcam3d.errors import InputShapeError, LayerNotFoundError, LayerOutputError, ValueRangeError
from medcam3d.utils import find_layers, reshape_transforms
from medcam3d.utils.image import (
    apply_colormap,
    deprocess_image,
    preprocess_image,
    scale_cam_image,
    show_cam_on_image,
)
from medcam3d.utils.model_targets import ClassifierOutputTarget

# ---------------------------------------------------------------- image


def test_jet_colormap_endpoints_and_clipping():
    rgb = apply_colormap(np.array([0.0, 0.5, 1.0, 1.7, -3.0]))
    np.testing.assert_allclose(rgb[0], [0, 0, 0.5])  # dark blue
    np.testing.assert_allclose(rgb[1], [0.5, 1, 0.5])  # green-ish middle
    np.testing.assert_allclose(rgb[2], [0.5, 0, 0])  # dark red
    np.testing.assert_array_equal(rgb[3], rgb[2])  # clipped, never wrapped
    np.testing.assert_array_equal(rgb[4], rgb[0])


def test_show_cam_on_image_2d_bgr_and_rgb():
    img = np.zeros((6, 8, 3), np.float32)
    mask = np.zeros((6, 8), np.float32)
    mask[2, 3] = 1.0
    rgb = show_cam_on_image(img, mask, use_rgb=True, image_weight=0.0)
    bgr = show_cam_on_image(img, mask, use_rgb=False, image_weight=0.0)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., ::-1], bgr)
    assert rgb[2, 3, 0] == 255 and rgb[2, 3, 2] == 0  # the peak is red in RGB
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # background is blue


def test_show_cam_on_volume_returns_rgb_volume():
    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    cam = np.zeros((5, 6, 7), np.float32)
    cam[4, 1, 2] = 2.0  # > 1: clipped to the top colour, not wrapped
    out = show_cam_on_image(vol, cam, use_rgb=True)
    assert out.shape == (5, 6, 7, 3) and out.dtype == np.uint8
    hot = show_cam_on_image(vol, np.where(cam > 0, 1.0, 0.0).astype(np.float32), use_rgb=True)
    np.testing.assert_array_equal(out, hot)


def test_show_cam_on_image_bad_input():
    with pytest.raises(ValueRangeError, match=r"\[0, 1\]"):
        show_cam_on_image(np.full((4, 4, 3), 255.0), np.zeros((4, 4)))
    with pytest.raises(InputShapeError, match="does not match"):
        show_cam_on_image(np.zeros((4, 4, 3)), np.zeros((5, 4)))


def test_scale_cam_image_uses_reversed_target_size_like_pytorch_grad_cam():
    cams = np.random.default_rng(0).random((2, 4, 6)).astype(np.float32) * 5
    out = scale_cam_image(cams, target_size=(12, 8))  # (W, H) as cv2
    assert out.shape == (2, 8, 12) and out.min() >= 0 and out.max() <= 1  # scaled, then resized
    vol = np.random.default_rng(0).random((1, 2, 3, 4)).astype(np.float32)
    assert scale_cam_image(vol, target_size=(8, 6, 4)).shape == (1, 4, 6, 8)
    plain = scale_cam_image(cams)
    np.testing.assert_allclose(plain.reshape(2, -1).min(1), 0)
    np.testing.assert_allclose(plain.reshape(2, -1).max(1), 1, atol=1e-6)


def test_deprocess_and_preprocess():
    g = np.random.default_rng(1).normal(size=(3, 5, 6, 4))
    out = deprocess_image(g)
    assert out.dtype == np.uint8 and out.shape == g.shape
    assert abs(float(out.mean()) - 127.5) < 3
    img = np.ones((8, 6, 3), np.float32)
    t = preprocess_image(img, mean=[0.5] * 3, std=[0.5] * 3)
    assert t.shape == (1, 3, 8, 6) and torch.allclose(t, torch.ones_like(t))
    assert preprocess_image(np.zeros((4, 5, 6), np.float32), mean=[0.0], std=[1.0]).shape == (1, 1, 4, 5, 6)


# ---------------------------------------------------------------- reshape transforms


def test_tokens_to_grid_round_trip_and_errors():
    grid = torch.randn(2, 7, 3, 4, 5)
    tokens = grid.flatten(2).transpose(1, 2)  # (N, d*h*w, C)
    back = reshape_transforms.vit3d_reshape_transform(tokens, (3, 4, 5))
    torch.testing.assert_close(back, grid)
    with_cls = torch.cat([torch.zeros(2, 1, 7), tokens], 1)
    torch.testing.assert_close(reshape_transforms.tokens_to_grid(with_cls, (3, 4, 5), 1), grid)
    with pytest.raises(LayerOutputError, match="num_prefix_tokens=1"):
        reshape_transforms.tokens_to_grid(with_cls, (3, 4, 5))
    vit2d = torch.cat([torch.zeros(2, 1, 7), grid[:, :, 0].flatten(2).transpose(1, 2)], 1)
    torch.testing.assert_close(reshape_transforms.vit_reshape_transform(vit2d, 4, 5), grid[:, :, 0])


def test_gradcam_on_a_monai_vit_with_a_class_token():
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    vit = monai_nets.ViT(
        in_channels=1,
        img_size=(16, 32, 24),
        patch_size=8,
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=4,
        classification=True,
        num_classes=2,
    ).eval()
    transform = reshape_transforms.monai_vit_reshape_transform((16, 32, 24), 8, num_prefix_tokens=1)
    cam = medcam3d.GradCAM(vit, ["blocks.1"], reshape_transform=transform, output_index=0)
    maps = cam(torch.randn(2, 1, 16, 32, 24), [ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, 16, 32, 24) and np.isfinite(maps).all()
    with pytest.raises(LayerOutputError, match="reshape_transform"):
        medcam3d.GradCAM(vit, ["blocks.1"])(torch.randn(1, 1, 16, 32, 24), [ClassifierOutputTarget(1)])


def test_gradcam_on_swinunetr_stages_and_blocks():
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    try:
        net = monai_nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3)
    except TypeError:  # older MONAI needs img_size
        net = monai_nets.SwinUNETR(img_size=(64, 64, 64), in_channels=1, out_channels=2, feature_size=12)
    net.eval()
    x = torch.randn(1, 1, 64, 64, 64)  # the bottleneck's instance norm needs > 1 voxel
    from medcam3d.utils.model_targets import SemanticSegmentationTarget

    stage = medcam3d.GradCAM(net, ["swinViT.layers3.0"])(x, [SemanticSegmentationTarget(1)])
    block = medcam3d.GradCAM(
        net, ["swinViT.layers3.0.blocks.1"], reshape_transform=reshape_transforms.swinunetr_reshape_transform
    )(x, [SemanticSegmentationTarget(1)])
    assert stage.shape == block.shape == (1, 64, 64, 64)


# ---------------------------------------------------------------- layers


def test_layer_names_in_every_spelling():
    model = TinyResNet(ndim=3)
    by_module = resolve_layers(model, [model.layer4[-1]])
    assert by_module[0][0] == "layer4.1"
    for spelling in ("layer4.1", "layer4[-1]", "layer4.-1", "_orig_mod.layer4.1"):
        assert resolve_layers(model, spelling)[0][1] is model.layer4[1]
    compiled_like = nn.Module()
    compiled_like._orig_mod = model  # what torch.compile's OptimizedModule wraps
    assert resolve_layers(compiled_like, ["_orig_mod.layer4.1.conv"])[0][1] is model.layer4[1].conv
    with pytest.raises(LayerNotFoundError, match="empty"):
        resolve_layers(model, [])


def test_list_layers_and_default_suggestion():
    model = TinyResNet(ndim=3)
    model.train()
    infos = find_layers.list_layers(model, (1, 1, 16, 24, 20))
    assert model.training  # restored
    assert all(p.requires_grad for p in model.parameters())  # restored after the graph-recording pass
    by_name = {i.name: i for i in infos}
    assert by_name["layer4"].output_shape == (1, 32, 4, 6, 5)
    assert by_name["fc"].output_shape == (1, 3)
    assert by_name["fc"].is_model_output and not by_name["layer4"].is_model_output
    assert by_name["unused"].order == -1 and not by_name["unused"].on_gradient_path
    assert find_layers.suggest_target_layer(model, (1, 1, 16, 24, 20)) == "layer4"
    table = find_layers.format_layers(infos, mark=["layer4"])
    assert "* layer4 " in table and "(not run)" in table and "(the model output)" in table
    convs = find_layers.find_layer_types_recursive(model, [nn.Conv3d])
    assert model.stem[0] in convs
    with pytest.raises(InputShapeError):
        find_layers.list_layers(model, (16, 24, 20))


def _reference_paths(model, x, output_index):
    """Independent reference: autograd.grad of the selected output w.r.t. every module output."""
    outputs = {}
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
    selected = raw[output_index] if isinstance(raw, tuple) else raw
    names = [n for n, o in outputs.items() if isinstance(o, torch.Tensor) and o.requires_grad]
    grads = torch.autograd.grad(selected.sum(), [outputs[n] for n in names], allow_unused=True)
    return {n: g is not None for n, g in zip(names, grads)}, outputs, selected


@pytest.mark.parametrize("output_index", [0, 1])
def test_gradient_path_and_model_output_flags_for_deep_supervision(output_index):
    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen weights: the pass records the graph from the input
    x = torch.randn(1, 1, 16, 16, 16)
    infos = {i.name: i for i in find_layers.list_layers(model, x, output_index=output_index)}
    on_path, outputs, selected = _reference_paths(model, x, output_index)
    for name, reached in on_path.items():
        assert infos[name].on_gradient_path == reached, name
    head, other = ("head", "aux") if output_index == 0 else ("aux", "head")
    assert infos[head].is_model_output and not infos[other].is_model_output
    assert not infos[other].on_gradient_path
    assert infos["up"].on_gradient_path == (output_index == 0)  # the decoder feeds only the main head


def test_suggestions_for_the_readme_segmenters_avoid_heads_and_side_branches():
    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    suggestions = find_layers.suggest_target_layers(model, x)
    assert [(s.name, s.role) for s in suggestions] == [("down", "bottleneck"), ("dec", "last decoder stage")]
    assert find_layers.suggest_target_layer(model, x) == "down"  # was 'aux': no gradient path
    # the side head itself is a valid layer only when it is not the selected output
    assert find_layers.suggest_target_layer(model, x, output_index=1) == "down"
    for suggestion in suggestions:
        maps = medcam3d.GradCAM(model, [suggestion.name], output_index=0)(x, [ClassifierOutputTarget(1)])
        assert np.isfinite(maps).all() and maps.max() > 0


def test_no_gradient_path_error_names_output_index_and_list_layers():
    torch.manual_seed(0)
    model = TinySegNet(ndim=3).eval()
    cam = medcam3d.GradCAM(model, ["aux"], output_index=0)
    with pytest.raises(LayerOutputError, match=r"output_index=0.*list-layers|list-layers.*output_index"):
        cam(torch.randn(1, 1, 16, 16, 16), [ClassifierOutputTarget(1)])
    with pytest.raises(LayerNotFoundError, match="output_index"):
        find_layers.suggest_target_layer(nn.Sequential(nn.Conv3d(1, 2, 1)), (1, 1, 4, 4, 4))


def test_replace_layer_helpers():
    model = TinyResNet(ndim=2)
    new = nn.Identity()
    assert find_layers.replace_layer_recursive(model, model.layer4[0].relu, new)
    assert model.layer4[0].relu is new
    find_layers.replace_all_layer_type_recursive(model, nn.ReLU, nn.LeakyReLU())
    assert not find_layers.find_layer_types_recursive(model, [nn.ReLU])
