"""Paper-ready figures of a map over a grayscale volume (extra ``medcam3d[viz]``: matplotlib).

All volumes are numpy arrays ``(D, H, W)`` in **(z, y, x)** order — the order of
:func:`medcam3d.io.read_image`. Maps are expected in ``[0, 1]`` (CAM methods normalise them);
values outside are clipped, never wrapped. The output format follows the file ending:
``.png`` (at ``dpi``), ``.pdf``, ``.svg`` (vector; the image panels stay raster) or ``.jpg``.
Figures are built on :class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI backend
is touched, and written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from medcam3d._atomic import atomic_path, check_writable_dir
from medcam3d.errors import ConfigurationError, InputShapeError, OutputPathError, require_extra

__all__ = [
    "CT_WINDOWS",
    "MRI_PERCENTILES",
    "Window",
    "window_image",
    "window_limits",
    "overlay",
    "orientation_labels",
    "build_three_plane_figure",
    "three_plane_figure",
    "montage",
    "mip_figure",
    "save_slice_pngs",
    "colorbar_figure",
    "FIGURE_ENDINGS",
]

logger = logging.getLogger(__name__)

#: CT display windows in Hounsfield units as ``(level, width)``.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
}

#: Default intensity percentiles for MRI (and any image without a preset): ``(low, high)``.
MRI_PERCENTILES: tuple[float, float] = (1.0, 99.0)

#: A window: ``None``/``"mri"``/``"auto"`` (percentiles), a :data:`CT_WINDOWS` name,
#: ``(low, high)`` intensities, or ``("percentile", low, high)``.
Window = Union[None, str, tuple[float, float], tuple[str, float, float]]

FIGURE_ENDINGS: tuple[str, ...] = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


# ---------------------------------------------------------------------------------------- helpers
def _matplotlib() -> Any:
    return require_extra("matplotlib", "viz", "drawing figures")


def _volume(array: Any, name: str) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    out = np.asarray(array)
    while out.ndim > 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 3:
        raise InputShapeError(
            f"{name} must be a volume (D, H, W) in (z, y, x) order, got shape {np.shape(array)}."
        )
    return out


def _pair(image: Any, cam: Any) -> tuple[np.ndarray, np.ndarray]:
    img = _volume(image, "image").astype(np.float32, copy=False)
    heat = _volume(cam, "cam").astype(np.float32, copy=False)
    if img.shape != heat.shape:
        raise InputShapeError(
            f"image {img.shape} and cam {heat.shape} must have the same shape (z, y, x); bring the map onto the "
            "image grid first (medcam3d.io.map_to_original)."
        )
    return img, np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0)


def window_limits(image: np.ndarray, window: Window = None) -> tuple[float, float]:
    """Intensity limits ``(low, high)`` that :func:`window_image` maps to black and white."""
    if window is None or (isinstance(window, str) and window.lower() in ("mri", "auto", "percentile")):
        window = ("percentile", *MRI_PERCENTILES)
    if isinstance(window, str):
        key = window.lower().replace("-", "_").replace(" ", "_")
        if key not in CT_WINDOWS:
            raise ConfigurationError(
                f"Unknown window {window!r}; use one of {sorted(CT_WINDOWS)} (CT), 'mri' (percentiles) or (low, high)."
            )
        level, width = CT_WINDOWS[key]
        return level - width / 2.0, level + width / 2.0
    values = tuple(window)
    if len(values) == 3 and values[0] == "percentile":
        finite = image[np.isfinite(image)]
        if finite.size == 0:
            return 0.0, 1.0
        low, high = np.percentile(finite, [float(values[1]), float(values[2])])  # type: ignore[arg-type]
        return float(low), float(high)
    if len(values) == 2:
        low, high = float(values[0]), float(values[1])  # type: ignore[arg-type]
        if not high > low:
            raise ConfigurationError(f"A window (low, high) needs high > low, got {window!r}.")
        return low, high
    raise ConfigurationError(f"Cannot understand window {window!r}.")


def window_image(image: Any, window: Window = None) -> np.ndarray:
    """Map intensities to ``[0, 1]`` for display (any shape; float32 out).

    Args:
        image: the grayscale image (any shape, typically ``(D, H, W)`` z, y, x).
        window: ``None``/``"mri"``: the 1st-99th intensity percentiles of the whole image
            (:data:`MRI_PERCENTILES`); a CT preset name from :data:`CT_WINDOWS` (``"brain"``,
            ``"lung"``, ``"abdomen"``, ``"bone"``, ...; level/width in HU); ``(low, high)`` explicit
            limits; or ``("percentile", 0.5, 99.5)``.
    """
    array = np.asarray(image, dtype=np.float32)
    low, high = window_limits(array, window)
    if high <= low:
        return np.zeros_like(array)
    return np.clip((np.nan_to_num(array, nan=low) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _colormap(cmap: Any) -> Any:
    mpl = _matplotlib()
    import matplotlib.colors

    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    try:
        return mpl.colormaps[cmap]
    except KeyError as exc:
        raise ConfigurationError(f"Unknown matplotlib colormap {cmap!r}.") from exc


def overlay(
    image: Any,
    cam: Any,
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
) -> np.ndarray:
    """Blend a map over a grayscale image: an RGB float array in ``[0, 1]``, shape ``image.shape + (3,)``.

    Args:
        image: grayscale image of any shape (a slice ``(H, W)`` or a volume ``(D, H, W)``).
        cam: map of the same shape; clipped to ``[0, 1]`` (never rescaled or wrapped).
        window: see :func:`window_image`; pass ``(0, 1)`` for an image already windowed.
        cmap: matplotlib colormap name or object.
        alpha: opacity of the map where it is shown (0 = invisible, 1 = opaque).
        threshold: voxels with ``cam < threshold`` show the image only.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigurationError(f"alpha must be within [0, 1], got {alpha}.")
    gray = window_image(image, window)
    heat = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != gray.shape:
        raise InputShapeError(f"image {gray.shape} and cam {heat.shape} must have the same shape.")
    colours = np.asarray(_colormap(cmap)(heat), dtype=np.float32)[..., :3]
    weight = np.where(heat >= threshold, np.float32(alpha), np.float32(0.0))[..., None]
    out: np.ndarray = (1.0 - weight) * gray[..., None] + weight * colours
    return np.clip(out, 0.0, 1.0)


