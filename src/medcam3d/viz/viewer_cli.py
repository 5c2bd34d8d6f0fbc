"""``medcam3d view IMAGE MAP [MAP ...] -o viewer.html``: write the self-contained HTML viewer.

Only argparse is imported at module level; SimpleITK, nibabel and the viewer are imported when
the command runs.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``view`` sub-command to the ``medcam3d`` parser."""
    p = subparsers.add_parser(
        "view",
        help="write a self-contained HTML viewer of a scan with one or several maps overlaid",
        description=(
            "Write one HTML file that shows IMAGE with MAP as a colour overlay (three planes, slice and "
            "opacity/threshold sliders, colorbar, values under the cursor). Several maps give a method selector "
            "(the scan is embedded once); --mask adds the ground truth as an outline. The page embeds the NiiVue "
            "viewer and the volumes, so it opens offline in any browser with WebGL2."
        ),
    )
    p.add_argument("image", help="the scan: NIfTI, MHA/MHD, NRRD file or a DICOM folder")
    p.add_argument(
        "map",
        nargs="+",
        help="the map(s) (same formats), e.g. written by medcam3d.io.write_map; one per method",
    )
    p.add_argument("-o", "--output", required=True, help="HTML file to write, e.g. viewer.html")
    p.add_argument("--title", default="medcam3d", help="page title (default: medcam3d)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument(
        "--window",
        default=None,
        help="grayscale window: a CT preset (brain, lung, abdomen, bone, ...), 'mri' (percentiles, the default) "
        "or LOW,HIGH (write --window=-100,300 when LOW is negative)",
    )
    p.add_argument(
        "--series", default=None, help="Series Instance UID when IMAGE is a DICOM folder with several series"
    )
    p.add_argument(
        "--colormap", default="jet", help="overlay colormap (jet, hot, warm, plasma, viridis, ...)"
    )
    p.add_argument("--opacity", type=float, default=0.6, help="initial overlay opacity, 0..1 (default 0.6)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="initial threshold, a map value (default: 0.2 of each map's range above its minimum)",
    )
    p.add_argument("--mask", default=None, help="ground truth (mask or label map file) shown as an outline")
    p.add_argument(
        "--mask-style", choices=("outline", "fill"), default="outline", help="how the ground truth is drawn"
    )
    p.add_argument(
        "--max-voxels",
        type=int,
        default=None,
        help="voxels per embedded volume above which it is embedded downsampled (default 16777216 = 256^3); "
        "0 embeds full resolution",
    )
    p.set_defaults(func=run)


def _window(text: str | None) -> Any:
    if text is None:
        return None
    if "," in text:
        from medcam3d.errors import ConfigurationError

        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError as exc:
            raise ConfigurationError(f"--window LOW,HIGH needs two numbers, got {text!r}.") from exc
        return (low, high)
    return text


def _map_names(paths: list[str]) -> list[str]:
    """Display names of the maps: file names without ``.nii.gz`` etc., made unique."""
    from pathlib import Path

    names: list[str] = []
    for path in paths:
        name = Path(path).name
        for ending in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
            if name.lower().endswith(ending):
                name = name[: -len(ending)]
                break
        base, k = name, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    """Run ``medcam3d view``; returns the exit code."""
    from pathlib import Path

    from medcam3d.errors import ConfigurationError
    from medcam3d.viz.viewer import DEFAULT_MAX_VOXELS, write_viewer

    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ConfigurationError(
            f"--threshold must be a finite map value, got {args.threshold}; leave it out for the default "
            "(0.2 of the map's range)."
        )
    if not 0.0 <= args.opacity <= 1.0:
        raise ConfigurationError(f"--opacity must be within 0..1, got {args.opacity}.")
    if args.max_voxels is not None and args.max_voxels < 0:
        raise ConfigurationError(
            f"--max-voxels must be 0 (no limit) or a positive number, got {args.max_voxels}."
        )
    max_voxels = DEFAULT_MAX_VOXELS if args.max_voxels is None else (args.max_voxels or None)
    image: Any = args.image
    if args.series is not None:
        from medcam3d.io import read_image

        image = read_image(args.image, series_uid=args.series)
    maps: Any = args.map[0] if len(args.map) == 1 else dict(zip(_map_names(args.map), args.map))
    out = write_viewer(
        image,
        maps,
        args.output,
        title=args.title,
        overwrite=args.overwrite,
        window=_window(args.window),
        colormap=args.colormap,
        opacity=args.opacity,
        threshold=args.threshold,
        image_name=Path(args.image).name
        if args.series is None
        else f"{Path(args.image).name} ({args.series})",
        mask=args.mask,
        mask_style=args.mask_style,
        max_voxels=max_voxels,
    )
    logger.info("Open %s in a browser (it needs no network).", out)
    return 0
