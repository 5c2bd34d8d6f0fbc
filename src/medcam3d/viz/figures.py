"""Paper-ready figures of a map over a grayscale volume (extra ``medcam3d[viz]``: matplotlib).

All volumes are numpy arrays ``(D, H, W)`` in **(z, y, x)** order — the order of
:func:`medcam3d.io.read_image` — or ``(array, Geometry)`` pairs. Maps are expected in ``[0, 1]``
(CAM methods normalise them); values outside are clipped, never wrapped. A ground-truth ``mask``
(boolean mask or integer label map, same shape) is drawn as contours, one colour per label, with
a legend. The default threshold colours voxels at or above 0.2 of the map's range
(:data:`medcam3d.viz.overlay.DEFAULT_THRESHOLD`, the same as the HTML viewer).

The output format follows the file ending: ``.png`` (at ``dpi``), ``.pdf``, ``.svg`` (vector; the
image panels stay raster) or ``.jpg``. Each figure has a ``build_*`` twin that returns the
:class:`matplotlib.figure.Figure` instead of writing it. Figures are built on
:class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI backend is touched, and
written atomically.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import atomic_path, check_output_file, write_bytes_atomic
from medcam3d.errors import ConfigurationError, GeometryError, InputShapeError, OutputPathError, require_extra
from medcam3d.io.geometry import Geometry
from medcam3d.viz._volumes import describe_extent, overlaps, volume_and_geometry
from medcam3d.viz.overlay import DEFAULT_THRESHOLD, Label, mask_labels, overlay, resolve_threshold
from medcam3d.viz.planes import (
    PLANE_NAMES,
    add_colorbar,
    add_legend,
    draw_plane,
    orientation_labels,
    take_plane,
    world_position,
)
from medcam3d.viz.windowing import CT_WINDOWS, MRI_PERCENTILES, Window, window_image, window_limits

__all__ = [
    "CT_WINDOWS",
    "MRI_PERCENTILES",
    "DEFAULT_THRESHOLD",
    "Window",
    "window_image",
    "window_limits",
    "overlay",
    "orientation_labels",
    "build_three_plane_figure",
    "three_plane_figure",
    "build_montage_figure",
    "montage",
    "build_mip_figure",
    "mip_figure",
    "build_compare_methods_figure",
    "compare_methods_figure",
    "save_slice_pngs",
    "colorbar_figure",
    "FIGURE_ENDINGS",
]

logger = logging.getLogger(__name__)

FIGURE_ENDINGS: tuple[str, ...] = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "jpeg": b"\xff\xd8", "svg": b"<?xml"}


# ---------------------------------------------------------------------------------------- inputs
def _matplotlib() -> Any:
    return require_extra("matplotlib", "viz", "drawing figures")


@dataclass
class _Scene:
    """What every figure draws: the image, its maps and ground truth on one grid, and how to orient them."""

    image: np.ndarray  # (D, H, W) float32, raw intensities
    maps: list[np.ndarray]  # (D, H, W) float32 in [0, 1]
    mask: np.ndarray | None  # (D, H, W) integer labels
    labels: list[Label]
    spacing: tuple[float, float, float]  # (z, y, x)
    direction: np.ndarray
    geometry: Geometry | None

    def gray(self, window: Window) -> np.ndarray:
        return window_image(self.image, window)

    def title(self, axis: int, index: int, voxel: Sequence[int]) -> str:
        """``"axial z=12 (S 30.0 mm)"``: the slice index, and its world position when the geometry is known."""
        text = f"{PLANE_NAMES[axis]} {'zyx'[axis]}={index}"
        return f"{text} ({world_position(self.geometry, voxel, axis)})" if self.geometry is not None else text


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ConfigurationError(f"spacing must be 3 positive values in (z, y, x) order, got {spacing!r}.")
    return values


def _on_image_grid(
    array: np.ndarray, own: Geometry | None, image: np.ndarray, grid: Geometry | None, name: str
) -> None:
    """Refuse a volume that is not on the image's voxel grid (figures draw voxel by voxel)."""
    if own is not None and grid is not None and not own.allclose(grid):
        if not overlaps(own, grid):
            raise GeometryError(
                f"The {name} does not overlap the image in world space (the {name} spans {describe_extent(own)}, "
                f"the image {describe_extent(grid)}): nothing of it could be shown. Check the {name}'s geometry "
                "(origin, direction) or bring it onto the image grid with medcam3d.io.map_to_original."
            )
        raise InputShapeError(
            f"The {name} lies on another voxel grid than the image ({own} vs {grid}); bring it onto the image "
            "grid first (medcam3d.io.map_to_original or medcam3d.io.resample_to_reference)."
        )
    if array.shape != image.shape:
        raise InputShapeError(
            f"image {image.shape} and {name} {array.shape} must have the same shape (z, y, x); bring the {name} "
            "onto the image grid first (medcam3d.io.map_to_original)."
        )


