"""Planes of a volume as figures show them: orientation, aspect, titles in voxels and millimetres.

A :class:`Plane` is one 2-D view (a slice or a maximum-intensity projection) with its arrays
already turned the way radiology viewers show them: anterior (axial) or superior (coronal,
sagittal) at the top, the patient's right on the viewer's left (axial, coronal) and anterior on
the left (sagittal), whatever the array order on disk. :func:`draw_plane` draws one on a
matplotlib axes; every figure of :mod:`medcam3d.viz.figures` is made of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medcam3d.io.geometry import Geometry
from medcam3d.viz.overlay import Label, colormap, overlay

__all__ = ["PLANE_NAMES", "Plane", "orientation_labels", "take_plane", "draw_plane", "world_position"]

#: Name of the plane perpendicular to array axis 0 (z), 1 (y), 2 (x).
PLANE_NAMES = ("axial", "coronal", "sagittal")
#: (row axis, column axis) of the plane perpendicular to array axis 0, 1, 2.
_ROWS_COLS = ((1, 2), (0, 2), (0, 1))

#: Colour of the crosshair lines (distinct from the ground truth's label colours).
CROSSHAIR_COLOUR = "#b0b0b0"

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) world direction, LPS
_TOP_LETTERS = ("A", "S")  # anterior up in axial views, superior up in coronal and sagittal views
_LEFT_LETTERS = ("R", "A")  # radiological: patient's right on the viewer's left; anterior left in sagittal


def orientation_labels(direction: Any, axis_zyx: int) -> tuple[str, str]:
    """Patient-side letters ``(low end, high end)`` of array axis ``axis_zyx`` (0 = z, 1 = y, 2 = x).

    ``direction`` is the ITK/LPS direction matrix of :class:`medcam3d.io.Geometry`; identity
    means x grows to the patient's Left, y to Posterior, z to Superior. Oblique axes get the
    letter of their dominant component.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    column = d[:, 2 - axis_zyx]
    world = int(np.argmax(np.abs(column)))
    negative, positive = _LPS_LETTERS[world]
    return (negative, positive) if column[world] > 0 else (positive, negative)


def world_position(geometry: Geometry, voxel_zyx: Sequence[float], axis_zyx: int) -> str:
    """Where the plane through ``voxel_zyx`` perpendicular to array axis ``axis_zyx`` lies, e.g. ``"S 30.0 mm"``.

    The coordinate is the world (LPS) coordinate of the voxel centre along the world axis that
    array axis ``axis_zyx`` mostly follows, written with the patient-side letter of its sign
    (``R``/``L``, ``A``/``P``, ``I``/``S``), as radiology viewers do.
    """
    column = np.asarray(geometry.direction)[:, 2 - axis_zyx]
    world = int(np.argmax(np.abs(column)))
    value = float(geometry.index_to_world(voxel_zyx)[world])
    negative, positive = _LPS_LETTERS[world]
    return f"{positive if value >= 0 else negative} {abs(value):.1f} mm"


@dataclass(frozen=True)
class Plane:
    """One 2-D view of a volume, ready to draw; every array is ``(rows, cols)`` in display orientation.

    Attributes:
        axis: the array axis the plane is perpendicular to (0 = z axial, 1 = y coronal, 2 = x sagittal).
        index: the slice index along ``axis``; ``None`` for a maximum-intensity projection.
        image: windowed grayscale in ``[0, 1]``.
        cam: the map (``None``: image only).
        mask: integer label map, 0 = background (``None``: no ground truth).
        aspect: height / width of one pixel (from the voxel spacing).
        letters: patient-side letters at the ``(left, right, top, bottom)`` edges.
        title: the panel's title (may be empty).
        cross: ``(row, col)`` of the crosshair in display coordinates, or ``None``.
    """

    axis: int
    index: int | None
    image: np.ndarray
    cam: np.ndarray | None
    mask: np.ndarray | None
    aspect: float
    letters: tuple[str, str, str, str]
    title: str = ""
    cross: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """``"axial"``, ``"coronal"`` or ``"sagittal"``."""
        return PLANE_NAMES[self.axis]


