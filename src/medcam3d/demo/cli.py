"""``medcam3d demo``: the whole library on a built-in example, offline, in well under a minute on a CPU.

Registered by :mod:`medcam3d.cli`. This module imports nothing heavy at its top level; torch, the
template and the network are loaded only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from medcam3d.demo.runner import DemoResult

__all__ = ["register", "run", "format_summary"]

_DEFAULT_METHODS = "gradcam,gradcam++,hirescam,layercam"
_DESCRIPTION = """\
Plant a synthetic lesion at a random position inside the brain of the MNI152 T1 template (2 mm,
shipped with medcam3d), classify the volume with a small trained 3D CNN, compute CAMs with several
methods and write them as NIfTI files on the template's grid, with a three-plane figure and an HTML
viewer per method. Prints where the lesion was, where each map peaks and whether the peak hit the
lesion (pointing game: peak inside the lesion or within --tolerance mm of it). No network access."""


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "demo",
        help="run CAMs on a built-in MNI152 brain with a planted lesion (offline, < 1 min)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default="medcam3d_demo", help="output folder (default: ./medcam3d_demo)")
    p.add_argument(
        "--methods",
        default=_DEFAULT_METHODS,
        help=f"comma-separated CAM methods (default: {_DEFAULT_METHODS}); see 'medcam3d methods'",
    )
    p.add_argument("--seed", type=int, default=None, help="seed that places the lesion (default: 1)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="MM",
        help="pointing-game tolerance in mm (default: 8, one cell of the CAM's layer)",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="target layer of the network: features (default, 8 mm cells), block2 (8 mm) or block1 (4 mm)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--no-viewer", action="store_true", help="do not write the HTML viewers")
    p.add_argument("--no-figures", action="store_true", help="do not write the three-plane PNG figures")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show medcam3d's log messages (each file written...)"
    )
    p.set_defaults(func=run)


def _fmt(values: tuple[float, ...], digits: int = 0) -> str:
    return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"


def format_summary(result: DemoResult) -> str:
    """The table ``medcam3d demo`` prints, as text."""
    lesion = result.lesion
    kind = "bright" if lesion.contrast > 0 else "dark"
    radii = "/".join(f"{r:.1f}" for r in lesion.radii_mm)
    lines = [
        "medcam3d demo: MNI152 T1 template, 2 mm, 91 x 109 x 91 voxels, synthetic lesion (seed "
        f"{result.seed})",
        f"lesion    centre voxel (z, y, x) {_fmt(tuple(float(v) for v in result.lesion_voxel))}, "
        f"MNI (x, y, z) {_fmt(result.lesion_mni)} mm; {kind} ellipsoid, radii (z/y/x) {radii} mm, "
        f"{result.lesion_voxels} voxels",
        f"network   P(lesion) = {result.probability:.3f} with the lesion "
        f"({'detected' if result.probability >= 0.5 else 'MISSED'}); "
        f"{result.probability_without_lesion:.3f} on the template without it",
        f"maps      of the lesion class, on the layer '{result.target_layer}'",
        "",
        f"{'method':<12}{'peak voxel (z, y, x)':<24}{'peak MNI (x, y, z) mm':<26}{'distance':>10}  hit",
    ]
    for m in result.methods:
        lines.append(
            f"{m.method:<12}{_fmt(tuple(float(v) for v in m.peak_voxel)):<24}{_fmt(m.peak_mni):<26}"
            f"{m.distance_mm:>7.1f} mm  {'yes' if m.hit else 'no'}"
        )
    lines += [
        "",
        f"pointing game: {result.hits}/{len(result.methods)} hit (peak inside the lesion or within "
        f"{result.tolerance_mm:g} mm of it)",
        f"outputs in {result.output_dir}/ ({result.seconds:.1f} s):",
        "  input.nii.gz, lesion_mask.nii.gz: the network's input and the true lesion (template geometry)",
    ]
    for m in result.methods:
        files = [p.name for p in (m.map_path, m.figure_path, m.viewer_path) if p is not None]
        lines.append(f"  {', '.join(files)}")
    if result.summary_path is not None:
        lines.append(f"  {result.summary_path.name}: all of the above as JSON")
    return "\n".join(lines)


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Run the demo from parsed arguments and print the summary; exit code 0."""
    from medcam3d.demo.model import TARGET_LAYER
    from medcam3d.demo.runner import DEFAULT_SEED, DEFAULT_TOLERANCE_MM, run_demo

    methods = [m for m in str(args.methods).split(",") if m.strip()]
    package_logger = logging.getLogger("medcam3d")
    previous_level = package_logger.level
    if not getattr(args, "verbose", False):
        package_logger.setLevel(logging.WARNING)  # the summary below says it all; warnings still show
    try:
        result = run_demo(
            args.output,
            methods=methods,
            seed=DEFAULT_SEED if args.seed is None else int(args.seed),
            overwrite=bool(args.overwrite),
            figures=not args.no_figures,
            viewer=not args.no_viewer,
            tolerance_mm=DEFAULT_TOLERANCE_MM if args.tolerance is None else float(args.tolerance),
            target_layer=TARGET_LAYER if args.layer is None else str(args.layer),
        )
    finally:
        package_logger.setLevel(previous_level)
    out = stream if stream is not None else sys.stdout
    out.write(format_summary(result) + "\n")
    return 0
