"""A self-contained interactive HTML viewer: the scan with the map as a colour overlay.

The page embeds the NiiVue WebGL2 viewer (``assets/niivue/niivue.umd.js``, BSD-2-Clause, version
in ``assets/niivue/VERSION.json``; refresh it with ``scripts/build_viewer_bundle.sh``) and both
volumes as base64 gzipped NIfTI, so it opens offline from a file, an e-mail or a lab wiki:
nothing is fetched from the network (a Content-Security-Policy forbids it). It shows three planes,
slice sliders (and mouse-wheel scrolling), opacity and threshold sliders, a colorbar and the image
and map values under the crosshair.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import atomic_path
from medcam3d.errors import ConfigurationError, GeometryError, InputFileError, OutputPathError, require_extra

__all__ = ["write_viewer", "viewer_html", "bundled_niivue_version", "ASSETS"]

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


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


def _load(source: Any, what: str) -> tuple[np.ndarray, Any, str]:
    """``(array (z, y, x), Geometry | None, display name)`` from a path, ``(array, Geometry)`` or an array."""
    from medcam3d.io.geometry import Geometry

    if isinstance(source, (str, os.PathLike)):
        from medcam3d.io import read_image

        array, geometry = read_image(source)
        return array, geometry, Path(source).name
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], Geometry):
        array = np.asarray(source[0].detach().cpu().numpy() if hasattr(source[0], "detach") else source[0])
        while array.ndim > 3 and array.shape[0] == 1:
            array = array[0]
        return array, source[1], f"{what} array"
    if hasattr(source, "dataobj") or type(source).__module__.startswith("SimpleITK"):  # nibabel/SimpleITK
        from medcam3d.io import read_image

        array, geometry = read_image(source)
        return array, geometry, f"{what} ({type(source).__name__})"
    if hasattr(source, "detach") or isinstance(source, np.ndarray):
        array = np.asarray(source.detach().cpu().numpy() if hasattr(source, "detach") else source)
        while array.ndim > 3 and array.shape[0] == 1:
            array = array[0]
        return array, None, f"{what} array"
    raise ConfigurationError(
        f"The {what} must be a file path, an (array, Geometry) pair, a SimpleITK or nibabel image, or an array; "
        f"got {type(source).__name__}."
    )


def _nifti_base64(array_zyx: np.ndarray, affine: np.ndarray) -> str:
    nib: Any = require_extra("nibabel", "io", "embedding volumes in the HTML viewer")
    data = np.ascontiguousarray(np.transpose(array_zyx, (2, 1, 0)))  # NIfTI arrays are (x, y, z)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
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
) -> str:
    """The viewer page as a string; see :func:`write_viewer` for the arguments."""
    from medcam3d.io.geometry import Geometry
    from medcam3d.viz.figures import window_limits

    image_array, image_geometry, default_image_name = _load(image, "image")
    cam_array, cam_geometry, default_map_name = _load(cam, "map")
    if image_array.ndim != 3:
        raise GeometryError(
            f"The image must be a volume (D, H, W) in (z, y, x) order, got shape {image_array.shape}."
        )
    if cam_array.ndim != 3:
        raise GeometryError(
            f"The map must be a volume (D, H, W) in (z, y, x) order, got shape {cam_array.shape}."
        )
    if image_geometry is None:
        image_geometry = Geometry(shape=image_array.shape)
    if image_array.shape != image_geometry.shape:
        raise GeometryError(
            f"The image array {image_array.shape} does not match its geometry {image_geometry.shape}."
        )
    if cam_geometry is None:
        if cam_array.shape != image_array.shape:
            raise GeometryError(
                f"The map has shape {cam_array.shape} (z, y, x) but the image has {image_array.shape}; give the map "
                "as (array, Geometry) or bring it onto the image grid with medcam3d.io.map_to_original."
            )
        cam_geometry = image_geometry
    if cam_array.shape != cam_geometry.shape:
        raise GeometryError(
            f"The map array {cam_array.shape} does not match its geometry {cam_geometry.shape}."
        )
    cam_array = np.nan_to_num(cam_array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if not 0.0 <= opacity <= 1.0:
        raise ConfigurationError(f"opacity must be within [0, 1], got {opacity}.")
    if colormap not in _NIIVUE_COLORMAPS:
        raise ConfigurationError(
            f"Unknown viewer colormap {colormap!r}; use one of {sorted(_NIIVUE_COLORMAPS)}."
        )

    finite_image = np.nan_to_num(image_array.astype(np.float32))
    low, high = window_limits(finite_image, window)
    map_min, map_max = float(cam_array.min()), float(cam_array.max())
    if map_max <= map_min:
        map_max = map_min + 1.0
    if threshold is None:
        threshold = map_min + 0.1 * (map_max - map_min)
    # the map's peak, as an image voxel (x, y, z index)
    peak_zyx = np.unravel_index(int(np.argmax(cam_array)), cam_array.shape)
    peak_world = cam_geometry.index_to_world(peak_zyx)
    peak_image = np.clip(
        np.round(image_geometry.world_to_index(peak_world)), 0, np.array(image_array.shape) - 1
    )
    payload = {
        "imageName": image_name or default_image_name,
        "mapName": map_name or default_map_name,
        "image": _nifti_base64(_display_array(image_array), image_geometry.affine),
        "map": _nifti_base64(cam_array, cam_geometry.affine),
        "window": [float(low), float(high) if high > low else float(low) + 1.0],
        "colormap": colormap,
        "opacity": float(opacity),
        "threshold": float(threshold),
        "mapMin": map_min,
        "mapMax": map_max,
        "shapeXYZ": list(image_geometry.size_xyz),
        "mapShapeXYZ": list(cam_geometry.size_xyz),
        "imageAffine": image_geometry.affine.tolist(),
        "imageInverse": np.linalg.inv(image_geometry.affine).tolist(),
        "mapInverse": np.linalg.inv(cam_geometry.affine).tolist(),
        "peakXYZ": [int(v) for v in peak_image[::-1]],
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


_NIIVUE_COLORMAPS = frozenset(
    "jet hot warm red redyell plasma viridis inferno magma turbo cool winter gray green blue"
    " bone copper hsv cividis thermal electric_blue gold orange violet".split()
)


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
) -> Path:
    """Write one self-contained HTML file showing ``image`` with ``cam`` as a colour overlay.

    Args:
        image: the scan: a file path (NIfTI, MHA, NRRD, DICOM folder — anything
            :func:`medcam3d.io.read_image` reads), an ``(array, Geometry)`` pair with the array
            ``(D, H, W)`` in (z, y, x) order, or a bare ``(D, H, W)`` array (1 mm voxels).
        cam: the map, in the same forms. A bare array must have the image's shape; a map with
            its own geometry (e.g. a file) is placed in world coordinates by the viewer.
        out_html: the ``.html`` file to write (atomically).
        title: page title (escaped; any text is safe).
        overwrite: replace an existing file (default: refuse with :class:`~medcam3d.errors.OutputPathError`).
        window: initial grayscale window, as in :func:`medcam3d.viz.window_image` (CT preset name,
            ``"mri"`` percentiles, ``(low, high)``); it can be changed in the page by right-dragging.
        colormap: NiiVue colormap of the overlay (``jet``, ``hot``, ``warm``, ``plasma``, ``viridis``...).
        opacity: initial overlay opacity in [0, 1].
        threshold: initial threshold; map values below it are transparent (default: 10 % of the range).
        image_name, map_name: names shown in the page (default: the file names).

    Returns:
        ``Path(out_html)``. The page needs a browser with WebGL2; opened, it fetches nothing.
    """
    out = Path(out_html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise OutputPathError(
            f"The viewer is an HTML page: give a file name ending in .html, not {out.name}."
        )
    if out.exists() and not overwrite:
        raise OutputPathError(
            f"Output file {out} exists. Pass overwrite=True (or --overwrite) to replace it."
        )
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
    )
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("Wrote viewer %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