def take_plane(
    gray: np.ndarray,
    cam: np.ndarray | None,
    mask: np.ndarray | None,
    axis: int,
    index: int | None,
    spacing: Sequence[float],
    direction: Any,
    title: str = "",
    cross_voxel: Sequence[int] | None = None,
) -> Plane:
    """Cut (``index``) or project (``index=None``: maximum) ``gray``, ``cam`` and ``mask`` along ``axis``.

    Args:
        gray: windowed volume ``(D, H, W)`` (z, y, x) in ``[0, 1]``.
        cam, mask: volumes of the same shape, or ``None``.
        axis: 0 (axial), 1 (coronal) or 2 (sagittal).
        index: slice index along ``axis``, or ``None`` for a maximum-intensity projection (the mask
            projects per label: a pixel shows the largest label on its ray).
        spacing: voxel size ``(z, y, x)``.
        direction: ITK/LPS direction matrix (identity for an LPS-ordered volume).
        cross_voxel: ``(z, y, x)`` voxel the crosshair marks, or ``None``.
    """

    def cut(volume: np.ndarray | None) -> np.ndarray | None:
        if volume is None:
            return None
        return np.take(volume, index, axis=axis) if index is not None else volume.max(axis=axis)

    row_axis, col_axis = _ROWS_COLS[axis]
    low, high = orientation_labels(direction, row_axis)
    left, right = orientation_labels(direction, col_axis)
    flip_rows = high in _TOP_LETTERS and low not in _TOP_LETTERS
    flip_cols = right in _LEFT_LETTERS and left not in _LEFT_LETTERS
    top, bottom = (high, low) if flip_rows else (low, high)
    if flip_cols:
        left, right = right, left

    def shown(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        array = array[::-1] if flip_rows else array
        return np.ascontiguousarray(array[:, ::-1] if flip_cols else array)

    image = shown(cut(gray))
    assert image is not None
    cross = None
    if cross_voxel is not None:
        rows, cols = image.shape
        row, col = float(cross_voxel[row_axis]), float(cross_voxel[col_axis])
        cross = (rows - 1 - row if flip_rows else row, cols - 1 - col if flip_cols else col)
    return Plane(
        axis=axis,
        index=index,
        image=image,
        cam=shown(cut(cam)),
        mask=shown(cut(mask)),
        aspect=float(spacing[row_axis]) / float(spacing[col_axis]),
        letters=(left, right, top, bottom),
        title=title,
        cross=cross,
    )


def draw_plane(
    ax: Any,
    plane: Plane,
    *,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    labels: Sequence[Label] = (),
    corner: str = "",
    letters: bool = True,
) -> None:
    """Draw ``plane`` on ``ax``: the blended image, the ground truth's contours, letters, title, crosshair.

    Args:
        cmap, alpha, threshold: as in :func:`medcam3d.viz.overlay` (absolute threshold).
        labels: the ground-truth labels to outline (one contour colour each); ``plane.mask`` holds them.
        corner: text at the lower-left corner (e.g. the slice index).
        letters: draw the orientation letters at the edges.
    """
    if plane.cam is not None:
        rgb = overlay(plane.image, plane.cam, (0.0, 1.0), cmap, alpha, threshold)
    else:
        rgb = np.repeat(plane.image[..., None], 3, axis=-1)
    ax.imshow(rgb, aspect=plane.aspect, origin="upper", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if plane.title:
        ax.set_title(plane.title, fontsize=8)
    if plane.mask is not None and labels:
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        for label in labels:
            inside = (plane.mask == label.value).astype(np.float32)
            if inside.any() and not inside.all():
                contour = ax.contour(inside, levels=[0.5], colors=[label.colour], linewidths=1.2)
                contour.set_label(label.name)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    if letters:
        left, right, top, bottom = plane.letters
        style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    if corner:
        ax.text(0.03, 0.04, corner, color="white", fontsize=7, transform=ax.transAxes)
    if plane.cross is not None:
        row, col = plane.cross
        ax.axhline(row, color=CROSSHAIR_COLOUR, linewidth=0.5, alpha=0.6)
        ax.axvline(col, color=CROSSHAIR_COLOUR, linewidth=0.5, alpha=0.6)


def add_colorbar(
    fig: Any, rect: Sequence[float], cmap: Any, label: str, orientation: str = "vertical"
) -> Any:
    """A 0-to-1 colorbar of ``cmap`` in the figure rectangle ``rect`` (figure fractions)."""
    import matplotlib.cm
    import matplotlib.colors

    cax = fig.add_axes(rect)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=colormap(cmap))
    bar = fig.colorbar(mappable, cax=cax, orientation=orientation)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def add_legend(fig: Any, labels: Sequence[Label], anchor: tuple[float, float]) -> Any:
    """A figure legend naming the ground-truth contours, its lower-right corner at ``anchor``."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=label.colour, linewidth=1.5, label=label.name) for label in labels]
    return fig.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=anchor,
        fontsize=7,
        frameon=True,
        facecolor="#222222",
        labelcolor="white",
        edgecolor="none",
        handlelength=1.2,
        borderaxespad=0.2,
    )
