"""EigenCAM, EigenGradCAM, KPCA-CAM and the first-component projection against numpy / scikit-learn."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers_models import TinyResNet
from medcam3d import KPCA_CAM, EigenCAM, EigenGradCAM, GradCAM
from medcam3d.core.projection import first_component_projection
from medcam3d.methods.eigen import kernel_pca_projection
from medcam3d.utils.model_targets import ClassifierOutputTarget


def numpy_projection(acts: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's algorithm, written out: centre the (voxels × K) matrix, project on VT[0]."""
    out = []
    for sample in acts.astype(np.float64):
        matrix = sample.reshape(sample.shape[0], -1).T
        matrix = matrix - matrix.mean(axis=0)
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        out.append((matrix @ vt[0]).reshape(sample.shape[1:]))
    return np.stack(out)


def same_up_to_sign(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("shape", [(2, 6, 5, 7, 3), (2, 5, 9, 4), (3, 4, 11)])
def test_projection_matches_numpy_svd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    acts = torch.randn(shape) + torch.linspace(0, 3, shape[1]).reshape(1, -1, *([1] * (len(shape) - 2)))
    ours = first_component_projection(acts).numpy()
    ref = numpy_projection(acts.numpy())
    assert ours.shape == ref.shape
    for i in range(shape[0]):
        assert same_up_to_sign(ours[i], ref[i]) > 1 - 1e-5
        np.testing.assert_allclose(np.abs(ours[i]), np.abs(ref[i]), rtol=1e-3, atol=1e-4)
        # sign convention: positive correlation with the channel sum
        reference = acts[i].sum(0).numpy().ravel()
        assert np.dot(ours[i].ravel(), reference - reference.mean()) >= 0


def test_projection_sign_is_stable() -> None:
    torch.manual_seed(2)
    acts = torch.rand(2, 8, 6, 7, 5)
    first = first_component_projection(acts)
    for _ in range(3):
        assert torch.equal(first_component_projection(acts.clone()), first)
    # a permutation of channels does not change the component, nor its sign
    torch.testing.assert_close(
        first_component_projection(acts[:, torch.randperm(8)]), first, rtol=1e-4, atol=1e-4
    )


def test_projection_memory_is_voxels_times_channels() -> None:
    # 64³ voxels with 8 channels: a voxels² matrix would need 2.7e11 floats; this must be instant
    acts = torch.rand(1, 8, 64, 64, 64)
    start = time.perf_counter()
    out = first_component_projection(acts)
    assert out.shape == (1, 64, 64, 64)
    assert time.perf_counter() - start < 10


class Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 5, 3, stride=2, padding=1)
        )
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.features(x)).mean(dim=(2, 3, 4)))


def test_eigencam_and_eigengradcam_match_a_hand_computation() -> None:
    model = Split().eval()
    x = torch.randn(2, 1, 6, 10, 8)
    acts = model.features(x)
    raw = EigenCAM(model, [model.features], normalize=False, return_tensor=True)(x)
    expected = np.maximum(numpy_projection(acts.detach().numpy()), 0)
    expected_t = torch.nn.functional.interpolate(
        torch.from_numpy(expected)[:, None].float(), size=(6, 10, 8), mode="trilinear"
    )[:, 0]
    # numpy's sign is arbitrary: compare with the sign our convention picks
    ours = raw.numpy()
    flipped = torch.nn.functional.interpolate(
        torch.from_numpy(np.maximum(-numpy_projection(acts.detach().numpy()), 0))[:, None].float(),
        size=(6, 10, 8),
        mode="trilinear",
    )[:, 0]
    for i in range(2):
        ok = np.allclose(ours[i], expected_t[i].numpy(), atol=1e-4) or np.allclose(
            ours[i], flipped[i].numpy(), atol=1e-4
        )
        assert ok
    # EigenGradCAM: projection of grads * acts
    acts_leaf = acts.detach().requires_grad_(True)
    out = model.fc(torch.tanh(acts_leaf).mean(dim=(2, 3, 4)))
    (grads,) = torch.autograd.grad(out[:, 2].sum(), acts_leaf)
    targets = [ClassifierOutputTarget(2)] * 2
    ours_g = EigenGradCAM(model, [model.features], normalize=False, return_tensor=True)(x, targets)
    proj = first_component_projection((grads * acts).detach()).clamp_min(0)
    ref_g = torch.nn.functional.interpolate(proj[:, None], size=(6, 10, 8), mode="trilinear")[:, 0]
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-4, atol=1e-5)
    ref_np = numpy_projection((grads * acts).detach().numpy())
    for i in range(2):
        assert (
            same_up_to_sign(proj[i].numpy(), np.maximum(ref_np[i], 0)) > 0.999
            or same_up_to_sign(proj[i].numpy(), np.maximum(-ref_np[i], 0)) > 0.999
        )


def test_eigen_smooth_uses_the_same_projection() -> None:
    model = TinyResNet(ndim=3).eval()
    x = torch.randn(2, 1, 8, 12, 10)
    a = GradCAM(model, [model.layer3], return_tensor=True)(x, eigen_smooth=True)
    assert a.shape == (2, 8, 12, 10) and torch.isfinite(a).all()


@pytest.mark.parametrize("kernel", ["rbf", "sigmoid", "cosine"])
def test_kpca_exact_case_matches_sklearn(kernel: str) -> None:
    sklearn = pytest.importorskip("sklearn.decomposition")
    torch.manual_seed(4)
    acts = torch.rand(2, 5, 4, 6, 5)  # 120 voxels ≤ landmarks: exact kernel PCA
    ours = kernel_pca_projection(acts, kernel=kernel, gamma=0.5, landmarks=1024).numpy()
    for i in range(2):
        matrix = acts[i].reshape(5, -1).T.double().numpy()
        matrix = matrix - matrix.mean(axis=0)
        ref = sklearn.KernelPCA(n_components=1, kernel=kernel, gamma=0.5).fit_transform(matrix)[:, 0]
        assert same_up_to_sign(ours[i], ref) > 0.999


def test_kpca_nystrom_approximates_the_exact_component() -> None:
    torch.manual_seed(5)
    base = torch.linspace(0, 1, 6 * 10 * 8).reshape(1, 1, 6, 10, 8)
    acts = torch.cat([base * w for w in (1.0, -0.5, 2.0, 0.3)], dim=1) + 0.05 * torch.rand(1, 4, 6, 10, 8)
    exact = kernel_pca_projection(acts, kernel="rbf", landmarks=4096).numpy()
    approx = kernel_pca_projection(acts, kernel="rbf", landmarks=64).numpy()
    assert same_up_to_sign(exact, approx) > 0.98


def test_kpca_cam_runs_nd() -> None:
    model = TinyResNet(ndim=2).eval()
    maps = KPCA_CAM(model, [model.layer3], kernel="rbf", landmarks=16)(torch.randn(2, 1, 20, 14))
    assert maps.shape == (2, 20, 14) and np.isfinite(maps).all()
