"""``medcam3d nnunet``: segment and explain with a trained nnU-Net v2 model.

Accepts every flag of the ``nnunetv2_cam`` command with the same spelling and meaning, plus a
few of its own (``--target``, ``--masks``, ``-prev_stage_predictions``, ``--no-progress``).
nnunetv2 is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcam3d.errors import ConfigurationError, MedCAMError

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``nnunetv2_cam`` flags (same spelling, same meaning) and ours."""
    p.add_argument("-i", type=str, help="input folder (or one file) named <case>_0000<ending>, <case>_0001…")
    p.add_argument("-o", type=str, help="output folder (created if missing)")
    p.add_argument("-m", type=str, help="trained model folder (holds plans.json, dataset.json, fold_X/)")
    p.add_argument(
        "-f",
        nargs="+",
        type=str,
        default=["0", "1", "2", "3", "4"],
        help="folds to ensemble (default: 0 1 2 3 4, as nnUNetv2_predict)",
    )
    p.add_argument(
        "-chk", type=str, default="checkpoint_final.pth", help="checkpoint name (default: %(default)s)"
    )
    p.add_argument("--target-layer", type=str, nargs="+", help="target layer name(s); see --list-layers")
    p.add_argument(
        "--target-class",
        type=int,
        nargs="+",
        default=[1],
        help="target class index or indices (default: 1); one map per class",
    )
    p.add_argument(
        "--method", type=str, default="gradcam", help="CAM method (default: gradcam); see --list-methods"
    )
    p.add_argument(
        "--cam-type",
        type=str,
        default="3d",
        choices=["2d", "3d"],
        help="'3d' normalises over the volume (default), '2d' per axial slice",
    )
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument(
        "-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch"
    )
    p.add_argument(
        "-device",
        type=str,
        default="cuda",
        choices=["cuda", "cpu", "mps"],
        help="device (default: cuda, falling back to cpu with a warning)",
    )
    p.add_argument("--verbose", action="store_true", help="more messages")
    p.add_argument(
        "--list-layers",
        action="store_true",
        help="print the layers with their feature-map size at the patch size (needs only -m) and exit",
    )
    p.add_argument("--list-methods", action="store_true", help="print the CAM methods and exit")
    p.add_argument("--no-save-slices", action="store_true", help="do not write PNG overlays per slice")
    p.add_argument(
        "--save-numpy", action="store_true", help="also write each map as <case>_<method>_class<k>.npy"
    )
    p.add_argument("--pool-size", type=int, default=None, help="Seg-XRes-CAM gradient pooling size")
    p.add_argument(
        "--pool-mode", type=str, default="max", choices=["max", "mean"], help="Seg-XRes-CAM pooling"
    )
    # ours
    p.add_argument(
        "--target",
        type=str,
        default="prediction",
        choices=["prediction", "channel", "mask"],
        help="'prediction': class logit over the voxels each patch predicts as the class (Seg-Grad-CAM, "
        "default); 'channel': the whole class channel; 'mask': the voxels of --masks files",
    )
    p.add_argument(
        "--masks",
        type=str,
        default=None,
        help="folder with one mask per case named <case><ending> (for --target mask)",
    )
    p.add_argument(
        "-prev_stage_predictions",
        type=str,
        default=None,
        help="previous-stage segmentations (cascade), as nnUNetv2_predict",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def register(subparsers: Any) -> None:
    """Add the ``nnunet`` sub-command to ``medcam3d``."""
    p = subparsers.add_parser(
        "nnunet",
        help="segment and explain with a trained nnU-Net v2 model (nnunetv2_cam compatible)",
        description="Segmentation and CAMs from one forward pass per (patch, fold, mirror) of a trained nnU-Net "
        "v2 model; maps written with the input's geometry.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medcam3d-nnunet", description="CAMs for trained nnU-Net v2 models.")
    add_arguments(p)
    return p


def _print_methods() -> None:
    from medcam3d.methods.registry import method_table

    rows = [(m.name, "yes" if m.uses_gradients else "no", m.description) for m in method_table()]
    width = max(len(r[0]) for r in rows)
    out = [f"{'name'.ljust(width)}  gradients  description"]
    out += [f"{name.ljust(width)}  {grads.ljust(9)}  {desc}" for name, grads, desc in rows]
    sys.stdout.write("\n".join(out) + "\n")


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA is not available: falling back to the CPU.")
        return "cpu"
    if name == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS is not available: falling back to the CPU.")
        return "cpu"
    return name


def _print_layers(predictor: Any) -> None:
    import torch

    from medcam3d.nnunet.predictor import suggested_layers
    from medcam3d.utils.find_layers import list_layers

    network = getattr(predictor.network, "_orig_mod", predictor.network)
    patch = tuple(int(s) for s in predictor.configuration_manager.patch_size)
    channels = next(m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)).in_channels
    infos = list_layers(network, (1, channels, *patch))
    tree_order = {name: i for i, (name, _) in enumerate(network.named_modules())}
    infos = sorted(infos, key=lambda info: tree_order.get(info.name, len(tree_order)))
    marks = suggested_layers(network)
    width = max(2 * i.name.count(".") + len(i.name) for i in infos)
    lines = [
        f"Layers of {type(network).__name__} at patch size {patch} (channels, feature-map size; * = suggested):"
    ]
    for info in infos:
        shape = "x".join(str(s) for s in info.spatial_shape) if info.output_shape else "-"
        chans = str(info.output_shape[1]) if info.output_shape and len(info.output_shape) > 1 else "-"
        mark = f"  * {marks[info.name]}" if info.name in marks else ""
        label = "  " * info.name.count(".") + info.name
        lines.append(f"{label.ljust(width)}  {info.type:<22} {chans:>5} ch  {shape}{mark}")
    lines.append(
        "In-place activations (LeakyReLU(inplace=True)) are best tapped through their block's output."
    )
    sys.stdout.write("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code (non-zero if any case failed)."""
    if args.list_methods:
        _print_methods()
        return 0
    if not args.m:
        raise ConfigurationError("-m (the trained model folder) is required.")
    from medcam3d.nnunet.files import check_map_writer, check_readable, group_input_files
    from medcam3d.nnunet.predictor import (
        NnUNetCAM,
        _check_output_folder,
        _match_masks,
        _match_prev_stage,
        load_predictor,
        previous_stage_of,
    )

    folds = [f if f == "all" else int(f) for f in args.f]
    device = _device(args.device)
    if args.list_layers:
        predictor = load_predictor(
            args.m, folds=folds, checkpoint_name=args.chk, device=device, verbose=args.verbose
        )
        _print_layers(predictor)
        return 0
    missing = [
        flag
        for flag, value in (("-i", args.i), ("-o", args.o), ("--target-layer", args.target_layer))
        if not value
    ]
    if missing:
        raise ConfigurationError(f"Missing required argument(s): {', '.join(missing)}.")
    if args.target == "mask" and not args.masks:
        raise ConfigurationError("--target mask needs --masks FOLDER (one <case><ending> mask per case).")
    previous = previous_stage_of(args.m)
    if previous is not None and not args.prev_stage_predictions:  # refused before loading any checkpoint
        raise ConfigurationError(
            f"{Path(args.m).name} is a cascade stage (previous stage: {previous}): pass -prev_stage_predictions "
            f"FOLDER with the {previous} model's segmentations of these cases (e.g. from nnUNetv2_predict)."
        )
    predictor = load_predictor(
        args.m,
        folds=folds,
        checkpoint_name=args.chk,
        device=device,
        tile_step_size=args.step_size,
        use_mirroring=not args.disable_tta,
        verbose=args.verbose,
    )
    method_kwargs: dict[str, Any] = {}
    if args.pool_size is not None or args.method.lower() == "segxrescam":
        method_kwargs = {"pool_size": args.pool_size, "pool_mode": args.pool_mode}
    runner = NnUNetCAM(
        predictor,
        args.target_layer,
        method=args.method,
        target_classes=args.target_class,
        target=args.target,
        cam_type=args.cam_type,
        method_kwargs=method_kwargs,
        progress=not args.no_progress,
    )
    cases = group_input_files(args.i, runner.file_ending, runner.num_channels)
    check_readable([f for c in cases for f in c.files])
    check_map_writer(predictor.plans_manager.image_reader_writer_class)
    masks = _match_masks(cases, args.masks, runner.file_ending) if args.target == "mask" else {}
    if runner.cascaded and not args.prev_stage_predictions:
        raise ConfigurationError(
            f"This configuration is a cascade stage (previous stage: "
            f"{predictor.configuration_manager.previous_stage_name}): pass -prev_stage_predictions FOLDER with the "
            "previous stage's segmentations."
        )
    prev = (
        _match_prev_stage(cases, args.prev_stage_predictions, runner.file_ending) if runner.cascaded else {}
    )
    out = Path(args.o)
    _check_output_folder(out, cases, runner, args.save_numpy)
    if not args.no_save_slices:
        from medcam3d.errors import require_extra

        require_extra("matplotlib", "viz", "PNG overlays (or pass --no-save-slices)")
    from tqdm.auto import tqdm

    failed: list[tuple[str, str]] = []
    for case in tqdm(cases, desc="cases", disable=args.no_progress):
        try:
            result = runner.run_case(
                case,
                out,
                mask_file=masks.get(case.identifier),
                prev_stage_file=prev.get(case.identifier),
                save_slices=not args.no_save_slices,
                save_numpy=args.save_numpy,
            )
            if args.verbose:
                logger.info("%s: wrote %d files", case.identifier, len(result.files))
        except Exception as exc:  # report the case, go on with the others
            failed.append((case.identifier, f"{type(exc).__name__}: {exc}"))
            logger.error("Case %s failed: %s: %s", case.identifier, type(exc).__name__, exc)
    done = len(cases) - len(failed)
    sys.stdout.write(f"{done} of {len(cases)} case(s) done; outputs in {out}\n")
    if failed:
        sys.stderr.write("Failed cases:\n" + "".join(f"  {c}: {why}\n" for c, why in failed))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``medcam3d-nnunet``), same flags as ``medcam3d nnunet``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MedCAMError as exc:
        sys.stderr.write(f"medcam3d nnunet: error: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
