"""ShapleyCAM (gradient + Hessian-vector product), FEM and FinerCAM against independent computations."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn

from medcam3d import FEM, FinerCAM, GradCAM, HiResCAM, ScoreCAM, ShapleyCAM
from medcam3d.utils.model_targets import ClassifierOutputReST, FinerWeightedTarget

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class Split(nn.Module):
    """features → a smooth head (tanh), so the Hessian term is not zero."""

    def __init__(self, ndim: int, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.features = nn.Sequential(
            CONV[ndim](1, 4, 3, padding=1), nn.ReLU(), CONV[ndim](4, 5, 3, stride=2, padding=1)
        )
        self.fc = nn.Linear(5, classes)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(f).mean(dim=tuple(range(2, f.ndim))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    return torch.nn.functional.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


@pytest.mark.parametrize("ndim", [2, 3])
def test_shapleycam_matches_gradient_and_hvp(ndim: int) -> None:
    model = Split(ndim).eval()
    x = torch.randn(2, 1, *(6, 10, 8)[-ndim:])
    classes = [1, 3]
    acts = model.features(x).detach()
    axes = tuple(range(2, acts.ndim))
    weights = []
    for i, c in enumerate(classes):

        def score(a: torch.Tensor, i: int = i, c: int = c) -> torch.Tensor:
            return ClassifierOutputReST(c)(model.head(a)[0])

        a = acts[i : i + 1]
        _, grad = torch.autograd.functional.vjp(score, a)
        _, hvp = torch.autograd.functional.hvp(score, a, a)
        weights.append((grad - 0.5 * hvp).mean(dim=axes))
    w = torch.cat(weights)
    expected = upsample((w.reshape(*w.shape, *([1] * ndim)) * acts).sum(1).clamp_min(0), tuple(x.shape[2:]))
    ours = ShapleyCAM(model, [model.features], normalize=False, return_tensor=True)(
        x, [ClassifierOutputReST(c) for c in classes]
    )
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    grad_only = GradCAM(model, [model.features], normalize=False, return_tensor=True)(
        x, [ClassifierOutputReST(c) for c in classes]
    )
    assert not torch.allclose(ours, grad_only)  # the Hessian term matters here


class Box:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def test_shapleycam_leaves_no_graph_alive() -> None:
    model = Split(3).eval()
    x = torch.randn(2, 1, 6, 10, 8)
    boxes: weakref.WeakSet[Box] = weakref.WeakSet()

    def pack(tensor: torch.Tensor) -> Box:
        box = Box(tensor)
        boxes.add(box)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        maps = ShapleyCAM(model, [model.features])(x, [ClassifierOutputReST(0)] * 2)
    assert maps.shape == (2, 6, 10, 8)
    gc.collect()
    assert len(boxes) == 0, f"{len(boxes)} saved tensors of an autograd graph are still alive"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("ndim", [2, 3])
def test_fem_matches_numpy(ndim: int) -> None:
    model = Split(ndim).eval()
    x = torch.randn(2, 1, *(6, 10, 8)[-ndim:])
    acts = model.features(x).detach().numpy().astype(np.float64)
    axes = tuple(range(2, acts.ndim))
    threshold = acts.mean(axis=axes, keepdims=True) + 2 * acts.std(axis=axes, keepdims=True)
    weights = (acts > threshold).mean(axis=axes, keepdims=True)
    expected = np.maximum((weights * acts).sum(axis=1), 0)
    expected_t = upsample(torch.from_numpy(expected).float(), tuple(x.shape[2:]))
    ours = FEM(model, [model.features], normalize=False, return_tensor=True)(x)
    torch.testing.assert_close(ours, expected_t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("base", [GradCAM, HiResCAM, ScoreCAM])
def test_finercam_delegates_to_its_base_with_finer_targets(base: type) -> None:
    model = Split(3).eval()
    x = torch.randn(2, 1, 6, 10, 8)
    kwargs = {"progress": False} if base is ScoreCAM else {}
    finer = FinerCAM(model, [model.features], base_method=base, **kwargs)
    assert type(finer.base_cam) is base  # one instance of the base method, not a copy of its code
    ours = finer(x, alpha=0.7)
    logits = model(x).detach().numpy()
    targets = []
    for row in logits:
        order = np.argsort(np.abs(row - row.max()), kind="stable")
        targets.append(FinerWeightedTarget(int(order[0]), [int(order[r]) for r in (1, 2, 3)], 0.7))
    expected = base(model, [model.features], **kwargs)(x, targets)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    explicit = finer(x, targets)
    np.testing.assert_allclose(explicit, expected, rtol=1e-4, atol=1e-5)


def test_shapleycam_two_layers_leave_no_graph_alive() -> None:
    model = Split(3).eval()
    x = torch.randn(2, 1, 6, 10, 8)
    for layers in ([model.features[0], model.features[2]], [model.features[2], model.features[0]]):
        boxes: weakref.WeakSet[Box] = weakref.WeakSet()

        def pack(tensor: torch.Tensor, boxes: weakref.WeakSet[Box] = boxes) -> Box:
            box = Box(tensor)
            boxes.add(box)
            return box

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
            ShapleyCAM(model, layers)(x, [ClassifierOutputReST(0)] * 2)
        gc.collect()
        assert len(boxes) == 0
