"""aug_smooth: each test-time transform inverts exactly, and for a model whose map follows the input
(flip- and rotation-equivariant) the smoothed map equals the plain one, for several methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medcam3d import EigenCAM, GradCAM, HiResCAM, ScoreCAM
from medcam3d.core.augment import Flip, Identity, Rot90, default_tta_transforms
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}


class Equivariant(nn.Module):
    """Box-filter convolutions (symmetric under flips and in-plane rotations), 2× average pooling,
    ReLU; class 1 = sum of squared features, class 0 = its negation."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.conv = CONV[ndim](1, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            for k in range(3):
                self.conv.weight[k].fill_(1.0 + k)
        self.features = nn.Sequential(self.conv, POOL[ndim](2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        score = f.pow(2).sum(dim=tuple(range(1, f.ndim)))
        return torch.stack([-score, score], dim=1)


class EquivariantSegmenter(nn.Module):
    """Class 1 = box-filtered input, class 0 = its negation; output at input resolution."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.conv = CONV[ndim](1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.relu(self.conv(x))
        return torch.cat([-f.sum(1, keepdim=True), f.sum(1, keepdim=True)], dim=1)


@pytest.mark.parametrize("spatial", [(6, 8, 8), (6, 10, 8), (8, 8), (10, 6)])
def test_every_default_transform_inverts(spatial: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *spatial)
    transforms = default_tta_transforms(spatial)
    assert isinstance(transforms[0], Identity)
    assert sum(isinstance(t, Flip) for t in transforms) == len(spatial)
    assert sum(isinstance(t, Rot90) for t in transforms) == (3 if spatial[-1] == spatial[-2] else 0)
    for t in transforms:
        moved = t.forward(x, lead=2)
        if not isinstance(t, Identity):
            assert not torch.equal(moved, x)
        assert torch.equal(t.inverse(moved[:, 1], lead=1), x[:, 1])  # maps (N, *S) come back
        assert torch.equal(t.inverse(moved, lead=2), x)
    # a quarter turn of a non-square plane changes the shape and still inverts
    r = Rot90(1)
    y = torch.randn(2, 1, 6, 10, 8)
    assert r.forward(y, lead=2).shape == (2, 1, 6, 8, 10)
    assert torch.equal(r.inverse(r.forward(y, lead=2)[:, 0], lead=1), y[:, 0])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("method", [GradCAM, HiResCAM, EigenCAM])
def test_aug_smooth_equals_plain_for_an_equivariant_model(ndim: int, method: type) -> None:
    torch.manual_seed(0)
    model = Equivariant(ndim).eval()
    shape = (6, 8, 8)[-ndim:]
    x = torch.rand(2, 1, *shape)
    x[:, :, 1:3] += 2.0  # an off-centre bright band, so flips matter
    cam = method(model, [model.features], return_tensor=True)
    targets = [ClassifierOutputTarget(1)] * 2
    plain = cam(x, targets)
    smooth = cam(x, targets, aug_smooth=True)
    torch.testing.assert_close(smooth, plain, rtol=1e-4, atol=1e-5)


def test_aug_smooth_with_explicit_transforms_and_non_square_plane() -> None:
    model = Equivariant(3).eval()
    x = torch.rand(2, 1, 6, 10, 8)
    x[:, :, :, 2:4] += 2.0
    transforms = [Identity(), Flip((0,)), Flip((1,)), Flip((2,)), Flip((0, 2)), Rot90(2)]
    cam = GradCAM(model, [model.features], tta_transforms=transforms, return_tensor=True)
    targets = [ClassifierOutputTarget(1)] * 2
    torch.testing.assert_close(cam(x, targets, aug_smooth=True), cam(x, targets), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", [HiResCAM, ScoreCAM])
def test_aug_smooth_keeps_segmentation_masks_aligned(method: type) -> None:
    model = EquivariantSegmenter(3).eval()
    x = torch.rand(2, 1, 6, 8, 8)
    mask = torch.zeros(6, 8, 8)
    mask[:2, :3, 5:] = 1  # a corner: a flipped output would put the gradient in the opposite corner
    kwargs = {"progress": False} if method is ScoreCAM else {}
    cam = method(model, [model.conv], return_tensor=True, **kwargs)
    targets = [SemanticSegmentationTarget(1, mask)] * 2
    plain = cam(x, targets)
    smooth = cam(x, targets, aug_smooth=True)
    torch.testing.assert_close(smooth, plain, rtol=1e-4, atol=1e-5)
