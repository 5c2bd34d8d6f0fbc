"""``medcam3d explain``: CAMs of any model on any scan, from the command line.

A thin adapter: the flags become :class:`~medcam3d.explain.ExplainSettings`, a
:class:`~medcam3d.models.ModelSource` and :class:`~medcam3d.batch.BatchOptions` (the batch flags of
:func:`medcam3d.batch.add_batch_arguments`), and :func:`~medcam3d.explain.explain_run` does every
check and the run; the command prints the batch summary and exits with its code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from medcam3d.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _window(text: str) -> str | tuple[float, float]:
    if "," in text:
        low, _, high = text.partition(",")
        try:
            return float(low), float(high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--window LOW,HIGH needs two numbers, got {text!r}") from exc
    return text


def _target_class(text: str) -> int:
    if text.lower() in ("predicted", "pred", "argmax"):
        return -1
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--target-class takes class indices or 'predicted', got {text!r}"
        ) from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of ``medcam3d explain``."""
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "-i", "--input", nargs="+", metavar="PATH", help="a folder of scans, scan files, or a DICOM folder"
    )
    io.add_argument("-o", "--output", metavar="FOLDER", help="output folder (created if missing)")
    io.add_argument(
        "--output-format",
        default="nifti",
        choices=["nifti", "input", "nii", "mha", "nrrd"],
        help="maps as .nii.gz (default), in the input's format, or .nii/.mha/.nrrd",
    )
    io.add_argument("--figures", action="store_true", help="a three-plane PNG per map")
    io.add_argument("--viewer", action="store_true", help="an HTML viewer page per case")
    io.add_argument(
        "--no-segmentation", action="store_true", help="segmenters: do not write the predicted label map"
    )
    io.add_argument("--no-progress", action="store_true", help="hide progress bars (as --quiet)")

    model = p.add_argument_group(
        "model (one of: --bundle, --model [+ --checkpoint], --checkpoint --trust-checkpoint)"
    )
    model.add_argument(
        "--bundle", metavar="FOLDER", help="a local MONAI bundle folder (configs/, models/model.pt)"
    )
    model.add_argument(
        "--model", metavar="MODULE:FACTORY", help="package.module:factory (or file.py:factory)"
    )
    model.add_argument(
        "--model-kwargs", metavar="JSON", default=None, help="keyword arguments of the factory, JSON"
    )
    model.add_argument(
        "--checkpoint", metavar="FILE", help="state dict (torch.load weights_only=True) or pickled module"
    )
    model.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a pickled whole module: unpickling runs code from the file, use only files you trust",
    )
    model.add_argument("-device", "--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")

    pre = p.add_argument_group("preprocessing (for --model / --checkpoint; bundles bring their own)")
    pre.add_argument(
        "--orientation", metavar="CODE", help="reorient first, e.g. RAS or LPS (where axes x, y, z point)"
    )
    pre.add_argument(
        "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resample to this spacing (mm)"
    )
    pre.add_argument(
        "--window", type=_window, metavar="PRESET|LOW,HIGH", help="CT window (brain, lung, ...) -> [0, 1]"
    )
    pre.add_argument(
        "--zscore", action="store_true", help="subtract the mean, divide by the standard deviation"
    )
    pre.add_argument("--zscore-nonzero", action="store_true", help="z-score over non-zero voxels (brain MRI)")
    pre.add_argument(
        "--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"), help="clip to percentiles -> [0, 1]"
    )
    pre.add_argument(
        "--input-size", type=int, nargs="+", metavar="N", help="centre crop / zero pad to this size"
    )
    pre.add_argument("--patch-size", type=int, nargs="+", metavar="N", help="sliding window of this size")
    pre.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    pre.add_argument("--no-gaussian", action="store_true", help="uniform instead of Gaussian patch weights")
    pre.add_argument(
        "--mirror", action="store_true", help="mirroring test-time augmentation (sliding window)"
    )
    pre.add_argument(
        "--axis-order",
        default="zyx",
        choices=["zyx", "xyz"],
        help="tensor axes the network expects: zyx (read_image/SimpleITK order, default) or xyz (MONAI LoadImage)",
    )

    cam = p.add_argument_group("CAM")
    cam.add_argument(
        "--method", nargs="+", default=["gradcam"], help="method name(s), see `medcam3d methods`"
    )
    cam.add_argument(
        "--target-layer", nargs="+", metavar="NAME", help="layer name(s); default: the suggestion"
    )
    cam.add_argument(
        "--target-class",
        type=_target_class,
        nargs="+",
        metavar="K",
        help="class index(es) or 'predicted' (default: predicted for classifiers, 1 for segmenters)",
    )
    cam.add_argument(
        "--target",
        default="auto",
        choices=["auto", "class", "prediction", "channel", "mask"],
        help="segmenters: prediction (the class's predicted voxels, default), channel (whole channel), mask",
    )
    cam.add_argument(
        "--target-mask", metavar="PATH", help="mask file, or folder with <case>.nii.gz (--target mask)"
    )
    cam.add_argument(
        "--normalize", default="volume", choices=["volume", "none"], help="min-max per map, or raw"
    )
    cam.add_argument("--output-index", default="0", help="element of a tuple/dict output holding the logits")
    cam.add_argument(
        "--list-layers", action="store_true", help="print the layers at the input/patch size and exit"
    )
    from medcam3d.batch import add_batch_arguments

    add_batch_arguments(p)  # --overwrite --continue_prediction --engine --workers ... --quiet


