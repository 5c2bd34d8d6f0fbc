"""Many classes from one pass: K target classes of a segmenter, batched backward vs K backward passes.

The model is nnU-Net's own ``PlainConvUNet`` (dynamic_network_architectures, the architecture of
the nnU-Net fixture), 3D, with ``K + 1`` output labels, random init, eval mode. Three ways to get
the Grad-CAM maps of K classes (the predicted region of each class, Seg-Grad-CAM) on one patch:

  (a) K separate calls: K forwards and K backwards (``cam.compute`` per class)
  (b) one forward, K backward passes (``compute_multi`` with the batched backward switched off)
  (c) one forward, one batched backward (``compute_multi``, the default)

Runs interleaved, round after round; the table reports the median seconds per K-class patch, the
ratio to (a), and the peak resident memory of each way measured in a fresh subprocess.

    python benchmarks/bench_multiclass.py               # K = 8, 64³ patch, 2 threads
    python benchmarks/bench_multiclass.py --classes 16 --size 96 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch


def build(classes: int, device: str) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    model = PlainConvUNet(
        input_channels=1,
        n_stages=5,
        features_per_stage=[16, 32, 64, 128, 160],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=3,
        strides=[1, 2, 2, 2, 2],
        n_conv_per_stage=2,
        num_classes=classes + 1,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    return model.to(device).eval()


def ways(model: torch.nn.Module, layer: str, classes: int):  # noqa: ANN201
    from medcam3d import GradCAM
    from medcam3d.utils.model_targets import SemanticSegmentationTarget

    cam = GradCAM(model, [layer])
    sets = [[SemanticSegmentationTarget(k, None)] for k in range(1, classes + 1)]

    def separate(x: torch.Tensor) -> None:
        for targets in sets:
            cam.compute(x, targets)

    def one_forward(x: torch.Tensor) -> None:
        cam.gradient_memory_bytes = 1  # one set per backward pass
        try:
            cam.compute_multi(x, sets)
        finally:
            cam.gradient_memory_bytes = 1 << 29

    def batched(x: torch.Tensor) -> None:
        cam.compute_multi(x, sets)

    return {"K calls": separate, "1 fwd + K bwd": one_forward, "1 fwd + 1 batched bwd": batched}


def peak_memory(args: argparse.Namespace, way: str) -> float:
    """Peak resident memory (MiB) of one run of ``way`` in a fresh process."""
    code = (
        "import sys, json, resource, torch, warnings; warnings.simplefilter('ignore');"
        f"sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r});"
        "import bench_multiclass as b;"
        f"torch.set_num_threads({args.threads});"
        f"m = b.build({args.classes}, {args.device!r});"
        f"x = torch.randn(1, 1, {args.size}, {args.size}, {args.size}, device={args.device!r});"
        f"f = b.ways(m, {args.layer!r}, {args.classes})[{way!r}];"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; f(x);"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layer", default="decoder.stages.3", help="default: the last decoder stage")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import warnings

    warnings.simplefilter("ignore")  # the random model predicts some classes nowhere: empty-mask warnings
    model = build(args.classes, args.device)
    x = torch.randn(1, 1, args.size, args.size, args.size, device=args.device)
    candidates = ways(model, args.layer, args.classes)
    for f in candidates.values():  # warm-up
        f(x)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, f in candidates.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            f(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    peaks = {name: peak_memory(args, name) for name in candidates} if args.device == "cpu" else {}
    print(
        f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {args.threads} threads"
    )
    print(
        f"# PlainConvUNet 3D, {args.classes + 1} labels, {args.size}³ patch, layer {args.layer}, K={args.classes}"
    )
    print(f"{'way':<24}{'median s':>10}{'vs K calls':>12}{'peak MiB':>10}")
    reference = statistics.median(times["K calls"])
    for name, values in times.items():
        median = statistics.median(values)
        peak = f"{peaks[name]:.0f}" if name in peaks else "-"
        print(f"{name:<24}{median:>10.3f}{median / reference:>11.2f}×{peak:>10}")


if __name__ == "__main__":
    main()
