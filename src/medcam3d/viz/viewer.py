"""A self-contained interactive HTML viewer: the scan with one or several maps as colour overlays.

The page embeds the NiiVue WebGL2 viewer (``assets/niivue/niivue.umd.js``, BSD-2-Clause, version
in ``assets/niivue/VERSION.json``; refresh it with ``scripts/build_viewer_bundle.sh``) and the
volumes as base64 gzipped NIfTI, so it opens offline from a file, an e-mail or a lab wiki:
nothing is fetched from the network (a Content-Security-Policy forbids it). It shows three planes
(oriented as :mod:`medcam3d.viz.figures` draws them), slice sliders (and mouse-wheel scrolling),
opacity and threshold sliders, a colorbar, a method selector when several maps are given, the
ground truth as a label outline, and the values under the crosshair. The scan is embedded once
however many maps there are.

Volumes above ``max_voxels`` (default :data:`DEFAULT_MAX_VOXELS`) are embedded at a lower
resolution (block means; nearest voxel for the ground truth) with a geometry that keeps them in
place in world space; a warning says so. Pass ``max_voxels=None`` for the full resolution.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import check_output_file, write_bytes_atomic
from medcam3d.errors import ConfigurationError, GeometryError, InputFileError, OutputPathError, require_extra
from medcam3d.io.geometry import Geometry
from medcam3d.viz._volumes import describe_extent, overlaps
from medcam3d.viz.overlay import DEFAULT_THRESHOLD
from medcam3d.viz.overlay import mask_labels as labels_of
from medcam3d.viz.windowing import window_limits

__all__ = [
    "write_viewer",
    "viewer_html",
    "bundled_niivue_version",
    "ASSETS",
    "DEFAULT_MAX_VOXELS",
    "downsample",
]

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")

#: Voxels per embedded volume above which the viewer embeds a downsampled copy (256**3 = 16.8 M).
#: Pages then stay below about 150 MB, which Chromium and Firefox open.
DEFAULT_MAX_VOXELS = 256**3

_NIIVUE_COLORMAPS = frozenset(
    "jet hot warm red redyell plasma viridis inferno magma turbo cool winter gray green blue"
    " bone copper hsv cividis thermal electric_blue gold orange violet".split()
)


@lru_cache(maxsize=1)
def _niivue_bundle() -> str:
    path = ASSETS / "niivue" / "niivue.umd.js"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # pragma: no cover - broken installation
        raise InputFileError(
            f"The bundled viewer script {path} is missing; reinstall medcam3d or run scripts/build_viewer_bundle.sh."
        ) from exc
    # never let the bundle close its own <script> element
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.I).replace("<!--", "<\\!--")


def bundled_niivue_version() -> str:
    """Version of the NiiVue bundle embedded in viewer pages (from ``assets/niivue/VERSION.json``)."""
    meta = json.loads((ASSETS / "niivue" / "VERSION.json").read_text(encoding="utf-8"))
    return str(meta["version"])


# ---------------------------------------------------------------------------------------- inputs
def _squeeze(array: Any) -> np.ndarray:
    out = np.asarray(array.detach().cpu().numpy() if hasattr(array, "detach") else array)
    while out.ndim > 3 and out.shape[0] == 1:
        out = out[0]
    return out


def _load(source: Any, what: str) -> tuple[np.ndarray, Geometry | None, str]:
    """``(array (z, y, x), Geometry | None, display name)`` from a path, ``(array, Geometry)`` or an array."""
    if isinstance(source, (str, os.PathLike)):
        from medcam3d.io import read_image

        array, geometry = read_image(source)
        return array, geometry, Path(source).name
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], Geometry):
        return _squeeze(source[0]), source[1], f"{what} array"
    if hasattr(source, "dataobj") or type(source).__module__.startswith("SimpleITK"):  # nibabel/SimpleITK
        from medcam3d.io import read_image

        array, geometry = read_image(source)
        return array, geometry, f"{what} ({type(source).__name__})"
    if hasattr(source, "detach") or isinstance(source, np.ndarray):
        return _squeeze(source), None, f"{what} array"
    raise ConfigurationError(
        f"The {what} must be a file path, an (array, Geometry) pair, a SimpleITK or nibabel image, or an array; "
        f"got {type(source).__name__}."
    )


def _placed(source: Any, what: str, image_geometry: Geometry) -> tuple[np.ndarray, Geometry, str]:
    """A volume with its geometry, checked against the scan: a bare array must have the scan's shape."""
    array, geometry, name = _load(source, what)
    if array.ndim != 3:
        raise GeometryError(
            f"The {what} must be a volume (D, H, W) in (z, y, x) order, got shape {array.shape}."
        )
    if geometry is None:
        if array.shape != image_geometry.shape:
            raise GeometryError(
                f"The {what} has shape {array.shape} (z, y, x) but the image has {image_geometry.shape}; give it "
                "as (array, Geometry) or bring it onto the image grid with medcam3d.io.map_to_original."
            )
        geometry = image_geometry
    if array.shape != geometry.shape:
        raise GeometryError(f"The {what} array {array.shape} does not match its geometry {geometry.shape}.")
    if not overlaps(geometry, image_geometry):
        raise GeometryError(
            f"The {what} does not overlap the scan in world space: the {what} spans {describe_extent(geometry)}, "
            f"the scan {describe_extent(image_geometry)}. The page would show no overlay. Check the {what}'s "
            "geometry (origin, direction; e.g. written without the scan's header) or bring it onto the scan with "
            "medcam3d.io.map_to_original / resample_to_reference."
        )
    return array, geometry, name


