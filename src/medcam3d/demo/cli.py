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

_DEFAULT_METHODS = "hirescam,layercam"
_DEFAULT_REFERENCES = "gradcam,gradcam++,randomcam"
_DEFAULT_LAYERS = "block1,block2,features"
_DESCRIPTION = """\
Plant a synthetic lesion at a random position inside the brain of the MNI152 T1 template (2 mm,
shipped with medcam3d) and classify the volume with a small trained 3D CNN. Then ask "which method,
which layer?": every method (--methods and --compare-with) on every candidate layer (--layers) is
scored against the true lesion (pointing game, energy, Dice, AUROC) and by deletion/insertion
curves, and the ranking is printed. The maps of --methods, each on its best-localising layer
(--layer auto), are written as NIfTI files on the template's grid, with figures and one HTML
viewer that show the true lesion's outline. Prints where the lesion was, where each map peaks and
whether the peak lies inside the lesion or within --tolerance mm of it. No network access."""


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "demo",
        help="rank CAM methods x layers on a built-in MNI152 brain with a planted lesion, write the best maps",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default="medcam3d_demo", help="output folder (default: ./medcam3d_demo)")
    p.add_argument(
        "--methods",
        default=_DEFAULT_METHODS,
        help=f"comma-separated CAM methods whose maps are written (default: {_DEFAULT_METHODS}); "
        "see 'medcam3d methods'",
    )
    p.add_argument(
        "--compare-with",
        default=_DEFAULT_REFERENCES,
        metavar="METHODS",
        help=f"methods ranked alongside, no maps written (default: {_DEFAULT_REFERENCES}; 'none' for none)",
    )
    p.add_argument(
        "--layers",
        default=_DEFAULT_LAYERS,
        help=f"candidate layers compared with --layer auto (default: {_DEFAULT_LAYERS})",
    )
    p.add_argument(
        "--layer",
        default="auto",
        help="'auto' (default): each method on its best-localising candidate layer; or one layer for "
        "every method: features (8 mm cells), block2 (8 mm) or block1 (4 mm)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="deletion/insertion steps of the comparison (default: 5; 0 ranks by localisation only, faster)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed that places the lesion (default: 1)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="MM",
        help="pointing-game tolerance in mm (default: 8, one cell of the 'features' layer)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--no-viewer", action="store_true", help="do not write the HTML viewer")
    p.add_argument("--no-figures", action="store_true", help="do not write the PNG figures")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show medcam3d's log messages (each file written...)"
    )
    p.set_defaults(func=run)


def _fmt(values: tuple[float, ...], digits: int = 0) -> str:
    return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"


def format_summary(result: DemoResult) -> str:
    """The text ``medcam3d demo`` prints: the lesion, the ranking, the written maps."""
    lesion = result.lesion
    kind = "bright" if lesion.contrast > 0 else "dark"
    radii = "/".join(f"{r:.1f}" for r in lesion.radii_mm)
    layer_line = (
        "each method on its best-localising layer (ranking above)"
        if result.target_layer == "auto"
        else f"on the layer '{result.target_layer}'"
    )
    lines = [
        "medcam3d demo: MNI152 T1 template, 2 mm, 91 x 109 x 91 voxels, synthetic lesion (seed "
        f"{result.seed})",
        f"lesion    centre voxel (z, y, x) {_fmt(tuple(float(v) for v in result.lesion_voxel))}, "
        f"MNI (x, y, z) {_fmt(result.lesion_mni)} mm; {kind} ellipsoid, radii (z/y/x) {radii} mm, "
        f"{result.lesion_voxels} voxels",
        f"network   P(lesion) = {result.probability:.3f} with the lesion "
        f"({'detected' if result.probability >= 0.5 else 'MISSED'}); "
        f"{result.probability_without_lesion:.3f} on the template without it",
        "",
    ]
    if result.comparison is not None:
        lines += ["which method, which layer? (maps of the lesion class against the true lesion)"]
        lines += [result.comparison.table(), ""]
    lines += [
        f"maps      of the lesion class, {layer_line}",
        "",
        f"{'method':<12}{'layer':<10}{'peak voxel (z, y, x)':<24}{'peak MNI (x, y, z) mm':<26}"
        f"{'distance':>10}  peak",
    ]
    for m in result.methods:
        verdict = "inside" if m.inside else ("hit" if m.hit else "miss")
        lines.append(
            f"{m.method:<12}{m.layer:<10}{_fmt(tuple(float(v) for v in m.peak_voxel)):<24}"
            f"{_fmt(m.peak_mni):<26}{m.distance_mm:>7.1f} mm  {verdict}"
        )
    lines += [
        "",
        f"pointing game: {result.inside}/{len(result.methods)} peaks inside the lesion, {result.hits}/"
        f"{len(result.methods)} hit (inside or within {result.tolerance_mm:g} mm of it)",
        f"outputs in {result.output_dir}/ ({result.seconds:.1f} s):",
        "  input.nii.gz, lesion_mask.nii.gz: the network's input and the true lesion (template geometry)",
    ]
    for m in result.methods:
        files = [p.name for p in (m.map_path, m.figure_path) if p is not None]
        lines.append(f"  {', '.join(files)}")
    extra = [
        (result.methods_figure, "every map in three planes through the lesion"),
        (result.viewer_path, "one viewer page, a method selector, the lesion outline"),
        (result.comparison_csv, "the ranking"),
        (result.comparison_figure, "the ranking as a figure"),
        (result.summary_path, "all of the above as JSON"),
    ]
    for path, what in extra:
        if path is not None:
            lines.append(f"  {path.name}: {what}")
    return "\n".join(lines)


def _list(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else [v.strip() for v in str(text).split(",") if v.strip()]


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Run the demo from parsed arguments and print the summary; exit code 0."""
    from medcam3d.demo.runner import DEFAULT_SEED, DEFAULT_STEPS, DEFAULT_TOLERANCE_MM, run_demo

    package_logger = logging.getLogger("medcam3d")
    previous_level = package_logger.level
    if not getattr(args, "verbose", False):
        package_logger.setLevel(logging.WARNING)  # the summary below says it all; warnings still show
    try:
        result = run_demo(
            args.output,
            methods=_list(args.methods),
            seed=DEFAULT_SEED if args.seed is None else int(args.seed),
            overwrite=bool(args.overwrite),
            figures=not args.no_figures,
            viewer=not args.no_viewer,
            tolerance_mm=DEFAULT_TOLERANCE_MM if args.tolerance is None else float(args.tolerance),
            target_layer=str(args.layer),
            candidate_layers=_list(args.layers),
            reference_methods=_list(args.compare_with),
            steps=DEFAULT_STEPS if args.steps is None else int(args.steps),
        )
    finally:
        package_logger.setLevel(previous_level)
    out = stream if stream is not None else sys.stdout
    out.write(format_summary(result) + "\n")
    return 0
