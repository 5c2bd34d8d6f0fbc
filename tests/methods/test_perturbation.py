"""ScoreCAM and AblationCAM against hand loops over channels; chunking; the model restored on failure."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medcam3d import AblationCAM, ScoreCAM
from medcam3d.core.context import CallContext
from medcam3d.methods.perturbation import PerturbationCAM
from medcam3d.utils.model_targets import ClassifierOutputTarget

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class Split(nn.Module):
    """features → head, so a hand loop can run the head on modified activations."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.features = nn.Sequential(
            CONV[ndim](1, 5, 3, padding=1), nn.ReLU(), CONV[ndim](5, 6, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(6, 3)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f.mean(dim=tuple(range(2, f.ndim))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shape(ndim: int) -> tuple[int, ...]:
    return (6, 10, 8)[-ndim:]


def hand_scorecam_weights(model: Split, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    with torch.no_grad():
        acts = model.features(x)
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        weights = torch.zeros(acts.shape[:2])
        for i in range(x.shape[0]):
            scores = []
            for k in range(acts.shape[1]):
                mask = torch.nn.functional.interpolate(
                    acts[i : i + 1, k : k + 1], size=x.shape[2:], mode=mode, align_corners=False
                )
                mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
                scores.append(model(x[i : i + 1] * mask)[0, classes[i]])
            weights[i] = torch.softmax(torch.stack(scores), dim=0)
    return weights


def hand_ablation_weights(model: Split, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    with torch.no_grad():
        acts = model.features(x)
        weights = torch.zeros(acts.shape[:2])
        for i in range(x.shape[0]):
            original = model.head(acts[i : i + 1])[0, classes[i]]
            for k in range(acts.shape[1]):
                ablated = acts[i : i + 1].clone()
                ablated[:, k] = 0
                weights[i, k] = (original - model.head(ablated)[0, classes[i]]) / original
    return weights


def layer_weights(
    cam: PerturbationCAM, x: torch.Tensor, targets: list[ClassifierOutputTarget]
) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    original = cam.weights

    def spy(acts: torch.Tensor, grads: torch.Tensor | None, context: CallContext) -> torch.Tensor:
        w = original(acts, grads, context)
        captured.append(w)
        return w

    cam.weights = spy  # type: ignore[method-assign]
    cam(x, targets)
    return captured[0]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("batch_size", [None, 1, 4])
def test_scorecam_matches_hand_loop(ndim: int, batch_size: int | None) -> None:
    model = Split(ndim).eval()
    x = torch.randn(2, 1, *shape(ndim))
    classes = [0, 2]
    cam = ScoreCAM(model, [model.features], batch_size=batch_size, progress=False)
    ours = layer_weights(cam, x, [ClassifierOutputTarget(c) for c in classes])
    torch.testing.assert_close(ours, hand_scorecam_weights(model, x, classes), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_ablationcam_matches_hand_loop(ndim: int, budget: int) -> None:
    model = Split(ndim).eval()
    x = torch.randn(2, 1, *shape(ndim))
    classes = [1, 2]
    cam = AblationCAM(model, [model.features], batch_memory_bytes=budget, progress=False)
    ours = layer_weights(cam, x, [ClassifierOutputTarget(c) for c in classes])
    torch.testing.assert_close(ours, hand_ablation_weights(model, x, classes), rtol=1e-4, atol=1e-5)
    assert not model.features._forward_hooks


def test_chunk_size_follows_the_memory_budget() -> None:
    model = Split(3).eval()
    x = torch.randn(1, 1, 6, 10, 8)
    small = ScoreCAM(model, [model.features], batch_memory_bytes=1, progress=False)
    large = ScoreCAM(model, [model.features], batch_memory_bytes=1 << 30, progress=False)
    fixed = ScoreCAM(model, [model.features], batch_size=5, progress=False)
    assert small.chunk_size(x) == 1
    per_sample = large._sample_forward_bytes(x)
    assert per_sample >= 2 * 5 * 480 * 4  # at least the first layer's output, twice
    assert large.chunk_size(x) == (1 << 30) // per_sample
    assert fixed.chunk_size(x) == 5


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_top_k_channels(method: type[PerturbationCAM]) -> None:
    model = Split(2).eval()
    x = torch.randn(2, 1, 10, 8)
    cam = method(model, [model.features], top_k_channels=2, progress=False)
    weights = layer_weights(cam, x, [ClassifierOutputTarget(0)] * 2)
    acts = model.features(x).detach().mean(dim=(2, 3))
    for i in range(2):
        chosen = set(acts[i].topk(2).indices.tolist())
        for k in range(6):
            if k not in chosen:
                assert weights[i, k] == 0


class FailsOnCall(nn.Module):
    """Raises on its ``fail_at``-th call (a stand-in for running out of memory mid-way)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory (simulated)")
        return x


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_model_restored_after_a_failing_chunk(method: type[PerturbationCAM]) -> None:
    model = Split(3)
    model.features.append(FailsOnCall(fail_at=3))  # call 1: CAM forward, 2: probe/first chunk, 3: fails
    model.train()
    model.fc.weight.requires_grad_(False)
    flags = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    cam = method(model, [model.features[2]], batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        cam(torch.randn(2, 1, 6, 10, 8), [ClassifierOutputTarget(0)] * 2)
    assert model.features[-1].calls == 3
    assert all(m.training == flag for m, flag in flags)
    assert all(p.requires_grad == flag for p, flag in requires)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # and it works again afterwards
    model.features[-1].fail_at = -1
    maps = cam(torch.randn(2, 1, 6, 10, 8), [ClassifierOutputTarget(0)] * 2)
    assert maps.shape == (2, 6, 10, 8)


def test_scorecam_with_dead_channels_matches_hand_loop() -> None:
    model = Split(3).eval()
    with torch.no_grad():
        model.features[2].bias[:3] = -100.0  # channels 0-2 are dead after the ReLU: constant masks
    x = torch.randn(2, 1, *shape(3))
    cam = ScoreCAM(model, [model.features], batch_size=2, progress=False)
    ours = layer_weights(cam, x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    torch.testing.assert_close(ours, hand_scorecam_weights(model, x, [0, 1]), rtol=1e-4, atol=1e-6)


class Tokens(nn.Module):
    """A transformer-shaped 3D model: patch embedding → tokens (N, T, C) → a token MLP (target) → head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.embed = nn.Conv3d(1, 6, 2, stride=2)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.GELU())
        self.fc = nn.Linear(6, 3)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x).flatten(2).transpose(1, 2)))


def test_ablationcam_ablates_token_channels_with_a_reshape_transform() -> None:
    from medcam3d.utils.reshape_transforms import tokens_to_grid

    model = Tokens().eval()
    x = torch.randn(2, 1, 4, 6, 8)
    cam = AblationCAM(
        model, [model.block], reshape_transform=lambda t: tokens_to_grid(t, (2, 3, 4)), progress=False
    )
    ours = layer_weights(cam, x, [ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    with torch.no_grad():
        tokens = model.block(model.embed(x).flatten(2).transpose(1, 2))
        expected = torch.zeros(2, 6)
        for i, c in enumerate([0, 2]):
            original = model.head(tokens[i : i + 1])[0, c]
            for k in range(6):
                ablated = tokens[i : i + 1].clone()
                ablated[..., k] = 0
                expected[i, k] = (original - model.head(ablated)[0, c]) / original
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_over_chunks_can_be_silenced(progress: bool, capsys: pytest.CaptureFixture[str]) -> None:
    model = Split(2).eval()
    cam = AblationCAM(model, [model.features], batch_size=2, progress=progress)
    cam(torch.randn(1, 1, 10, 8), [ClassifierOutputTarget(0)])
    err = capsys.readouterr().err
    assert ("AblationCAM" in err) == progress