def register(subparsers: Any) -> None:
    """Add the ``explain`` sub-command to ``medcam3d``."""
    p = subparsers.add_parser(
        "explain",
        help="CAMs of any 3D model (MONAI bundle, factory + checkpoint) on a folder of scans",
        description="Class activation maps for a folder, a file list or one scan, written in each scan's exact "
        "geometry with a JSON provenance sidecar. See docs/explain.md.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _output_index(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ExplainSettings` the flags describe."""
    from medcam3d.explain.settings import ExplainSettings

    target = args.target
    if args.target_mask and target == "auto":
        target = "mask"
    return ExplainSettings(
        output_dir=Path(args.output or "."),
        methods=tuple(args.method),
        target_layers=tuple(args.target_layer) if args.target_layer else None,
        target_classes=tuple(args.target_class) if args.target_class else None,
        target=target,
        normalize=args.normalize,
        output_index=_output_index(args.output_index),
        orientation=args.orientation,
        spacing=tuple(args.spacing) if args.spacing else None,
        window=args.window,
        zscore=args.zscore or args.zscore_nonzero,
        zscore_nonzero=args.zscore_nonzero,
        percentiles=tuple(args.percentiles) if args.percentiles else None,
        input_size=tuple(args.input_size) if args.input_size else None,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        overlap=args.overlap,
        gaussian=not args.no_gaussian,
        mirror=args.mirror,
        axis_order=args.axis_order,
        output_format=args.output_format,
        figures=args.figures,
        viewer=args.viewer,
        save_segmentation=not args.no_segmentation,
        overwrite=args.overwrite,
        progress=not (args.no_progress or args.quiet),
    )


def _list_layers(args: argparse.Namespace, source: Any, settings: Any) -> int:
    import torch

    from medcam3d.explain.settings import check_settings
    from medcam3d.models.loading import load_model
    from medcam3d.utils.find_layers import format_layers, list_layers, suggest_target_layers

    settings = check_settings(settings)
    loaded = load_model(source, device=args.device)
    size = settings.patch_size or settings.input_size
    if size is None and loaded.bundle is not None:
        size = loaded.bundle.roi_size
    if size is None:
        raise ConfigurationError(
            "--list-layers needs --input-size or --patch-size (the size the network sees)."
        )
    x = torch.zeros((1, loaded.in_channels or 1, *size), device=loaded.device)
    from medcam3d.explain.runner import _probe_forward

    _probe_forward(loaded.network, x, "size", settings.output_index)
    infos = list_layers(loaded.network, x, output_index=settings.output_index)
    try:
        marks = {s.name: s.reason for s in suggest_target_layers(loaded.network, x, settings.output_index)}
    except Exception:  # noqa: BLE001 - no suggestion is not an error for a listing
        marks = {}
    sys.stdout.write(
        f"Layers of {type(loaded.network).__name__} for an input of {tuple(x.shape)} "
        f"(output_index={settings.output_index!r}; * = suggested):\n{format_layers(infos, mark=marks)}\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the command; the exit code is the batch summary's: 1 if any case failed (the others are
    still done), else 0."""
    from medcam3d.batch import format_summary, options_from_args
    from medcam3d.explain.folder import explain_run
    from medcam3d.models.loading import model_source

    options = options_from_args(args, quiet=bool(args.quiet or args.no_progress))
    source = model_source(
        bundle=args.bundle,
        factory=args.model,
        model_kwargs=args.model_kwargs,
        checkpoint=args.checkpoint,
        trust_checkpoint=args.trust_checkpoint,
    )
    settings = settings_from_args(args)
    if args.list_layers:
        return _list_layers(args, source, settings)
    missing = [
        flag for flag, value in (("-i/--input", args.input), ("-o/--output", args.output)) if not value
    ]
    if missing:
        raise ConfigurationError(f"Missing required argument(s): {', '.join(missing)}.")
    outcome = explain_run(
        args.input, args.output, source, settings, masks=args.target_mask, device=args.device, options=options
    )
    maps = sum(len(r.maps) for r in outcome.results if r.ok)
    text = format_summary(outcome.summary)
    first, _, rest = text.partition("\n")
    sys.stdout.write(f"{first}; {maps} map(s)\n")
    if rest:  # the failed cases, on stderr
        sys.stderr.write(rest + "\n")
    return outcome.summary.exit_code
