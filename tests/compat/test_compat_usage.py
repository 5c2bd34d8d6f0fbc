"""pytorch-grad-cam's README blocks, cam.py, its tests and usage examples, with ``pytorch_grad_cam``
renamed to ``medcam3d`` and torchvision models replaced by small torch models of the same shape
(2D and 3D). Only the import lines differ from the originals (and cv2 calls by numpy ones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers_models import TinyResNet


def _rgb(height: int = 32, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def test_readme_basic_usage_and_guided_backprop() -> None:
    from medcam3d import GradCAM, GuidedBackpropReLUModel
    from medcam3d.utils.image import deprocess_image, preprocess_image, show_cam_on_image
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model = TinyResNet(ndim=2, in_channels=3, num_classes=300)
    target_layers = [model.layer4[-1]]
    rgb_img = _rgb()
    input_tensor = preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    targets = [ClassifierOutputTarget(281)]
    with GradCAM(model=model, target_layers=target_layers) as cam:
        grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
        grayscale_cam = grayscale_cam[0, :]
        visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
        model_outputs = cam.outputs
    assert visualization.shape == (32, 40, 3) and model_outputs.shape == (1, 300)

    gb_model = GuidedBackpropReLUModel(model=model, device="cpu")
    gb = gb_model(input_tensor, target_category=None)
    cam_mask = np.stack([grayscale_cam, grayscale_cam, grayscale_cam], axis=-1)  # cv2.merge
    cam_gb = deprocess_image(cam_mask * gb)
    result = deprocess_image(gb)
    assert gb.shape == (32, 40, 3) and cam_gb.shape == (32, 40, 3) and result.dtype == np.uint8
    np.testing.assert_allclose(cam_mask * gb, grayscale_cam[..., None] * gb)


def test_readme_guided_backprop_on_a_volume() -> None:
    from medcam3d import GradCAM, GuidedBackpropReLUModel
    from medcam3d.utils.image import deprocess_image

    model = TinyResNet(ndim=3, in_channels=2, num_classes=3)
    volume = torch.randn(1, 2, 12, 16, 20)
    grayscale_cam = GradCAM(model, [model.layer4[-1]])(volume)[0]
    gb = GuidedBackpropReLUModel(model, device="cpu")(volume, target_category=None)
    assert gb.shape == (12, 16, 20, 2)  # (D, H, W, C)
    assert deprocess_image(grayscale_cam[..., None] * gb).shape == (12, 16, 20, 2)


METHOD_NAMES = [
    "gradcam", "hirescam", "scorecam", "gradcam++", "ablationcam", "xgradcam", "eigencam", "eigengradcam",
    "layercam", "fullgrad", "fem", "gradcamelementwise", "kpcacam", "shapleycam", "finercam",
]  # fmt: skip


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cam_py(method: str, ndim: int) -> None:
    from medcam3d import (
        FEM,
        KPCA_CAM,
        AblationCAM,
        EigenCAM,
        EigenGradCAM,
        FinerCAM,
        FullGrad,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        GuidedBackpropReLUModel,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        ShapleyCAM,
        XGradCAM,
    )
    from medcam3d.utils.image import deprocess_image, preprocess_image, show_cam_on_image

    methods = {
        "gradcam": GradCAM, "hirescam": HiResCAM, "scorecam": ScoreCAM, "gradcam++": GradCAMPlusPlus,
        "ablationcam": AblationCAM, "xgradcam": XGradCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM,
        "layercam": LayerCAM, "fullgrad": FullGrad, "fem": FEM, "gradcamelementwise": GradCAMElementWise,
        "kpcacam": KPCA_CAM, "shapleycam": ShapleyCAM, "finercam": FinerCAM,
    }  # fmt: skip
    torch.manual_seed(0)
    model = TinyResNet(ndim=ndim, in_channels=3, num_classes=5).eval()
    target_layers = [model.layer4]
    rgb_img = (
        _rgb(16, 20) if ndim == 2 else np.random.default_rng(0).random((8, 16, 20, 3)).astype(np.float32)
    )
    input_tensor = preprocess_image(rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    targets = None
    cam_algorithm = methods[method]
    with cam_algorithm(model=model, target_layers=target_layers) as cam:
        cam.batch_size = 32
        grayscale_cam = cam(input_tensor=input_tensor, targets=targets, aug_smooth=False, eigen_smooth=False)
        grayscale_cam = grayscale_cam[0, :]
        cam_image = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
    gb_model = GuidedBackpropReLUModel(model=model, device="cpu")
    gb = gb_model(input_tensor, target_category=None)
    cam_mask = np.stack([grayscale_cam] * 3, axis=-1)
    cam_gb = deprocess_image(cam_mask * gb)
    gb = deprocess_image(gb)
    assert cam_image.shape == (*input_tensor.shape[2:], 3) and cam_gb.shape == gb.shape == cam_image.shape


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("target_category", [None, 100])
@pytest.mark.parametrize("eigen_smooth", [True, False])
@pytest.mark.parametrize(
    "cam_name",
    ["ScoreCAM", "AblationCAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "EigenGradCAM", "LayerCAM", "FullGrad", "KPCA_CAM"],
)  # fmt: skip
def test_run_all_models(cam_name: str, eigen_smooth: bool, target_category: int | None, ndim: int) -> None:
    import medcam3d
    from medcam3d.utils.image import preprocess_image
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    cam_method = getattr(medcam3d, cam_name)
    for batch_size, shape in ((2, (16, 16)), (1, (16, 20))):
        spatial = shape if ndim == 2 else (8, *shape)
        img = (np.random.default_rng(0).random((*spatial, 3)) * 255).astype(
            np.uint8
        )  # cv2.imread gives uint8
        input_tensor = preprocess_image(img)
        input_tensor = input_tensor.repeat(batch_size, *([1] * (input_tensor.ndim - 1)))
        torch.manual_seed(0)
        model = TinyResNet(ndim=ndim, in_channels=3, num_classes=101)
        target_layers = []
        for layer in ["layer4[-1]", "layer4[-2]"]:
            target_layers.append(eval(f"model.{layer}"))
        cam = cam_method(model=model, target_layers=target_layers)
        cam.batch_size = 4
        if hasattr(cam, "progress"):
            cam.progress = False
        targets = (
            None
            if target_category is None
            else [ClassifierOutputTarget(target_category) for _ in range(batch_size)]
        )
        grayscale_cam = cam(
            input_tensor=input_tensor, targets=targets, aug_smooth=False, eigen_smooth=eigen_smooth
        )
        assert grayscale_cam.shape[0] == input_tensor.shape[0]
        assert grayscale_cam.shape[1:] == input_tensor.shape[2:]


def test_one_channel_and_context_release() -> None:
    from medcam3d import GradCAM

    model = TinyResNet(ndim=2, in_channels=1, num_classes=10)
    gray_img = (np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8)
    input_tensor = torch.from_numpy(np.float32(gray_img)).unsqueeze(0).unsqueeze(0)
    input_tensor = input_tensor.repeat(16, 1, 1, 1)
    for _ in range(3):
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            grayscale_cam = cam(input_tensor=input_tensor, targets=None)
        assert grayscale_cam.shape == (16, 24, 24)
    assert all(not m._forward_hooks for m in model.modules())


class TinyViT(nn.Module):
    """A DeiT-shaped transformer: patch embedding, a class token, blocks with ``norm1``, a head."""

    def __init__(self, ndim: int = 2, dim: int = 16, patch: int = 4, classes: int = 5) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.patch_embed = conv(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "gradcam++", "ablationcam", "xgradcam", "eigencam", "eigengradcam", "layercam"])  # fmt: skip
def test_vit_example(method: str, ndim: int) -> None:
    from medcam3d import (
        AblationCAM,
        EigenCAM,
        EigenGradCAM,
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ScoreCAM,
        XGradCAM,
    )
    from medcam3d.ablation_layer import AblationLayerVit
    from medcam3d.utils.image import preprocess_image, show_cam_on_image

    grid = (4, 4) if ndim == 2 else (2, 4, 4)

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, 1:, :].reshape(tensor.size(0), *grid, tensor.size(2))
        # Bring the channels to the first dimension, like in CNNs.
        return result.movedim(-1, 1)

    methods = {
        "gradcam": GradCAM, "scorecam": ScoreCAM, "gradcam++": GradCAMPlusPlus, "ablationcam": AblationCAM,
        "xgradcam": XGradCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM, "layercam": LayerCAM,
    }  # fmt: skip
    torch.manual_seed(0)
    model = TinyViT(ndim).eval()
    target_layers = [model.blocks[-1].norm1]
    if method == "ablationcam":
        cam = methods[method](
            model=model,
            target_layers=target_layers,
            reshape_transform=reshape_transform,
            ablation_layer=AblationLayerVit(),
        )
    else:
        cam = methods[method](model=model, target_layers=target_layers, reshape_transform=reshape_transform)
    rgb_img = np.random.default_rng(0).random((*(4 * g for g in grid), 3)).astype(np.float32)
    input_tensor = preprocess_image(rgb_img, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    targets = None
    cam.batch_size = 32
    if hasattr(cam, "progress"):
        cam.progress = False
    grayscale_cam = cam(input_tensor=input_tensor, targets=targets, eigen_smooth=False, aug_smooth=False)
    grayscale_cam = grayscale_cam[0, :]
    cam_image = show_cam_on_image(rgb_img, grayscale_cam)
    assert cam_image.shape == (*rgb_img.shape[:-1], 3) and np.isfinite(grayscale_cam).all()


def test_readme_metrics_block() -> None:
    from medcam3d import GradCAM
    from medcam3d.metrics.cam_mult_image import CamMultImageConfidenceChange
    from medcam3d.metrics.road import ROADCombined, ROADMostRelevantFirst
    from medcam3d.utils.image import deprocess_image
    from medcam3d.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    torch.manual_seed(0)
    model = TinyResNet(ndim=2, in_channels=3, num_classes=300).eval()
    input_tensor = torch.randn(2, 3, 16, 20)
    targets = [ClassifierOutputTarget(281)] * 2
    grayscale_cams = GradCAM(model, [model.layer4[-1]])(input_tensor, targets)
    inverse_cams = 1 - grayscale_cams
    metric_target = ClassifierOutputSoftmaxTarget(281)
    scores, batch_visualizations = CamMultImageConfidenceChange()(
        input_tensor, inverse_cams, [metric_target] * 2, model, return_visualization=True
    )
    visualization = deprocess_image(batch_visualizations[0, :])
    cam_metric = ROADMostRelevantFirst(percentile=75)
    scores, perturbation_visualizations = cam_metric(
        input_tensor, grayscale_cams, targets, model, return_visualization=True
    )
    cam_metric = ROADCombined(percentiles=[20, 40, 60, 80])
    scores = cam_metric(input_tensor, grayscale_cams, targets, model)
    assert np.asarray(scores).shape == (2,) and visualization.dtype == np.uint8