_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) world direction, LPS


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


def _check_out(out_path: str | os.PathLike[str], overwrite: bool) -> Path:
    out = Path(out_path)
    if out.suffix.lower() not in FIGURE_ENDINGS:
        raise OutputPathError(f"Cannot write a figure to {out}: use one of {', '.join(FIGURE_ENDINGS)}.")
    if out.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {out} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
    return out


def _save(fig: Any, out: Path, dpi: float, overwrite: bool) -> Path:
    fmt = out.suffix.lower().lstrip(".")
    fmt = "jpeg" if fmt == "jpg" else fmt
    metadata: dict[str, Any] = {"Software": "medcam3d"} if fmt == "png" else {}
    if fmt == "svg":
        metadata = {"Date": None}
    elif fmt == "pdf":
        metadata = {"CreationDate": None, "Creator": "medcam3d"}
    with atomic_path(out, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, metadata=metadata, facecolor=fig.get_facecolor())
    logger.info("Wrote %s", out)
    return out


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ConfigurationError(f"spacing must be 3 positive values in (z, y, x) order, got {spacing!r}.")
    return values


def _peak(cam: np.ndarray) -> tuple[int, int, int]:
    if not np.any(np.isfinite(cam)):
        return tuple(s // 2 for s in cam.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.nanargmax(cam)), cam.shape))  # type: ignore[return-value]


_TOP_LETTERS = ("A", "S")  # anterior up in axial views, superior up in coronal and sagittal views
_LEFT_LETTERS = ("R", "A")  # radiological: patient's right on the viewer's left; anterior left in sagittal


def _panel(
    ax: Any,
    rgb: np.ndarray,
    aspect: float,
    row_axis: int,
    col_axis: int,
    direction: Any,
    flip_rows: bool,
    title: str,
    cross: tuple[float, float] | None = None,
) -> None:
    """Draw one slice (rows = array axis ``row_axis``, columns = ``col_axis``) with orientation labels.

    With a direction matrix the slice is shown the way radiology viewers show it, whatever the
    array order on disk: anterior (axial) or superior (coronal, sagittal) at the top, the patient's
    right on the viewer's left (axial, coronal) and anterior on the left (sagittal). Without one,
    the array is shown as stored (``flip_rows`` puts its first row at the bottom).
    """
    rows, cols = rgb.shape[:2]
    labels = None
    if direction is not None:
        low, high = orientation_labels(direction, row_axis)
        left, right = orientation_labels(direction, col_axis)
        flip_rows = high in _TOP_LETTERS and low not in _TOP_LETTERS
        flip_cols = right in _LEFT_LETTERS and left not in _LEFT_LETTERS
        top, bottom = (high, low) if flip_rows else (low, high)
        if flip_cols:
            left, right = right, left
        labels = (left, right, top, bottom)
    else:
        flip_cols = False
    shown = rgb[::-1] if flip_rows else rgb
    shown = shown[:, ::-1] if flip_cols else shown
    ax.imshow(shown, aspect=aspect, origin="upper", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    if labels is not None:
        left, right, top, bottom = labels
        style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    if cross is not None:
        row, col = cross
        row = rows - 1 - row if flip_rows else row
        col = cols - 1 - col if flip_cols else col
        ax.axhline(row, color="#00ff00", linewidth=0.5, alpha=0.6)
        ax.axvline(col, color="#00ff00", linewidth=0.5, alpha=0.6)


def _colorbar(fig: Any, rect: Sequence[float], cmap: Any, label: str, orientation: str = "vertical") -> None:
    import matplotlib.cm
    import matplotlib.colors

    cax = fig.add_axes(rect)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=_colormap(cmap))
    bar = fig.colorbar(mappable, cax=cax, orientation=orientation)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _direction(direction: Any, geometry: Any) -> Any:
    if geometry is not None and direction is None:
        return geometry.direction
    return direction if direction is not None else np.eye(3)


# ---------------------------------------------------------------------------------------- figures
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
    threshold: float = 0.0,
    direction: Any = None,
    geometry: Any = None,
    colorbar: bool = True,
    crosshair: bool = True,
    figsize: tuple[float, float] = (12.0, 4.4),
    colorbar_label: str = "CAM",
) -> Any:
    """The :func:`three_plane_figure` as a :class:`matplotlib.figure.Figure` (not saved), e.g. for notebooks."""
    _matplotlib()
    from matplotlib.figure import Figure

    img, heat = _pair(image, cam)
    if geometry is not None and spacing is None:
        spacing = geometry.spacing_zyx
    sz, sy, sx = _spacing(spacing)
    direction = _direction(direction, geometry)
    if voxel is None:
        voxel = _peak(heat)
    z, y, x = (int(v) for v in voxel)
    if not all(0 <= v < s for v, s in zip((z, y, x), img.shape)):
        raise ConfigurationError(
            f"voxel {tuple(voxel)} is outside the volume of shape {img.shape} (z, y, x)."
        )
    gray = window_image(img, window)
    fig = Figure(figsize=figsize)
    fig.patch.set_facecolor("white")
    right = 0.9 if colorbar else 0.99
    top = 0.86 if title else 0.92
    axes = fig.subplots(
        1, 3, gridspec_kw={"left": 0.01, "right": right, "bottom": 0.02, "top": top, "wspace": 0.04}
    )
    blend = {"window": (0.0, 1.0), "cmap": cmap, "alpha": alpha, "threshold": threshold}
    # axial: fixed z, rows y, columns x
    _panel(
        axes[0],
        overlay(gray[z], heat[z], **blend),
        sy / sx,
        1,
        2,
        direction,
        False,
        f"axial z={z}",
        (y, x) if crosshair else None,
    )
    # coronal: fixed y, rows z (shown bottom-up), columns x
    _panel(
        axes[1],
        overlay(gray[:, y, :], heat[:, y, :], **blend),
        sz / sx,
        0,
        2,
        direction,
        True,
        f"coronal y={y}",
        (z, x) if crosshair else None,
    )
    # sagittal: fixed x, rows z (bottom-up), columns y
    _panel(
        axes[2],
        overlay(gray[:, :, x], heat[:, :, x], **blend),
        sz / sy,
        0,
        1,
        direction,
        True,
        f"sagittal x={x}",
        (z, y) if crosshair else None,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    if colorbar:
        _colorbar(fig, (0.925, 0.12, 0.015, 0.7), cmap, colorbar_label)
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
    threshold: float = 0.0,
    direction: Any = None,
    geometry: Any = None,
    colorbar: bool = True,
    crosshair: bool = True,
    figsize: tuple[float, float] = (12.0, 4.4),
    overwrite: bool = False,
) -> Path:
    """Axial, coronal and sagittal slices through one voxel, the map overlaid, in one figure file.

    Args:
        image: grayscale volume ``(D, H, W)`` in (z, y, x) order.
        cam: map of the same shape, values in ``[0, 1]`` (clipped).
        out_path: ``.png`` (raster at ``dpi``), ``.pdf``, ``.svg`` or ``.jpg``.
        spacing: voxel size in **(z, y, x)** order (``geometry.spacing_zyx``), for the aspect ratio.
        voxel: ``(z, y, x)`` index the planes pass through; default the map's peak.
        window: see :func:`window_image` (CT preset name, ``"mri"``, ``(low, high)``).
        cmap, alpha, threshold: see :func:`overlay`.
        title: figure title.
        dpi: PNG resolution; the PNG is ``figsize * dpi`` pixels.
        direction: ITK/LPS direction matrix for the orientation letters (default identity: axial
            panel with patient Right on the image's left, Anterior at the top — radiological view).
        geometry: a :class:`medcam3d.io.Geometry`; supplies spacing and direction when those are omitted.
        colorbar, crosshair: draw a colorbar / lines through ``voxel``.
        overwrite: replace an existing file.

    Returns:
        ``Path(out_path)``.
    """
    out = _check_out(out_path, overwrite)
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
        colorbar=colorbar,
        crosshair=crosshair,
        figsize=figsize,
    )
    return _save(fig, out, dpi, overwrite)


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    cols = ncols or max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