# ---------------------------------------------------------------------------------------- size budget
def _factors(shape: tuple[int, ...], spacing_zyx: tuple[float, ...], max_voxels: int) -> tuple[int, int, int]:
    """Smallest integer steps (z, y, x) that bring the volume under ``max_voxels``, finest axis first."""
    factors = [1, 1, 1]

    def size() -> int:
        return math.prod(math.ceil(n / f) for n, f in zip(shape, factors))

    while size() > max_voxels:
        candidates = [a for a in range(3) if math.ceil(shape[a] / factors[a]) > 1]
        axis = min(candidates, key=lambda a: (spacing_zyx[a] * factors[a], -shape[a] / factors[a]))
        factors[axis] += 1
    return factors[0], factors[1], factors[2]


def downsample(
    array: np.ndarray, geometry: Geometry, max_voxels: int | None, labels: bool = False
) -> tuple[np.ndarray, Geometry, tuple[int, int, int]]:
    """A copy of ``array`` (``(D, H, W)`` z, y, x) with at most ``max_voxels`` voxels, and its geometry.

    Intensities and maps are averaged over blocks of ``f_z x f_y x f_x`` voxels (the last block
    along an axis repeats the edge voxel); label maps (``labels=True``) take one voxel per block.
    The returned geometry places every new voxel at the world position of the centre of what it
    stands for, so the copy overlays the original in world space. The steps grow on the axis with
    the finest spacing first. Returns ``(array, geometry, (f_z, f_y, f_x))``; ``(1, 1, 1)`` (the
    array itself) when it is within budget or ``max_voxels`` is ``None``.
    """
    if max_voxels is None or array.size <= max_voxels:
        return array, geometry, (1, 1, 1)
    factors = _factors(array.shape, geometry.spacing_zyx, int(max_voxels))
    if labels:
        offset = [(f - 1) // 2 for f in factors]
        out = array[offset[0] :: factors[0], offset[1] :: factors[1], offset[2] :: factors[2]]
        centre = [float(o) for o in offset]
    else:
        padded_shape = [math.ceil(n / f) * f for n, f in zip(array.shape, factors)]
        pad = [(0, p - n) for p, n in zip(padded_shape, array.shape)]
        padded = np.pad(array.astype(np.float32), pad, mode="edge") if any(p for _, p in pad) else array
        blocks = padded.reshape(
            padded_shape[0] // factors[0],
            factors[0],
            padded_shape[1] // factors[1],
            factors[1],
            -1,
            factors[2],
        )
        out = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
        if array.dtype.kind in "iu":
            info = np.iinfo(array.dtype)
            out = np.clip(np.round(out), info.min, info.max).astype(array.dtype)
        centre = [(f - 1) / 2.0 for f in factors]
    fz, fy, fx = factors
    sx, sy, sz = geometry.spacing
    new = Geometry(
        shape=out.shape,
        spacing=(sx * fx, sy * fy, sz * fz),
        origin=tuple(geometry.index_to_world(centre)),
        direction=geometry.direction,
    )
    return np.ascontiguousarray(out), new, factors


def _budget(
    array: np.ndarray, geometry: Geometry, max_voxels: int | None, what: str, labels: bool = False
) -> tuple[np.ndarray, Geometry, bool]:
    """The volume to embed, its geometry, and whether it was downsampled (with a logged warning)."""
    out, new, factors = downsample(array, geometry, max_voxels, labels)
    reduced = factors != (1, 1, 1)
    if reduced:
        logger.warning(
            "The %s has %.1f M voxels %s, above the viewer's budget of max_voxels=%d: the page shows it at %s "
            "(every %d x %d x %d voxels (z, y, x) %s). For the full resolution pass max_voxels=None "
            "(medcam3d view --max-voxels 0) or crop the volume first; pages above a few hundred MB may not open.",
            what,
            array.size / 1e6,
            array.shape,
            max_voxels,
            out.shape,
            *factors,
            "one voxel" if labels else "averaged",
        )
    return out, new, reduced


# ---------------------------------------------------------------------------------------- encoding
def _nifti_base64(array_zyx: np.ndarray, affine: np.ndarray, intent_label: bool = False) -> str:
    nib: Any = require_extra("nibabel", "io", "embedding volumes in the HTML viewer")
    data = np.ascontiguousarray(np.transpose(array_zyx, (2, 1, 0)))  # NIfTI arrays are (x, y, z)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if intent_label:
        image.header.set_intent("label")
    raw = image.to_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def _display_array(array: np.ndarray) -> np.ndarray:
    """Keep small integer types (smaller pages); everything else becomes float32."""
    if array.dtype in (np.uint8, np.int8, np.int16, np.uint16):
        return array
    return array.astype(np.float32)


def _json_for_script(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element whatever the strings in it contain."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _grid_entry(geometry: Geometry) -> dict[str, Any]:
    return {
        "affine": geometry.affine.tolist(),
        "inverse": np.linalg.inv(geometry.affine).tolist(),
        "shapeXYZ": list(geometry.size_xyz),
    }


@dataclass
class _Map:
    name: str
    array: np.ndarray
    geometry: Geometry


def _maps(cam: Any, map_name: str | None, image_geometry: Geometry) -> list[_Map]:
    sources = dict(cam) if isinstance(cam, Mapping) else {None: cam}
    if not sources:
        raise ConfigurationError("No map given: pass a map, or {method name: map} for several.")
    out = []
    for key, source in sources.items():
        what = "map" if key is None else f"map {key!r}"
        array, geometry, default = _placed(source, what, image_geometry)
        name = (map_name or default) if key is None else str(key)
        array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        out.append(_Map(name, array, geometry))
    return out


# ---------------------------------------------------------------------------------------- the page
def viewer_html(
    image: Any,
    cam: Any,
    title: str = "medcam3d",
    *,
    window: Any = None,
    colormap: str = "jet",
    opacity: float = 0.6,
    threshold: float | None = None,
    image_name: str | None = None,
    map_name: str | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    mask_style: str = "outline",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> str:
    """The viewer page as a string; see :func:`write_viewer` for the arguments."""
    image_array, image_geometry, default_image_name = _load(image, "image")
    if image_array.ndim != 3:
        raise GeometryError(
            f"The image must be a volume (D, H, W) in (z, y, x) order, got shape {image_array.shape}."
        )
    if image_geometry is None:
        image_geometry = Geometry(shape=image_array.shape)
    if image_array.shape != image_geometry.shape:
        raise GeometryError(
            f"The image array {image_array.shape} does not match its geometry {image_geometry.shape}."
        )
    if not (isinstance(opacity, (int, float)) and 0.0 <= opacity <= 1.0):
        raise ConfigurationError(f"opacity must be within [0, 1], got {opacity}.")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ConfigurationError(
            f"threshold must be a finite number (a map value), got {threshold!r}; leave it out for the default "
            f"({DEFAULT_THRESHOLD:g} of the map's range)."
        )
    if colormap not in _NIIVUE_COLORMAPS:
        raise ConfigurationError(
            f"Unknown viewer colormap {colormap!r}; use one of {sorted(_NIIVUE_COLORMAPS)}."
        )
    if mask_style not in ("outline", "fill"):
        raise ConfigurationError(f"mask_style must be 'outline' or 'fill', got {mask_style!r}.")
    if max_voxels is not None and max_voxels < 1:
        raise ConfigurationError(f"max_voxels must be a positive number of voxels or None, got {max_voxels}.")
    maps = _maps(cam, map_name, image_geometry)

    finite_image = np.nan_to_num(image_array.astype(np.float32))
    low, high = window_limits(finite_image, window)
    shown_image, shown_geometry, reduced = _budget(
        _display_array(image_array), image_geometry, max_voxels, "image"
    )
    downsampled = [reduced]
    entries = []
    for m in maps:
        map_min, map_max = float(m.array.min()), float(m.array.max())
        if map_max <= map_min:
            logger.warning(
                "The map %r is constant (%g everywhere): the page shows no overlay for it.", m.name, map_min
            )
            map_max = map_min + 1.0
        level = (
            float(threshold) if threshold is not None else map_min + DEFAULT_THRESHOLD * (map_max - map_min)
        )
        peak_zyx = [float(i) for i in np.unravel_index(int(np.argmax(m.array)), m.array.shape)]
        peak_index = image_geometry.world_to_index(m.geometry.index_to_world(peak_zyx).tolist())
        if np.any(peak_index < -0.5) or np.any(peak_index > np.array(image_array.shape) - 0.5):
            logger.warning(
                "The peak of the map %r lies outside the scan; the crosshair starts at the scan's edge.",
                m.name,
            )
        peak_image = np.clip(np.round(peak_index), 0, np.array(image_array.shape) - 1).astype(int)
        shown, geometry, reduced = _budget(m.array, m.geometry, max_voxels, f"map {m.name!r}")
        downsampled.append(reduced)
        entries.append(
            {
                "name": m.name,
                "data": _nifti_base64(shown, geometry.affine),
                **_grid_entry(geometry),
                "min": map_min,
                "max": map_max,
                "threshold": level,
                "peakXYZ": [int(v) for v in peak_image[::-1]],
            }
        )
    truth = None
    if mask is not None:
        mask_array, mask_geometry, _ = _placed(mask, "mask", image_geometry)
        labels = labels_of(mask_array, mask_labels)
        if not labels:
            logger.warning("The mask is empty (all zero): the page shows no ground truth.")
        top = max((label.value for label in labels), default=1)
        dtype = np.uint8 if top < 256 else np.uint16
        label_map = np.asarray(mask_array).astype(dtype)
        label_map, mask_geometry, reduced = _budget(label_map, mask_geometry, max_voxels, "mask", labels=True)
        downsampled.append(reduced)
        truth = {  # the page draws the outline (voxels with a 6-neighbour of another label) itself
            "data": _nifti_base64(label_map, mask_geometry.affine, intent_label=True),
            **_grid_entry(mask_geometry),
            "style": mask_style,
            "labels": [
                {"value": label.value, "name": label.name, "colour": label.colour} for label in labels
            ],
        }
    payload = {
        "imageName": image_name or default_image_name,
        "image": _nifti_base64(shown_image, shown_geometry.affine),
        "imageGrid": _grid_entry(shown_geometry),
        "grid": _grid_entry(image_geometry),
        "window": [float(low), float(high) if high > low else float(low) + 1.0],
        "colormap": colormap,
        "opacity": float(opacity),
        "maps": entries,
        "mask": truth,
        "downsampled": any(downsampled),
    }
    from medcam3d import __version__

    values = {
        "TITLE": html.escape(str(title)),
        "VERSION": html.escape(str(__version__)),
        "NIIVUE_VERSION": html.escape(bundled_niivue_version()),
        "NIIVUE": _niivue_bundle(),
        "DATA": _json_for_script(payload),
    }
    template = (ASSETS / "viewer_template.html").read_text(encoding="utf-8")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def write_viewer(
    image: Any,
    cam: Any,
    out_html: str | os.PathLike[str],
    title: str = "medcam3d",
    overwrite: bool = False,
    *,
    window: Any = None,
    colormap: str = "jet",
    opacity: float = 0.6,
    threshold: float | None = None,
    image_name: str | None = None,
    map_name: str | None = None,
    mask: Any = None,
    mask_labels: Mapping[int, str] | None = None,
    mask_style: str = "outline",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> Path:
    """Write one self-contained HTML file showing ``image`` with ``cam`` as a colour overlay.

    Args:
        image: the scan: a file path (NIfTI, MHA, NRRD, DICOM folder — anything
            :func:`medcam3d.io.read_image` reads), an ``(array, Geometry)`` pair with the array
            ``(D, H, W)`` in (z, y, x) order, or a bare ``(D, H, W)`` array (1 mm voxels).
        cam: the map, in the same forms, or ``{name: map}`` for several (e.g. one per method): the
            page then has a method selector and embeds the scan only once. A bare array must have
            the image's shape; a map with its own geometry (e.g. a file) is placed in world
            coordinates, and one with no world overlap with the scan is refused
            (:class:`~medcam3d.errors.GeometryError`).
        out_html: the ``.html`` file to write (atomically; checked on disk before the final rename).
        title: page title (escaped; any text is safe).
        overwrite: replace an existing file (default: refuse with :class:`~medcam3d.errors.OutputPathError`).
        window: initial grayscale window, as in :func:`medcam3d.viz.window_image` (CT preset name,
            ``"mri"`` percentiles, ``(low, high)``); it can be changed in the page by right-dragging.
        colormap: NiiVue colormap of the overlay (``jet``, ``hot``, ``warm``, ``plasma``, ``viridis``...).
        opacity: initial overlay opacity in [0, 1].
        threshold: initial threshold, a map value (finite); map values below it are transparent.
            Default: 0.2 of each map's range above its minimum (the figures' default too).
        image_name, map_name: names shown in the page (default: the file names).
        mask: the ground truth (same forms as ``image``; boolean mask or integer label map, 0 =
            background), shown as a label layer that can be switched off.
        mask_labels: ``{label: name}`` shown in the page's legend (default ``"mask"`` / ``"label k"``).
        mask_style: initial style, ``"outline"`` (the labels' boundary voxels: those with a
            6-neighbour of another value; default) or ``"fill"``; the page can switch.
        max_voxels: per embedded volume; larger volumes are embedded downsampled (block means, the
            geometry adjusted so they stay in place in world space) with a logged warning.
            ``None`` embeds full resolution (pages of a CT-sized pair then reach hundreds of MB).

    Returns:
        ``Path(out_html)``. The page needs a browser with WebGL2; opened, it fetches nothing.

    Raises:
        OutputPathError: the name does not end in ``.html``, the file exists (without
            ``overwrite``), or it cannot be written (full disk, unwritable folder, size limit).
    """
    out = Path(out_html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise OutputPathError(
            f"The viewer is an HTML page: give a file name ending in .html, not {out.name}."
        )
    check_output_file(out, overwrite)  # early, before the heavy work; the write checks again
    page = viewer_html(
        image,
        cam,
        title,
        window=window,
        colormap=colormap,
        opacity=opacity,
        threshold=threshold,
        image_name=image_name,
        map_name=map_name,
        mask=mask,
        mask_labels=mask_labels,
        mask_style=mask_style,
        max_voxels=max_voxels,
    )
    data = page.encode("utf-8")
    # read back and compared byte for byte before the rename; a full disk, a size limit or an
    # unwritable folder is an OutputPathError
    write_bytes_atomic(out, data, overwrite, fsync=True)
    logger.info("Wrote viewer %s (%.1f MB)", out, len(data) / 1e6)
    return out
