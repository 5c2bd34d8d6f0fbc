"""Fixtures of the explain tests: real tiny networks, real checkpoints and real scan files with
non-trivial geometry (anisotropic, oblique, flipped, stored non-RAS, MNI sform code)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import TinyResNet, TinySegNet  # noqa: E402


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    a, b = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def blob_volume(shape_xyz: tuple[int, int, int], seed: int) -> np.ndarray:
    """A bright ellipsoid on noise, nibabel order (x, y, z)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_xyz], indexing="ij")
    centre = rng.uniform(-0.3, 0.3, 3)
    blob = sum(((g - c) / 0.45) ** 2 for g, c in zip(grid, centre)) < 1
    return (rng.normal(0, 10, shape_xyz) + 200 * blob).astype(np.float32)


def write_nifti(
    path: Path, data_xyz: np.ndarray, affine: np.ndarray, sform_code: int = 1, qform_code: int = 1
) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(data_xyz, affine)
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    nib.save(image, str(path))
    return path


def oblique_affine(spacing: tuple[float, float, float], flip_x: bool = True) -> np.ndarray:
    """An anisotropic, rotated affine whose x axis is stored flipped (not RAS)."""
    linear = rotation(12.0, -20.0) @ np.diag(spacing)
    if flip_x:
        linear[:, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [31.5, -12.25, 7.0]
    return affine


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Three NIfTI scans: oblique + anisotropic + flipped (MNI sform code 4), LPS-stored, plain."""
    folder = tmp_path / "scans"
    folder.mkdir()
    write_nifti(
        folder / "oblique.nii.gz", blob_volume((18, 22, 14), 0), oblique_affine((1.2, 0.9, 2.1)), 4, 1
    )
    lps = np.diag([1.0, 1.0, 1.5, 1.0])  # index x grows to the Left, y to Posterior: stored LPS
    lps[0, 0], lps[1, 1] = -1.0, -1.0
    lps[:3, 3] = [10.0, 20.0, -30.0]
    write_nifti(folder / "lps.nii.gz", blob_volume((20, 16, 16), 1), lps, 2, 2)
    write_nifti(folder / "plain.nii", blob_volume((16, 16, 16), 2), np.eye(4))
    return folder


@pytest.fixture
def classifier_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "classifier.pt"
    torch.save(TinyResNet(ndim=3, num_classes=3).state_dict(), path)
    return path


@pytest.fixture
def segmenter_checkpoint(tmp_path: Path) -> Path:
    """A Lightning-style checkpoint: {"state_dict": {"model.<key>": ...}, "epoch": ...}."""
    torch.manual_seed(1)
    path = tmp_path / "segmenter.ckpt"
    state = {f"model.{k}": v for k, v in TinySegNet(ndim=3, num_classes=3).state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.4.0"}, path)
    return path


def load_classifier(checkpoint: Path) -> TinyResNet:
    model = TinyResNet(ndim=3, num_classes=3)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def load_segmenter(checkpoint: Path) -> TinySegNet:
    model = TinySegNet(ndim=3, num_classes=3)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items()})
    return model.eval()
