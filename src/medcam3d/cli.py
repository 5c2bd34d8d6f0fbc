"""The ``medcam3d`` command.

Sub-commands live in their own modules and are registered lazily, so ``medcam3d --help``
works without the optional extras. Each module provides ``register(subparsers)``, which adds
its parser and sets ``func`` (``args -> int`` exit code) as the default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from medcam3d.errors import MedCAMError

# (module providing register(subparsers)); the order is the order shown in --help.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "medcam3d.demo.cli",
    "medcam3d.nnunet.cli",
    "medcam3d.explain.cli",
    "medcam3d.viz.viewer_cli",
    "medcam3d.methods_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from medcam3d import __version__

    parser = argparse.ArgumentParser(
        prog="medcam3d",
        description="Class Activation Maps for 3D (and 2D) medical-imaging networks.",
    )
    parser.add_argument("--version", action="version", version=f"medcam3d {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("medcam3d"):
                continue  # sub-command not part of this build
            raise
        module.register(subparsers)
    _register_evaluate(subparsers)
    return parser


def _register_evaluate(subparsers: Any) -> None:
    """``medcam3d evaluate``: a thin adapter over :func:`medcam3d.metrics.evaluate.evaluate_folder`."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a folder of maps against a folder of ground-truth masks (CSV, JSON summary, box plots)",
        description=(
            "Pair the maps <case>_<method>_class<k><ending> of MAPS_DIR (as 'medcam3d nnunet' names them) with "
            "the masks / label maps <case><ending> of MASKS_DIR (class k = label k) and score every map: "
            "pointing game, energy, IoU/Dice, AUROC, average precision, centre-of-mass distance. Writes "
            "evaluation.csv (one row per case x method x class), evaluation_summary.json (mean, median, IQR "
            "per method and class) and evaluation.png (box plots) into OUT."
        ),
    )
    p.add_argument(
        "maps_dir", metavar="MAPS_DIR", help="folder of maps <case>_<method>_class<k>.nii.gz (.mha, .nrrd)"
    )
    p.add_argument(
        "masks_dir", metavar="MASKS_DIR", help="folder of masks or label maps <case>.nii.gz (.mha, .nrrd)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    p.add_argument(
        "--tolerance", type=float, default=0.0, metavar="MM", help="pointing-game tolerance (default 0)"
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="map value for IoU/Dice at a threshold (default 0.5)"
    )
    p.add_argument(
        "--top-percent",
        type=float,
        default=5.0,
        help="share of voxels for IoU/Dice at the top %% (default 5)",
    )
    p.add_argument(
        "--resample", action="store_true", help="compare maps off their mask's grid in world coordinates"
    )
    p.add_argument("--ignore-extra-masks", action="store_true", help="skip masks that no map refers to")
    p.add_argument("--no-figure", action="store_true", help="do not write evaluation.png")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from medcam3d.metrics.evaluate import evaluate_folder

    result = evaluate_folder(
        args.maps_dir,
        args.masks_dir,
        args.output,
        tolerance_mm=args.tolerance,
        threshold=args.threshold,
        top_percent=args.top_percent,
        resample=args.resample,
        ignore_extra_masks=args.ignore_extra_masks,
        figure=not args.no_figure,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    lines = [
        f"{'method':<14}{'class':>5}{'cases':>7}{'pointing':>10}{'energy':>8}{'Dice otsu':>10}{'AUROC':>7}  (median)"
    ]
    for group in result.summary["groups"]:
        scores = group["scores"]
        cells = [scores[k]["median"] for k in ("pointing_game", "energy", "dice_otsu", "auroc")]
        text = ["-" if v is None else f"{v:.3f}" for v in cells]
        lines.append(
            f"{group['method']:<14}{group['class']:>5}{group['cases']:>7}{text[0]:>10}{text[1]:>8}{text[2]:>10}{text[3]:>7}"
        )
    written = [p for p in (result.csv_path, result.summary_path, result.figure_path) if p is not None]
    lines.append("wrote " + ", ".join(str(p) for p in written))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except MedCAMError as exc:
        sys.stderr.write(f"medcam3d: error: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
