"""``medcam3d nnunet``: segment and explain with a trained nnU-Net v2 model.

Accepts every flag of the ``nnunetv2_cam`` command with the same spelling and meaning, plus a
few of its own (``--target``, ``--masks``, ``-prev_stage_predictions``, ``--no-progress``) and the
batch layer's (``--overwrite``, ``--continue_prediction``, ``--engine ray``, ``--workers`` …:
resume, Ray; see docs/scale.md).
nnunetv2 is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
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
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle checkpoints that the safe loader (torch.load weights_only=True) refuses: this runs code "
        "from the files, use it only for model folders you trust",
    )
    from medcam3d.batch import add_batch_arguments

    # --overwrite --continue_prediction --engine --ray-address --workers --gpus-per-worker
    # --cpus-per-worker --torch-threads --verify-hashes --quiet (docs/scale.md)
    add_batch_arguments(p)


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


def parse_folds(values: Sequence[str]) -> list[int | str]:
    """``-f 0 1 all`` → ``[0, 1, "all"]``; anything else raises :class:`ConfigurationError`."""
    folds: list[int | str] = []
    for value in values:
        text = str(value).strip()
        if text == "all":
            folds.append("all")
        elif text.isdigit():
            folds.append(int(text))
        else:
            raise ConfigurationError(
                f"-f takes fold numbers or 'all' (e.g. -f 0 1 2 3 4, or -f all), got {value!r}."
            )
    if not folds:
        raise ConfigurationError("-f needs at least one fold (e.g. -f 0).")
    return folds


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code (1 if any case failed, the others still done).

    A thin adapter: the flags become the arguments of :func:`medcam3d.nnunet.segment_and_explain`,
    which does every check and runs the cases through the batch layer; prints the batch summary
    (done / skipped / failed, the failures on stderr).
    """
    if args.list_methods:
        _print_methods()
        return 0
    if not args.m:
        raise ConfigurationError("-m (the trained model folder) is required.")
    from medcam3d.nnunet.batch import segment_and_explain
    from medcam3d.nnunet.layers import layer_table
    from medcam3d.nnunet.loading import load_predictor, resolve_device

    folds = parse_folds(args.f)
    if args.list_layers:
        predictor = load_predictor(
            args.m,
            folds=folds,
            checkpoint_name=args.chk,
            device=resolve_device(args.device),
            verbose=args.verbose,
            trust_checkpoint=args.trust_checkpoint,
        )
        sys.stdout.write(layer_table(predictor))
        return 0
    missing = [
        flag
        for flag, value in (("-i", args.i), ("-o", args.o), ("--target-layer", args.target_layer))
        if not value
    ]
    if missing:
        raise ConfigurationError(f"Missing required argument(s): {', '.join(missing)}.")
    from medcam3d.batch import format_summary, options_from_args

    options = options_from_args(args, quiet=bool(args.quiet or args.no_progress))
    batch = segment_and_explain(
        args.m,
        args.i,
        args.o,
        args.target_layer,
        args.target_class,
        args.method,
        target=args.target,
        cam_type=args.cam_type,
        mask_files=args.masks,
        prev_stage_predictions=args.prev_stage_predictions,
        pool_size=args.pool_size,
        pool_mode=args.pool_mode,
        save_slices=not args.no_save_slices,
        save_numpy=args.save_numpy,
        tile_step_size=args.step_size,
        use_mirroring=not args.disable_tta,
        folds=folds,
        checkpoint_name=args.chk,
        device=args.device,
        continue_on_error=True,  # report a failing case, go on with the others
        progress=not options.quiet,
        verbose=args.verbose,
        trust_checkpoint=args.trust_checkpoint,
        keep_maps=False,  # memory bounded over any number of cases: the files are the result
        options=options,
    )
    assert batch.summary is not None  # an output folder was given
    text = format_summary(batch.summary)
    first, _, rest = text.partition("\n")
    sys.stdout.write(first + "\n")
    if rest:  # the failed cases, on stderr
        sys.stderr.write(rest + "\n")
    return batch.summary.exit_code


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
