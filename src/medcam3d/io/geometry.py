"""Image geometry: where each voxel of a volume lies in the patient (world) coordinate system.

Conventions (the same as SimpleITK / ITK):

* Arrays are indexed ``(z, y, x)`` == ``(D, H, W)``, like ``SimpleITK.GetArrayFromImage``.
* ``spacing``, ``origin`` and the columns of ``direction`` are in ``(x, y, z)`` order.
* World coordinates are in millimetres in the **LPS** frame (x grows towards the patient's Left,
  y towards Posterior, z towards Superior), which is what DICOM and ITK use.
* ``direction`` is a 3x3 matrix whose column ``c`` is the unit world vector (LPS) along which the
  voxel index ``c`` (0 = x, 1 = y, 2 = z) grows.

The world position of voxel index ``(i, j, k)`` (x, y, z index; i.e. array element ``[k, j, i]``)::

    p_LPS = origin + direction @ diag(spacing) @ (i, j, k)

:attr:`Geometry.affine` is the 4x4 matrix of the same mapping expressed in **RAS+** (nibabel's
convention: x grows towards Right, y towards Anterior, z towards Superior, i.e. the first two
world axes of LPS negated)::

    p_RAS = affine @ (i, j, k, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medcam3d.errors import GeometryError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK

__all__ = ["Geometry", "LPS_TO_RAS"]

logger = logging.getLogger(__name__)

#: Flips the first two world axes: LPS <-> RAS (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise GeometryError(f"{name} must have 3 values (x, y, z), got {len(out)}: {tuple(values)!r}.")
    if not all(np.isfinite(out)):
        raise GeometryError(f"{name} must be finite, got {out!r}.")
    return out


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid of a 3-D image: shape, spacing, origin and direction.

    Attributes:
        shape: array shape ``(D, H, W)`` == ``(z, y, x)`` (the numpy order of SimpleITK arrays).
        spacing: voxel size in mm, ``(x, y, z)`` order (SimpleITK order).
        origin: world position (LPS, mm) of the centre of voxel ``(0, 0, 0)``, ``(x, y, z)``.
        direction: 3x3 direction cosines (LPS); column ``c`` is the world direction of index
            axis ``c`` (x, y, z). Identity means an axial, LPS-ordered volume.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"Geometry.shape must be 3 positive sizes (D, H, W), got {self.shape!r}.")
        spacing = _triple(self.spacing, "spacing")
        if min(spacing) <= 0:
            raise GeometryError(f"spacing must be positive, got {spacing!r}.")
        direction = np.array(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise GeometryError(f"direction must be an invertible 3x3 matrix, got {direction.tolist()!r}.")
        direction.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _triple(self.origin, "origin"))
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ derived values
    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Image size in SimpleITK order ``(x, y, z)`` == ``(W, H, D)``."""
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order ``(z, y, x)`` (what :mod:`medcam3d.viz` expects)."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k, 1)`` (x, y, z index) to LPS world mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction @ np.diag(self.spacing)
        out[:3, 3] = self.origin
        return out

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k, 1)`` (x, y, z index) to **RAS+** world mm.

        This is the affine nibabel reports for the same file (``nib.load(f).affine``); note that
        nibabel's arrays are indexed ``(x, y, z)`` while ours are ``(z, y, x)``.
        """
        out = self.affine_lps
        out[:3, :] = LPS_TO_RAS @ out[:3, :]
        return out

    def index_to_world(self, index_zyx: Sequence[float]) -> np.ndarray:
        """LPS world position (mm) of the array element ``[z, y, x]`` (fractional indices allowed)."""
        k, j, i = (float(v) for v in index_zyx)
        return np.asarray(self.origin) + self.direction @ (np.asarray(self.spacing) * np.array([i, j, k]))

    def world_to_index(self, point_lps: Sequence[float]) -> np.ndarray:
        """Fractional array index ``(z, y, x)`` of an LPS world point (mm)."""
        ijk = np.linalg.solve(
            self.direction @ np.diag(self.spacing), np.asarray(point_lps, float) - self.origin
        )
        return ijk[::-1].copy()

    # ------------------------------------------------------------------ comparisons
    def allclose(self, other: Geometry, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and (to ``atol``) the same spacing/origin/direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.allclose(other, atol=1e-6)

    def __hash__(self) -> int:  # equality is approximate, so only the exact part may enter the hash
        return hash(self.shape)

    def __repr__(self) -> str:
        d = np.array2string(self.direction, precision=4, separator=", ").replace("\n", "")
        return (
            f"Geometry(shape={self.shape} (z, y, x), spacing={tuple(round(s, 6) for s in self.spacing)} (x, y, z), "
            f"origin={tuple(round(o, 4) for o in self.origin)} (x, y, z, LPS), direction={d})"
        )

    # ------------------------------------------------------------------ derived grids
    def crop(self, start_zyx: Sequence[int], stop_zyx: Sequence[int]) -> Geometry:
        """Geometry of ``array[z0:z1, y0:y1, x0:x1]`` (a crop; ``start`` may be negative for padding).

        A negative start or a stop beyond the shape describes zero-padding: the grid then extends
        past the original image, which is exactly what padding does to the world coordinates.
        """
        start = [int(v) for v in start_zyx]
        stop = [int(v) for v in stop_zyx]
        if len(start) != 3 or len(stop) != 3:
            raise GeometryError("crop() needs start and stop as (z, y, x) triples.")
        shape = tuple(b - a for a, b in zip(start, stop))
        if min(shape) < 1:
            raise GeometryError(f"Empty crop: start={start} stop={stop}.")
        origin = self.index_to_world(start)
        return Geometry(shape=shape, spacing=self.spacing, origin=tuple(origin), direction=self.direction)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ constructors / converters
    @classmethod
    def from_affine(cls, affine: Any, shape_zyx: Sequence[int], lps: bool = False) -> Geometry:
        """Geometry from a 4x4 voxel-to-world affine (RAS+ by default, as nibabel and MONAI use).

        Args:
            affine: 4x4 matrix mapping index ``(i, j, k, 1)`` — x, y, z index, i.e. the array axes
                in nibabel order — to world mm.
            shape_zyx: array shape in **our** order ``(D, H, W)`` == ``(z, y, x)``; for a nibabel
                array of shape ``(X, Y, Z)`` pass ``shape[::-1]``.
            lps: set when the affine is already in LPS (ITK) coordinates.
        """
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise GeometryError(f"An affine must be a finite 4x4 matrix, got shape {a.shape}.")
        flip = np.eye(3) if lps else LPS_TO_RAS
        linear = flip @ a[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"The affine has a zero column (zero voxel size): {a.tolist()!r}.")
        direction = linear / spacing
        gram = direction.T @ direction
        if not np.allclose(gram, np.eye(3), atol=1e-3):
            logger.warning(
                "The affine has shear (non-orthogonal axes); ITK-style geometry keeps it approximately."
            )
        return cls(
            shape=tuple(int(s) for s in shape_zyx),  # type: ignore[arg-type]
            spacing=tuple(spacing),
            origin=tuple(flip @ a[:3, 3]),
            direction=direction,
        )

    @classmethod
    def from_sitk(cls, image: SimpleITK.Image) -> Geometry:
        """Geometry of a 3-D (or 2-D, promoted to one slice) ``SimpleITK.Image``."""
        dim = image.GetDimension()
        size = list(image.GetSize())
        if dim == 2:
            spacing = [*image.GetSpacing(), 1.0]
            origin = [*image.GetOrigin(), 0.0]
            direction = np.eye(3)
            direction[:2, :2] = np.asarray(image.GetDirection()).reshape(2, 2)
            size = [*size, 1]
        elif dim == 3:
            spacing = list(image.GetSpacing())
            origin = list(image.GetOrigin())
            direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        else:
            raise GeometryError(
                f"Only 2-D and 3-D images are supported, this one has {dim} dimensions (size {tuple(size)}). "
                "Extract one 3-D volume (one time point / channel) first."
            )
        return cls(shape=(size[2], size[1], size[0]), spacing=spacing, origin=origin, direction=direction)  # type: ignore[arg-type]

    @classmethod
    def from_nibabel(cls, image: Any) -> Geometry:
        """Geometry of a nibabel spatial image (uses ``image.affine``, RAS+; array axes x, y, z)."""
        shape = tuple(image.shape[:3])
        if len(image.shape) > 3 and any(s != 1 for s in image.shape[3:]):
            raise GeometryError(
                f"Only 3-D images are supported, this nibabel image has shape {image.shape}. "
                "Take one volume first, e.g. image.slicer[..., 0]."
            )
        while len(shape) < 3:
            shape = (*shape, 1)
        return cls.from_affine(image.affine, shape[::-1])

    def to_sitk(self, array: np.ndarray | None = None) -> SimpleITK.Image:
        """A ``SimpleITK.Image`` with this geometry; ``array`` is ``(D, H, W)`` (z, y, x), default zeros."""
        from medcam3d.errors import require_extra

        sitk: Any = require_extra("SimpleITK", "io", "medical image I/O")
        if array is None:
            array = np.zeros(self.shape, dtype=np.float32)
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryError(
                f"Array shape {array.shape} does not match the geometry's shape {self.shape} (z, y, x)."
            )
        image = sitk.GetImageFromArray(array)
        self.apply_to(image)
        return image

    def apply_to(self, image: SimpleITK.Image) -> None:
        """Copy spacing, origin and direction onto a 3-D ``SimpleITK.Image`` of the same size."""
        if tuple(image.GetSize()) != self.size_xyz:
            raise GeometryError(
                f"Image size {tuple(image.GetSize())} (x, y, z) does not match the geometry's {self.size_xyz}."
            )
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