def _scene(
    image: Any,
    cams: Sequence[Any],
    *,
    mask: Any = None,
    mask_names: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    direction: Any = None,
    geometry: Geometry | None = None,
    cam_names: Sequence[str] | None = None,
) -> _Scene:
    img, image_geometry = volume_and_geometry(image, "image")
    geometry = geometry if geometry is not None else image_geometry
    if geometry is not None and geometry.shape != img.shape:
        raise GeometryError(f"geometry {geometry.shape} does not match the image {img.shape} (z, y, x).")
    maps = []
    for n, cam in enumerate(cams):
        name = f"map {cam_names[n]!r}" if cam_names else "cam"
        heat, own = volume_and_geometry(cam, name)
        _on_image_grid(heat, own, img, geometry, name)
        heat = np.nan_to_num(heat.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
        maps.append(np.clip(heat, 0.0, 1.0))
    labels: list[Label] = []
    label_map = None
    if mask is not None:
        label_map, own = volume_and_geometry(mask, "mask")
        _on_image_grid(label_map, own, img, geometry, "mask")
        labels = mask_labels(label_map, mask_names)
        label_map = label_map.astype(np.int32)
        if not labels:
            logger.warning("The mask is empty (all zero): no ground-truth contour is drawn.")
    if direction is None:
        direction = geometry.direction if geometry is not None else np.eye(3)
    return _Scene(
        image=img.astype(np.float32, copy=False),
        maps=maps,
        mask=label_map,
        labels=labels,
        spacing=_spacing(spacing if spacing is not None or geometry is None else geometry.spacing_zyx),
        direction=np.asarray(direction, dtype=float),
        geometry=geometry,
    )


def _peak(cam: np.ndarray) -> tuple[int, int, int]:
    if not np.any(np.isfinite(cam)):
        return tuple(s // 2 for s in cam.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.nanargmax(cam)), cam.shape))  # type: ignore[return-value]


def _mask_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The mask voxel nearest the mask's centre of mass (inside the mask, so planes cut through it)."""
    points = np.argwhere(mask)
    centre = points.mean(axis=0)
    return tuple(int(v) for v in points[np.argmin(((points - centre) ** 2).sum(axis=1))])  # type: ignore[return-value]


def _voxel(
    voxel: Sequence[int] | None, default: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int]:
    if voxel is None:
        return default
    z, y, x = (int(v) for v in voxel)
    if not all(0 <= v < s for v, s in zip((z, y, x), shape)):
        raise ConfigurationError(f"voxel {tuple(voxel)} is outside the volume of shape {shape} (z, y, x).")
    return z, y, x


# ---------------------------------------------------------------------------------------- the frame
_SIDE = 0.9  # inches right of the panels for the colorbar (and the legend)
_HEAD = 0.4  # inches above the panels for the figure title
_PANEL_TITLE = 0.3  # inches above each panel row for the panel titles


def _frame(
    nrows: int,
    ncols: int,
    *,
    panel: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None,
    colorbar: bool,
    legend: Sequence[Label] = (),
    cmap: Any = "jet",
    colorbar_label: str = "CAM",
    panel_titles: bool = False,
    left: float = 0.0,
) -> tuple[Any, list[list[Any]]]:
    """The figure every builder draws on: a grid of panels, the title, the colorbar and the legend.

    Give either ``panel`` (inches per panel; the figure size follows) or ``figsize`` (the panels
    share what is left). ``left`` reserves inches on the left (row labels).
    """
    from matplotlib.figure import Figure

    side = _SIDE if colorbar or legend else 0.0
    head = _HEAD if title else 0.0
    row_title = _PANEL_TITLE if panel_titles else 0.0
    if figsize is not None:
        width, height = figsize
        pw, ph = (width - left - side) / ncols, (height - head) / nrows - row_title
    else:
        assert panel is not None
        pw, ph = panel
        width, height = left + ncols * pw + side, head + nrows * (ph + row_title)
    if pw <= 0 or ph <= 0:
        raise ConfigurationError(f"figsize {figsize} leaves no room for {nrows} x {ncols} panels.")
    fig = Figure(figsize=(width, height))
    fig.patch.set_facecolor("white")
    axes = [
        [
            fig.add_axes(
                (
                    (left + c * pw) / width,
                    1 - (head + (r + 1) * (ph + row_title)) / height,
                    pw / width,
                    ph / height,
                )
            )
            for c in range(ncols)
        ]
        for r in range(nrows)
    ]
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
    bar_bottom = 0.15 if not legend else 0.5
    if colorbar:
        add_colorbar(
            fig,
            ((width - side + 0.12) / width, bar_bottom, 0.12 / width, 0.85 - bar_bottom),
            cmap,
            colorbar_label,
        )
    if legend:
        add_legend(fig, legend, (1.0, 0.0))
    return fig, axes


def _figure_path(out_path: str | os.PathLike[str], overwrite: bool) -> Path:
    out = Path(out_path)
    if out.suffix.lower() not in FIGURE_ENDINGS:
        raise OutputPathError(f"Cannot write a figure to {out}: use one of {', '.join(FIGURE_ENDINGS)}.")
    return check_output_file(out, overwrite)  # early, before the drawing; atomic_path checks again


def _save(fig: Any, out: Path, dpi: float, overwrite: bool) -> Path:
    fmt = out.suffix.lower().lstrip(".")
    fmt = "jpeg" if fmt == "jpg" else fmt
    metadata: dict[str, Any] = {"Software": "medcam3d"} if fmt == "png" else {}
    if fmt == "svg":
        metadata = {"Date": None}
    elif fmt == "pdf":
        metadata = {"CreationDate": None, "Creator": "medcam3d"}
    elif fmt == "jpeg":
        metadata = {}

    def check(tmp: Path) -> bool:  # a non-empty file of the right kind
        with open(tmp, "rb") as handle:
            return tmp.stat().st_size > 0 and handle.read(8).startswith(_MAGIC[fmt])

    with atomic_path(out, overwrite=overwrite, verify=check) as tmp:  # OSError -> OutputPathError there
        fig.savefig(tmp, dpi=dpi, format=fmt, metadata=metadata or None, facecolor=fig.get_facecolor())
    logger.info("Wrote %s", out)
    return out


# ---------------------------------------------------------------------------------------- three planes
def build_three_plane_figure(
    image: Any,
    cam: Any,
    spacing: Sequence[float] | None = None,
    voxel: Sequence[int] | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    title: str | None = None,
    *,
    threshold: float | None = None,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    crosshair: bool = True,
    figsize: tuple[float, float] = (12.0, 4.4),
    colorbar_label: str = "CAM",
) -> Any:
    """The :func:`three_plane_figure` as a :class:`matplotlib.figure.Figure` (not saved), e.g. for notebooks."""
    _matplotlib()
    scene = _scene(
        image,
        [cam],
        mask=mask,
        mask_names=mask_labels,
        spacing=spacing,
        direction=direction,
        geometry=geometry,
    )
    heat = scene.maps[0]
    point = _voxel(voxel, _peak(heat), scene.image.shape)
    level = resolve_threshold(heat, threshold)
    gray = scene.gray(window)
    fig, axes = _frame(
        1,
        3,
        figsize=figsize,
        title=title,
        colorbar=colorbar,
        legend=scene.labels,
        cmap=cmap,
        colorbar_label=colorbar_label,
        panel_titles=True,
    )
    for axis in range(3):
        plane = take_plane(
            gray,
            heat,
            scene.mask,
            axis,
            point[axis],
            scene.spacing,
            scene.direction,
            scene.title(axis, point[axis], point),
            point if crosshair else None,
        )
        draw_plane(axes[0][axis], plane, cmap=cmap, alpha=alpha, threshold=level, labels=scene.labels)
    return fig


def three_plane_figure(
    image: Any,
    cam: Any,
    out_path: str | os.PathLike[str],
    spacing: Sequence[float] | None = None,
    voxel: Sequence[int] | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    title: str | None = None,
    dpi: float = 150,
    *,
    threshold: float | None = None,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    crosshair: bool = True,
    figsize: tuple[float, float] = (12.0, 4.4),
    overwrite: bool = False,
) -> Path:
    """Axial, coronal and sagittal slices through one voxel, the map overlaid, in one figure file.

    Args:
        image: grayscale volume ``(D, H, W)`` in (z, y, x) order, or an ``(array, Geometry)`` pair.
        cam: map of the same shape, values in ``[0, 1]`` (clipped).
        out_path: ``.png`` (raster at ``dpi``), ``.pdf``, ``.svg`` or ``.jpg``.
        spacing: voxel size in **(z, y, x)** order (``geometry.spacing_zyx``), for the aspect ratio.
        voxel: ``(z, y, x)`` index the planes pass through; default the map's peak.
        window: see :func:`window_image` (CT preset name, ``"mri"``, ``(low, high)``).
        cmap, alpha: see :func:`overlay`.
        threshold: map values below it show the image only; default (``None``) 0.2 of the map's
            range above its minimum (:data:`DEFAULT_THRESHOLD`); a number is an absolute map value.
        title: figure title.
        dpi: PNG resolution; the PNG is ``figsize * dpi`` pixels.
        direction: ITK/LPS direction matrix for the orientation letters (default identity: axial
            panel with patient Right on the image's left, Anterior at the top — radiological view).
        geometry: a :class:`medcam3d.io.Geometry`; supplies spacing and direction when those are
            omitted, and the panel titles then give each plane's world position in mm.
        mask: ground truth ``(D, H, W)``: boolean mask or integer label map (0 = background), drawn
            as a contour per label with a legend.
        mask_labels: ``{label: name}`` for the legend (default ``"mask"`` or ``"label k"``).
        colorbar, crosshair: draw a colorbar / lines through ``voxel``.
        overwrite: replace an existing file.

    Returns:
        ``Path(out_path)``.
    """
    out = _figure_path(out_path, overwrite)
    fig = build_three_plane_figure(
        image,
        cam,
        spacing,
        voxel,
        window,
        cmap,
        alpha,
        title,
        threshold=threshold,
        direction=direction,
        geometry=geometry,
        mask=mask,
        mask_labels=mask_labels,
        colorbar=colorbar,
        crosshair=crosshair,
        figsize=figsize,
    )
    return _save(fig, out, dpi, overwrite)


# ---------------------------------------------------------------------------------------- montage
def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    cols = ncols or max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise ConfigurationError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis}.")
    return int(axis)


def build_montage_figure(
    image: Any,
    cam: Any,
    axis: int = 0,
    slices: Sequence[int] | None = None,
    n_slices: int = 12,
    ncols: int | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    *,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    panel_size: float = 2.0,
) -> Any:
    """The :func:`montage` as a :class:`matplotlib.figure.Figure` (not saved)."""
    _matplotlib()
    axis = _axis(axis)
    scene = _scene(
        image,
        [cam],
        mask=mask,
        mask_names=mask_labels,
        spacing=spacing,
        direction=direction,
        geometry=geometry,
    )
    heat = scene.maps[0]
    length = scene.image.shape[axis]
    if slices is None:
        other = tuple(a for a in range(3) if a != axis)
        profile = heat.max(axis=other)
        support = np.flatnonzero(profile > 0.1 * profile.max()) if profile.max() > 0 else np.arange(length)
        first, last = int(support.min()), int(support.max())
        count = min(n_slices, last - first + 1)
        slices = np.unique(np.round(np.linspace(first, last, count)).astype(int)).tolist()
    slices = [int(s) for s in slices]
    if not slices or any(not 0 <= s < length for s in slices):
        raise ConfigurationError(
            f"slices must be indices within [0, {length}) along axis {axis}, got {slices}."
        )
    level = resolve_threshold(heat, threshold)
    gray = scene.gray(window)
    nrows, cols = _grid(len(slices), ncols)
    fig, axes = _frame(
        nrows,
        cols,
        panel=(panel_size, panel_size),
        title=title,
        colorbar=colorbar,
        legend=scene.labels,
        cmap=cmap,
    )
    centre = [s // 2 for s in scene.image.shape]
    for n, index in enumerate(slices):
        r, c = divmod(n, cols)
        plane = take_plane(gray, heat, scene.mask, axis, index, scene.spacing, scene.direction)
        voxel = list(centre)
        voxel[axis] = index
        corner = f"{'zyx'[axis]}={index}"
        if scene.geometry is not None:
            corner += "\n" + world_position(scene.geometry, voxel, axis)
        draw_plane(
            axes[r][c], plane, cmap=cmap, alpha=alpha, threshold=level, labels=scene.labels, corner=corner
        )
    for n in range(len(slices), nrows * cols):
        axes[n // cols][n % cols].set_axis_off()
    return fig


def montage(
    image: Any,
    cam: Any,
    out_path: str | os.PathLike[str],
    axis: int = 0,
    slices: Sequence[int] | None = None,
    n_slices: int = 12,
    ncols: int | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    dpi: float = 150,
    *,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    panel_size: float = 2.0,
    overwrite: bool = False,
) -> Path:
    """A grid of slices along ``axis`` (0 = axial z, 1 = coronal y, 2 = sagittal x) with the map overlaid.

    Args:
        image, cam: volumes ``(D, H, W)`` in (z, y, x) order; cam in ``[0, 1]``.
        slices: slice indices to show, in order (row by row). Default: ``n_slices`` evenly spaced
            slices over the range where the map exceeds 10 % of its maximum (the whole axis if none).
        ncols: panels per row (default: about square).
        spacing: voxel size ``(z, y, x)`` for the aspect ratio.
        panel_size: inches per panel; the file is ``(ncols * panel_size, nrows * panel_size)``
            inches (+0.9 inch for a colorbar or legend, +0.4 inch for a title) at ``dpi``.
        Other arguments (``threshold``, ``mask``, ``geometry``, ...) as in :func:`three_plane_figure`;
        each panel is labelled with its slice index (and world position with a geometry).
    """
    out = _figure_path(out_path, overwrite)
    fig = build_montage_figure(
        image,
        cam,
        axis,
        slices,
        n_slices,
        ncols,
        window,
        cmap,
        alpha,
        threshold,
        spacing,
        title,
        direction=direction,
        geometry=geometry,
        mask=mask,
        mask_labels=mask_labels,
        colorbar=colorbar,
        panel_size=panel_size,
    )
    return _save(fig, out, dpi, overwrite)


# ---------------------------------------------------------------------------------------- MIP
def build_mip_figure(
    image: Any,
    cam: Any,
    axes: Sequence[int] = (0, 1, 2),
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    *,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    panel_size: float = 3.5,
) -> Any:
    """The :func:`mip_figure` as a :class:`matplotlib.figure.Figure` (not saved)."""
    _matplotlib()
    axes = [int(a) for a in axes]
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise ConfigurationError(f"axes must be a subset of (0, 1, 2), got {axes}.")
    scene = _scene(
        image,
        [cam],
        mask=mask,
        mask_names=mask_labels,
        spacing=spacing,
        direction=direction,
        geometry=geometry,
    )
    heat = scene.maps[0]
    level = resolve_threshold(heat, threshold)
    gray = scene.gray(window)
    fig, grid = _frame(
        1,
        len(axes),
        panel=(panel_size, panel_size),
        title=title,
        colorbar=colorbar,
        legend=scene.labels,
        cmap=cmap,
    )
    for n, axis in enumerate(axes):
        plane = take_plane(gray, heat, scene.mask, axis, None, scene.spacing, scene.direction)
        draw_plane(
            grid[0][n],
            plane,
            cmap=cmap,
            alpha=alpha,
            threshold=level,
            labels=scene.labels,
            corner=f"MIP {plane.name}",
        )
    return fig


def mip_figure(
    image: Any,
    cam: Any,
    out_path: str | os.PathLike[str],
    axes: Sequence[int] = (0, 1, 2),
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    dpi: float = 150,
    *,
    direction: Any = None,
    geometry: Geometry | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    colorbar: bool = True,
    panel_size: float = 3.5,
    overwrite: bool = False,
) -> Path:
    """Maximum-intensity projections of the image and of the map along each of ``axes``.

    Panel ``n`` projects along ``axes[n]`` (0: onto the axial plane, 1: coronal, 2: sagittal) and
    overlays the map's MIP on the image's MIP; a ``mask`` is outlined where it lies anywhere on
    the ray (the largest label wins). Volumes are ``(D, H, W)`` (z, y, x); other arguments as in
    :func:`montage`.
    """
    out = _figure_path(out_path, overwrite)
    fig = build_mip_figure(
        image,
        cam,
        axes,
        window,
        cmap,
        alpha,
        threshold,
        spacing,
        title,
        direction=direction,
        geometry=geometry,
        mask=mask,
        mask_labels=mask_labels,
        colorbar=colorbar,
        panel_size=panel_size,
    )
    return _save(fig, out, dpi, overwrite)


# ---------------------------------------------------------------------------------------- methods side by side
def build_compare_methods_figure(
    image: Any,
    maps: Mapping[str, Any],
    *,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    voxel: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    title: str | None = None,
    direction: Any = None,
    geometry: Geometry | None = None,
    colorbar: bool = True,
    crosshair: bool = True,
    panel_size: float = 2.5,
) -> Any:
    """The :func:`compare_methods_figure` as a :class:`matplotlib.figure.Figure` (not saved)."""
    _matplotlib()
    if not maps:
        raise ConfigurationError("maps is empty: pass {method name: map (D, H, W)}.")
    names = [str(name) for name in maps]
    scene = _scene(
        image,
        list(maps.values()),
        mask=mask,
        mask_names=mask_labels,
        spacing=spacing,
        direction=direction,
        geometry=geometry,
        cam_names=names,
    )
    default = _peak(scene.maps[0])
    if scene.mask is not None and scene.labels:
        default = _mask_centre(scene.mask == scene.labels[0].value)
    point = _voxel(voxel, default, scene.image.shape)
    gray = scene.gray(window)
    fig, axes = _frame(
        len(names),
        3,
        panel=(panel_size, panel_size),
        title=title,
        colorbar=colorbar,
        legend=scene.labels,
        cmap=cmap,
        panel_titles=True,
        left=0.3,
    )
    for row, (name, heat) in enumerate(zip(names, scene.maps)):
        level = resolve_threshold(heat, threshold, what=f"map {name!r}")
        for axis in range(3):
            plane = take_plane(
                gray,
                heat,
                scene.mask,
                axis,
                point[axis],
                scene.spacing,
                scene.direction,
                scene.title(axis, point[axis], point) if row == 0 else "",
                point if crosshair else None,
            )
            draw_plane(axes[row][axis], plane, cmap=cmap, alpha=alpha, threshold=level, labels=scene.labels)
        box = axes[row][0].get_position()
        fig.text(
            0.15 / fig.get_figwidth(),
            box.y0 + box.height / 2,
            name,
            rotation=90,
            ha="center",
            va="center",
            fontsize=10,
        )
    return fig


def compare_methods_figure(
    image: Any,
    maps: Mapping[str, Any],
    out_path: str | os.PathLike[str],
    *,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    voxel: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    title: str | None = None,
    dpi: float = 150,
    direction: Any = None,
    geometry: Geometry | None = None,
    colorbar: bool = True,
    crosshair: bool = True,
    panel_size: float = 2.5,
    overwrite: bool = False,
) -> Path:
    """Several methods' maps side by side: one row per method, axial, coronal and sagittal columns.

    All rows cut the same three planes through ``voxel`` — by default the ground truth's centre
    (the voxel of the mask's first label nearest that label's centre of mass) when a ``mask`` is
    given, else the first map's peak — so the rows compare like with like. Each map gets its own default threshold (0.2 of its
    range); a number applies to all. The figure is ``(0.3 + 3 * panel_size [+ 0.9], rows *
    (panel_size + 0.3) [+ 0.4])`` inches.

    Args:
        image: grayscale volume ``(D, H, W)`` (z, y, x), or an ``(array, Geometry)`` pair.
        maps: ``{method name: map (D, H, W)}`` in row order, e.g. ``{"gradcam": m1, "layercam": m2}``.
        Other arguments as in :func:`three_plane_figure`.
    """
    out = _figure_path(out_path, overwrite)
    fig = build_compare_methods_figure(
        image,
        maps,
        mask=mask,
        mask_labels=mask_labels,
        voxel=voxel,
        spacing=spacing,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        title=title,
        direction=direction,
        geometry=geometry,
        colorbar=colorbar,
        crosshair=crosshair,
        panel_size=panel_size,
    )
    return _save(fig, out, dpi, overwrite)


# ---------------------------------------------------------------------------------------- colorbar, slices
def colorbar_figure(
    out_path: str | os.PathLike[str],
    cmap: Any = "jet",
    label: str = "CAM",
    orientation: str = "vertical",
    dpi: float = 150,
    *,
    figsize: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """A stand-alone colorbar (0 to 1) for the colormap used in the overlays, e.g. for a paper figure."""
    _matplotlib()
    from matplotlib.figure import Figure

    if orientation not in ("vertical", "horizontal"):
        raise ConfigurationError(f"orientation must be 'vertical' or 'horizontal', got {orientation!r}.")
    out = _figure_path(out_path, overwrite)
    vertical = orientation == "vertical"
    fig = Figure(figsize=figsize or ((1.0, 3.0) if vertical else (3.0, 0.9)))
    fig.patch.set_facecolor("white")
    rect = (0.2, 0.05, 0.25, 0.9) if vertical else (0.05, 0.55, 0.9, 0.3)
    add_colorbar(fig, rect, cmap, label, orientation)
    return _save(fig, out, dpi, overwrite)


def label_outline(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the pixels of a label map that touch another label or the border (4-neighbours),
    i.e. a one-pixel outline of every non-zero region."""
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(labels.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        differs |= shifted != centre
    return (labels != 0) & differs


def save_slice_pngs(
    image: Any,
    cam: Any,
    out_dir: str | os.PathLike[str],
    axis: int = 0,
    prefix: str = "slice",
    cmap: Any = "jet",
    alpha: float = 0.5,
    window: Window = None,
    threshold: float | None = None,
    *,
    overwrite: bool = False,
    mask: Any = None,
    mask_color: tuple[float, float, float] = (1.0, 0.0, 1.0),
) -> list[Path]:
    """One PNG per slice along ``axis`` (0 = z, 1 = y, 2 = x): the map blended over the image.

    ``mask`` (a mask or label map with the image's shape, e.g. the predicted segmentation) is drawn
    as a one-pixel outline of every labelled region in ``mask_color`` (magenta by default).

    Each PNG holds the slice's voxels 1:1 (no resampling for spacing, no axes or labels):
    along ``axis=0`` a ``(H, W)`` slice becomes an ``H x W`` pixel image. The cam is clipped to
    ``[0, 1]`` before the colormap (values never wrap around in 8 bits); the window and the
    default threshold (0.2 of the map's range, as in the figures) are computed once for the whole
    volume. Files are named ``{prefix}_{index:03d}.png``.

    Returns:
        the written paths, in slice order. If any of them exists and ``overwrite`` is false, nothing
        is written (:class:`~medcam3d.errors.OutputPathError`); files appear only once all rendered.
    """
    _matplotlib()
    import matplotlib.image

    from medcam3d._atomic import check_writable_dir

    axis = _axis(axis)
    scene = _scene(image, [cam])
    heat = scene.maps[0]
    if any(c in prefix for c in "/\\\0"):
        raise ConfigurationError(f"prefix must be a plain file name part, got {prefix!r}.")
    folder = check_writable_dir(out_dir)
    count = scene.image.shape[axis]
    digits = max(3, len(str(count - 1)))
    targets = [folder / f"{prefix}_{i:0{digits}d}.png" for i in range(count)]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputPathError(
            f"{len(existing)} of the slice files exist already (e.g. {existing[0]}). "
            "Pass overwrite=True (or --overwrite) to replace them, or choose another folder/prefix."
        )
    level = resolve_threshold(heat, threshold)
    gray = scene.gray(window)
    labels = None
    if mask is not None:
        labels, _ = volume_and_geometry(mask, "mask")
        if labels.shape != scene.image.shape:
            raise ConfigurationError(
                f"The mask has shape {labels.shape} but the image has shape {scene.image.shape}: "
                "pass a mask on the image's grid."
            )
    encoded = []
    for i in range(count):  # render everything first: files appear only once all slices rendered
        rgb = overlay(
            np.take(gray, i, axis=axis), np.take(heat, i, axis=axis), (0.0, 1.0), cmap, alpha, level
        )
        if labels is not None:
            rgb[label_outline(np.take(labels, i, axis=axis))] = mask_color
        buffer = io.BytesIO()
        matplotlib.image.imsave(buffer, (np.round(rgb * 255)).astype(np.uint8), format="png")
        encoded.append(buffer.getvalue())
    for data, target in zip(encoded, targets):
        write_bytes_atomic(target, data, overwrite)  # read back and compared before the rename
    logger.info("Wrote %d slice PNGs to %s", len(targets), folder)
    return targets
