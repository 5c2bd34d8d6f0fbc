"""The demo's data: the MNI152 T1 template shipped with the package, and synthetic lesions.

Every array here is in SimpleITK order ``(z, y, x)`` = ``(D, H, W)``, the order the network reads.
Coordinates printed for people are MNI millimetres in ``(x, y, z)`` order, RAS+ (as NIfTI, nibabel,
FSL and SPM report them); :func:`voxel_to_mni` converts.

The same functions make the training data (``scripts/train_demo_model.py``) and the demo volume, so
the network sees at demo time exactly what it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcam3d.errors import GeometryError
from medcam3d.io.geometry import Geometry

__all__ = [
    "ASSET_DIR",
    "TEMPLATE_FILE",
    "MASK_FILE",
    "Template",
    "Lesion",
    "load_template",
    "normalise_intensity",
    "candidate_centres",
    "random_lesion",
    "lesion_weight",
    "plant_lesion",
    "augment",
    "voxel_to_mni",
]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
#: MNI152 (FSL 6th generation, asymmetric) T1 template at 2 mm, 91 x 109 x 91 voxels (x, y, z).
TEMPLATE_FILE = ASSET_DIR / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
#: Its brain mask, same grid.
MASK_FILE = ASSET_DIR / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"

#: Lesion radii are drawn per axis from this range (millimetres).
RADIUS_RANGE_MM = (5.0, 10.0)
#: Lesion contrast magnitude (added to the normalised intensity, sign random) is drawn from this range.
CONTRAST_RANGE = (0.4, 0.8)
#: Lesion centres stay this far (voxels) inside the brain mask.
EROSION_VOXELS = 4
#: Lesion centres lie in tissue: normalised intensity above this (grey or white matter, not CSF).
TISSUE_THRESHOLD = 0.45


@dataclass(frozen=True)
class Template:
    """The demo template.

    Attributes:
        image: the brain-extracted T1 (template x brain mask, as FSL's ``MNI152_T1_2mm_brain``),
            normalised (see :func:`normalise_intensity`), float32 ``(D, H, W)`` = ``(z, y, x)``;
            brain tissue is roughly 0.4-1.0, outside the brain 0. This is what the network reads.
        mask: brain mask, bool ``(D, H, W)``.
        spacing: voxel size in mm, ``(z, y, x)``.
        affine: 4x4 voxel ``(i, j, k)`` = ``(x, y, z)`` index -> RAS+ mm matrix (NIfTI convention).
        geometry: the template's grid (:class:`medcam3d.io.Geometry`), the reference for written maps.
        path: the template file (the reference geometry for the written maps).
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    geometry: Geometry
    path: Path


@dataclass(frozen=True)
class Lesion:
    """A synthetic lesion: a soft-edged ellipsoid added to the image.

    Attributes:
        centre: centre in voxels, ``(z, y, x)`` (may be fractional).
        radii_mm: semi-axes in mm along ``(z, y, x)``.
        contrast: value added to the normalised intensity at the centre (negative: a dark lesion).
    """

    centre: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    contrast: float


def _read_zyx(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a shipped NIfTI file as a ``(z, y, x)`` array and its :class:`~medcam3d.io.Geometry`."""
    from medcam3d.errors import InputFileError
    from medcam3d.io import read_image

    if not path.is_file():
        raise InputFileError(f"Demo asset {path} is missing. Reinstall medcam3d (the file ships with it).")
    return read_image(path)


def normalise_intensity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Divide by the 99th percentile inside the brain mask; float32, same shape as ``image``."""
    scale = float(np.percentile(image[mask], 99.0))
    return (image.astype(np.float32) / max(scale, 1e-6)).astype(np.float32)


def load_template() -> Template:
    """Load the shipped MNI152 T1 2 mm template and its brain mask (needs ``medcam3d[io]``)."""
    raw, geometry = _read_zyx(TEMPLATE_FILE)
    mask_raw, mask_geometry = _read_zyx(MASK_FILE)
    if not geometry.allclose(mask_geometry):
        raise GeometryError(
            f"{MASK_FILE.name} is not on the grid of {TEMPLATE_FILE.name}; the assets are damaged."
        )
    mask = mask_raw > 0
    return Template(
        image=normalise_intensity(raw, mask) * mask.astype(np.float32),
        mask=mask,
        spacing=geometry.spacing_zyx,
        affine=geometry.affine,
        geometry=geometry,
        path=TEMPLATE_FILE,
    )


def voxel_to_mni(template: Template, voxel_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    """Convert a ``(z, y, x)`` voxel index into MNI millimetres ``(x, y, z)`` (RAS+)."""
    z, y, x = voxel_zyx
    point = template.affine @ np.array([x, y, z, 1.0])
    return (float(point[0]), float(point[1]), float(point[2]))


def candidate_centres(template: Template) -> np.ndarray:
    """Voxels where a lesion centre may go, ``(M, 3)`` int ``(z, y, x)``.

    Brain mask eroded by :data:`EROSION_VOXELS`, restricted to tissue brighter than
    :data:`TISSUE_THRESHOLD` (so a dark lesion is never planted in CSF where it would be invisible).
    """
    mask = torch.from_numpy(template.mask.astype(np.float32))[None, None]
    k = 2 * EROSION_VOXELS + 1
    eroded = -F.max_pool3d(-mask, kernel_size=k, stride=1, padding=EROSION_VOXELS)
    ok = (eroded[0, 0].numpy() > 0.5) & (template.image > TISSUE_THRESHOLD)
    return np.argwhere(ok)


def random_lesion(
    rng: np.random.Generator,
    centres: np.ndarray,
    radius_range_mm: tuple[float, float] = RADIUS_RANGE_MM,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
) -> Lesion:
    """Draw a lesion: centre among ``centres`` (``(M, 3)`` from :func:`candidate_centres`) with
    a sub-voxel jitter, radii (per axis) in ``radius_range_mm``, contrast magnitude in
    ``contrast_range`` with a random sign (bright or dark)."""
    centre = centres[int(rng.integers(len(centres)))].astype(float) + rng.uniform(-0.5, 0.5, size=3)
    radii = rng.uniform(*radius_range_mm, size=3)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    contrast = sign * float(rng.uniform(*contrast_range))
    return Lesion(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        radii_mm=(float(radii[0]), float(radii[1]), float(radii[2])),
        contrast=contrast,
    )


def lesion_weight(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], lesion: Lesion
) -> np.ndarray:
    """Soft ellipsoid, float32 ``(D, H, W)`` in [0, 1]: 1 inside, 0.5 on the surface, 0 outside.

    The edge falls off over about a millimetre; the voxels with weight >= 0.5 are the lesion
    (the ground truth of the pointing game).
    """
    weight = np.zeros(shape, dtype=np.float32)
    lo, hi, axes = [], [], []
    for axis in range(3):
        reach = lesion.radii_mm[axis] / spacing[axis] + 2.0
        start = max(int(math.floor(lesion.centre[axis] - reach)), 0)
        stop = min(int(math.ceil(lesion.centre[axis] + reach)) + 1, shape[axis])
        lo.append(start)
        hi.append(stop)
        axes.append((np.arange(start, stop) - lesion.centre[axis]) * spacing[axis] / lesion.radii_mm[axis])
    if any(stop <= start for start, stop in zip(lo, hi)):
        return weight
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(dz**2 + dy**2 + dx**2)
    edge = 1.0 / max(min(lesion.radii_mm), 1e-6)  # about 1 mm of soft edge
    local = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / edge, -50, 50)))
    weight[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = local
    return weight


def plant_lesion(image: np.ndarray, weight: np.ndarray, contrast: float) -> np.ndarray:
    """``image + contrast * weight``, clipped at 0; float32 ``(D, H, W)``."""
    return np.clip(image + np.float32(contrast) * weight, 0.0, None).astype(np.float32)


def _shift(volume: np.ndarray, offsets: tuple[int, int, int]) -> np.ndarray:
    """Shift by whole voxels with zero fill (no wrap-around)."""
    out = np.zeros_like(volume)
    src, dst = [], []
    for axis, off in enumerate(offsets):
        size = volume.shape[axis]
        if off >= 0:
            src.append(slice(0, size - off))
            dst.append(slice(off, size))
        else:
            src.append(slice(-off, size))
            dst.append(slice(0, size + off))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def augment(
    volume: np.ndarray, rng: np.random.Generator, max_shift: int = 3
) -> tuple[np.ndarray, tuple[int, int, int], bool]:
    """Training-time augmentation of a ``(D, H, W)`` float32 volume.

    Left-right flip (x axis) with probability 0.5, a whole-voxel shift of up to ``max_shift`` along each
    axis, a smooth multiplicative bias field (linear in z, y, x, up to about +-10 %), gamma in
    [0.8, 1.25], global scale in [0.85, 1.15] and Gaussian noise with sigma up to 0.04.

    Returns:
        the augmented volume, the shift ``(z, y, x)`` applied and whether it was flipped (the flip is
        applied first, then the shift), so a lesion position can be mapped through it.
    """
    out = volume
    flipped = bool(rng.random() < 0.5)
    if flipped:
        out = out[:, :, ::-1]
    shift = tuple(int(s) for s in rng.integers(-max_shift, max_shift + 1, size=3))
    out = _shift(np.ascontiguousarray(out), (shift[0], shift[1], shift[2]))
    d, h, w = out.shape
    zz = np.linspace(-1.0, 1.0, d, dtype=np.float32)[:, None, None]
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[None, :, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, None, :]
    a, b, c = (rng.uniform(-0.1, 0.1, size=3)).astype(np.float32)
    out = out * (1.0 + a * zz + b * yy + c * xx)
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    out = np.power(np.clip(out, 0.0, None), gamma) * np.float32(rng.uniform(0.85, 1.15))
    sigma = float(rng.uniform(0.0, 0.04))
    out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out.astype(np.float32), (shift[0], shift[1], shift[2]), flipped
