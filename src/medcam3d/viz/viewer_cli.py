"""``medcam3d view IMAGE MAP -o viewer.html``: write the self-contained HTML viewer.

Only argparse is imported at module level; SimpleITK, nibabel and the viewer are imported when
the command runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``view`` sub-command to the ``medcam3d`` parser."""
    p = subparsers.add_parser(
        "view",
        help="write a self-contained HTML viewer of a scan with a map overlaid",
        description=(
            "Write one HTML file that shows IMAGE with MAP as a colour overlay (three planes, slice and "
            "opacity/threshold sliders, colorbar, values under the cursor). The page embeds the NiiVue "
            "viewer and both volumes, so it opens offline in any browser with WebGL2."
        ),
    )
    p.add_argument("image", help="the scan: NIfTI, MHA/MHD, NRRD file or a DICOM folder")
    p.add_argument("map", help="the map (same formats), e.g. written by medcam3d.io.write_map")
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
        "--threshold", type=float, default=None, help="initial threshold (default: 10%% of the map range)"
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


def run(args: argparse.Namespace) -> int:
    """Run ``medcam3d view``; returns the exit code."""
    from pathlib import Path

    from medcam3d.viz.viewer import write_viewer

    image: Any = args.image
    if args.series is not None:
        from medcam3d.io import read_image

        image = read_image(args.image, series_uid=args.series)
    out = write_viewer(
        image,
        args.map,
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
    )
    logger.info("Open %s in a browser (it needs no network).", out)
    return 0
