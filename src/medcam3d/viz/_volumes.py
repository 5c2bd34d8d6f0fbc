"""Shared by the figures and the viewer: volumes with an optional geometry, and where grids lie in world space."""

from __future__ import annotations

from typing import Any

import numpy as np

from medcam3d.errors import GeometryError
from medcam3d.io.geometry import Geometry
from medcam3d.io.writing import as_volume

__all__ = ["volume_and_geometry", "world_extent", "overlaps", "describe_extent"]


def _geometry_pair(source: Any) -> bool:
    return isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], Geometry)


def volume_and_geometry(source: Any, name: str) -> tuple[np.ndarray, Geometry | None]:
    """``(array (D, H, W) z, y, x, Geometry | None)`` from an array/tensor or an ``(array, Geometry)`` pair."""
    if _geometry_pair(source):
        array = as_volume(source[0], name)
        geometry: Geometry = source[1]
        if array.shape != geometry.shape:
            raise GeometryError(
                f"The {name} array {array.shape} does not match its geometry {geometry.shape} (z, y, x)."
            )
        return array, geometry
    return as_volume(source, name), None


def world_extent(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box ``(low, high)`` (mm) of the grid's voxels, voxel edges included."""
    shape = np.asarray(geometry.shape, dtype=float)
    corners = np.array(
        [
            [a, b, c]
            for a in (-0.5, shape[0] - 0.5)
            for b in (-0.5, shape[1] - 0.5)
            for c in (-0.5, shape[2] - 0.5)
        ]
    )
    world = np.array([geometry.index_to_world(corner) for corner in corners])
    return world.min(axis=0), world.max(axis=0)


def overlaps(inner: Geometry, outer: Geometry) -> bool:
    """Whether any voxel of ``inner`` may lie inside ``outer`` (world space; conservative for oblique grids)."""
    low, high = world_extent(inner)
    corners = np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    )
    index = np.array([outer.world_to_index(c) for c in corners])
    shape = np.asarray(outer.shape, dtype=float)
    return bool(np.all(index.max(axis=0) > -0.5) and np.all(index.min(axis=0) < shape - 0.5))


def describe_extent(geometry: Geometry) -> str:
    """``"x -20.0..19.0, y ... mm (LPS)"`` for messages."""
    low, high = world_extent(geometry)
    return ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("xyz", low, high)) + " mm (LPS)"