_PLANE = {0: ("axial", 1, 2, False), 1: ("coronal", 0, 2, True), 2: ("sagittal", 0, 1, True)}


def _aspect(spacing: tuple[float, float, float], row_axis: int, col_axis: int) -> float:
    return spacing[row_axis] / spacing[col_axis]


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
    threshold: float = 0.0,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    dpi: float = 150,
    *,
    direction: Any = None,
    geometry: Any = None,
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
            inches (+0.9 inch for a colorbar, +0.4 inch for a title) at ``dpi``.
        Other arguments as in :func:`three_plane_figure`.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    out = _check_out(out_path, overwrite)
    img, heat = _pair(image, cam)
    if axis not in (0, 1, 2):
        raise ConfigurationError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis}.")
    length = img.shape[axis]
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
    nrows, cols = _grid(len(slices), ncols)
    sp = _spacing(spacing if spacing is not None or geometry is None else geometry.spacing_zyx)
    direction = _direction(direction, geometry)
    name, row_axis, col_axis, flip = _PLANE[axis]
    extra = 0.9 if colorbar else 0.0
    head = 0.4 if title else 0.0
    width, height = cols * panel_size + extra, nrows * panel_size + head
    fig = Figure(figsize=(width, height))
    fig.patch.set_facecolor("white")
    gray = window_image(img, window)
    for n, index in enumerate(slices):
        r, c = divmod(n, cols)
        rect = (
            c * panel_size / width,
            1 - (r + 1) * panel_size / height - head / height,
            panel_size / width,
            panel_size / height,
        )
        ax = fig.add_axes(rect)
        rgb = overlay(
            _slice(gray, axis, index), _slice(heat, axis, index), (0.0, 1.0), cmap, alpha, threshold
        )
        _panel(ax, rgb, _aspect(sp, row_axis, col_axis), row_axis, col_axis, direction, flip, "")
        ax.text(0.03, 0.04, f"{'zyx'[axis]}={index}", color="white", fontsize=7, transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
    if colorbar:
        _colorbar(fig, ((width - extra + 0.12) / width, 0.15, 0.12 / width, 0.7), cmap, "CAM")
    return _save(fig, out, dpi, overwrite)


def mip_figure(
    image: Any,
    cam: Any,
    out_path: str | os.PathLike[str],
    axes: Sequence[int] = (0, 1, 2),
    window: Window = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    dpi: float = 150,
    *,
    direction: Any = None,
    geometry: Any = None,
    colorbar: bool = True,
    panel_size: float = 3.5,
    overwrite: bool = False,
) -> Path:
    """Maximum-intensity projections of the image and of the map along each of ``axes``.

    Panel ``n`` projects along ``axes[n]`` (0: onto the axial plane, 1: coronal, 2: sagittal) and
    overlays the map's MIP on the image's MIP. Volumes are ``(D, H, W)`` (z, y, x); other
    arguments as in :func:`montage`.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    out = _check_out(out_path, overwrite)
    img, heat = _pair(image, cam)
    axes = [int(a) for a in axes]
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise ConfigurationError(f"axes must be a subset of (0, 1, 2), got {axes}.")
    sp = _spacing(spacing if spacing is not None or geometry is None else geometry.spacing_zyx)
    direction = _direction(direction, geometry)
    extra = 0.9 if colorbar else 0.0
    head = 0.4 if title else 0.0
    width, height = len(axes) * panel_size + extra, panel_size + head
    fig = Figure(figsize=(width, height))
    fig.patch.set_facecolor("white")
    low, high = window_limits(img, window)
    for n, axis in enumerate(axes):
        name, row_axis, col_axis, flip = _PLANE[axis]
        ax = fig.add_axes((n * panel_size / width, 0.0, panel_size / width, panel_size / height))
        rgb = overlay(img.max(axis=axis), heat.max(axis=axis), (low, high), cmap, alpha, threshold)
        _panel(ax, rgb, _aspect(sp, row_axis, col_axis), row_axis, col_axis, direction, flip, "")
        ax.text(0.03, 0.04, f"MIP {name}", color="white", fontsize=7, transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
    if colorbar:
        _colorbar(fig, ((width - extra + 0.12) / width, 0.15, 0.12 / width, 0.7), cmap, "CAM")
    return _save(fig, out, dpi, overwrite)


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
    out = _check_out(out_path, overwrite)
    vertical = orientation == "vertical"
    fig = Figure(figsize=figsize or ((1.0, 3.0) if vertical else (3.0, 0.9)))
    fig.patch.set_facecolor("white")
    rect = (0.2, 0.05, 0.25, 0.9) if vertical else (0.05, 0.55, 0.9, 0.3)
    _colorbar(fig, rect, cmap, label, orientation)
    return _save(fig, out, dpi, overwrite)


def save_slice_pngs(
    image: Any,
    cam: Any,
    out_dir: str | os.PathLike[str],
    axis: int = 0,
    prefix: str = "slice",
    cmap: Any = "jet",
    alpha: float = 0.5,
    window: Window = None,
    threshold: float = 0.0,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """One PNG per slice along ``axis`` (0 = z, 1 = y, 2 = x): the map blended over the image.

    Each PNG holds the slice's voxels 1:1 (no resampling for spacing, no axes or labels):
    along ``axis=0`` a ``(H, W)`` slice becomes an ``H x W`` pixel image. The cam is clipped to
    ``[0, 1]`` before the colormap (values never wrap around in 8 bits); the window is computed
    once for the whole volume. Files are named ``{prefix}_{index:03d}.png``.

    Returns:
        the written paths, in slice order. If any of them exists and ``overwrite`` is false, nothing
        is written (:class:`~medcam3d.errors.OutputPathError`); files appear only once all rendered.
    """
    _matplotlib()
    import matplotlib.image

    img, heat = _pair(image, cam)
    if axis not in (0, 1, 2):
        raise ConfigurationError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis}.")
    folder = check_writable_dir(out_dir)
    if any(c in prefix for c in "/\\\0"):
        raise ConfigurationError(f"prefix must be a plain file name part, got {prefix!r}.")
    count = img.shape[axis]
    digits = max(3, len(str(count - 1)))
    targets = [folder / f"{prefix}_{i:0{digits}d}.png" for i in range(count)]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputPathError(
            f"{len(existing)} of the slice files exist already (e.g. {existing[0]}). "
            "Pass overwrite=True (or --overwrite) to replace them, or choose another folder/prefix."
        )
    gray = window_image(img, window)
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}.", dir=folder))
    try:
        staged = []
        for i, target in enumerate(targets):
            rgb = overlay(_slice(gray, axis, i), _slice(heat, axis, i), (0.0, 1.0), cmap, alpha, threshold)
            tmp = staging / target.name
            matplotlib.image.imsave(tmp, (np.round(rgb * 255)).astype(np.uint8), format="png")
            staged.append(tmp)
        for tmp, target in zip(staged, targets):
            os.replace(tmp, target)
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
    logger.info("Wrote %d slice PNGs to %s", len(targets), folder)
    return targets
