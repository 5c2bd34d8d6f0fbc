"""Faithfulness metrics: cost of deletion/insertion curves and of ROAD's N-D imputation, in one run.

(1) Deletion + insertion with ``--steps`` steps (default 50) on a light 3D classifier at
    ``--size``³ (default 96), one sample: ``medcam3d.metrics.curves.deletion_insertion`` against
    ``2 · steps`` plain batched forward passes of the same model in chunks of the same size (the
    physical limit: the curves cannot need fewer passes), and torchcam's
    ``DeletionInsertionMetric`` where it is installed (its ``update`` also computes its CAM: one
    forward and one backward pass more). The three run interleaved, round after round, so
    background load affects all alike; the table gives the median and the ratio to the limit.
(2) ROAD's noisy linear imputation of a ``--size``³ volume with half the voxels removed, for a
    random half and for a ball (what most-relevant-first removal of a smooth map looks like, the
    slow case for an iterative solver), in float64 (the default) and float32; and its peak memory
    at two sizes, each measured in a fresh subprocess (peak RSS growth), to show it is linear in
    the voxel count.

    python benchmarks/bench_metrics.py                # 96³, 50 steps, 3 rounds (about 2 minutes)
    python benchmarks/bench_metrics.py --size 64 --rounds 1
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn

from medcam3d.metrics import _common
from medcam3d.metrics.curves import deletion_insertion
from medcam3d.metrics.road import NoisyLinearImputer
from medcam3d.utils.model_targets import ClassifierOutputSoftmaxTarget


class Light3DCNN(nn.Module):
    """A light 3D classifier: three stride-2 convolutions (8-16-32 channels), global pooling, 2 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(1, 8, 3, stride=2, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv3(self.conv2(self.conv1(x)))
        return self.fc(f.mean(dim=(2, 3, 4)))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ball_keep(size: int) -> torch.Tensor:
    """Keep-mask with a centred ball of half the voxels removed."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    distance = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    return distance > distance.median()


def curves_benchmark(size: int, steps: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = Light3DCNN().eval()
    x = torch.rand(1, 1, size, size, size)
    axis = torch.linspace(-1, 1, size)
    cams = torch.exp(-(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2) * 4)[
        None
    ]
    targets = [ClassifierOutputSoftmaxTarget(1)]
    chunk = _common.chunk_size(model, x, _common.DEFAULT_BATCH_MEMORY_BYTES, None)
    rows = 2 * steps

    def limit() -> None:
        with torch.inference_mode():
            batch = x.expand(min(chunk, rows), -1, -1, -1, -1).contiguous()
            for start in range(0, rows, chunk):
                model(batch[: min(chunk, rows - start)])

    def ours() -> None:
        _common._PROBES.clear()  # include the probe pass that sizes the chunks
        deletion_insertion(model, x, cams, targets, steps=steps, progress=False)

    runs: dict[str, Callable[[], None]] = {f"{rows} batched forward passes (limit)": limit, "medcam3d": ours}
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM
        from torchcam.metrics import DeletionInsertionMetric

        def torchcam_run() -> None:
            extractor = TorchcamGradCAM(model, target_layer="conv3")
            try:
                metric = DeletionInsertionMetric(
                    extractor, partial(torch.softmax, dim=-1), steps=steps, batch_size=chunk
                )
                metric.update(x, class_idx=1)
            finally:
                extractor.remove_hooks()

        runs["torchcam DeletionInsertionMetric"] = torchcam_run
    except ImportError:
        print("torchcam is not installed: its metric is skipped")
    times: dict[str, list[float]] = {name: [] for name in runs}
    ours()  # warm-up
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    reference = statistics.median(next(iter(times.values())))
    print(
        f"\n(1) deletion + insertion, {steps} steps, one {size}³ sample, chunks of {chunk} rows, {rounds} rounds"
    )
    print(f"{'implementation':40s} {'median s':>9s} {'ratio':>7s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} {median:9.3f} {median / reference:7.2f}")


def road_benchmark(size: int, rounds: int) -> None:
    torch.manual_seed(0)
    volume = torch.rand(1, size, size, size)
    masks = {"random half": torch.rand(size, size, size) > 0.5, "ball (half)": ball_keep(size)}
    print(f"\n(2) ROAD noisy linear imputation, one {size}³ volume, 50 % of the voxels removed")
    print(f"{'removed region':16s} {'dtype':8s} {'seconds':>8s} {'CG iterations':>14s}")
    for label, keep in masks.items():
        for dtype in (torch.float64, torch.float32):
            imputer = NoisyLinearImputer(dtype=dtype)
            seconds = timed(lambda: imputer(volume, keep.float()))  # noqa: B023
            print(
                f"{label:16s} {str(dtype).removeprefix('torch.'):8s} {seconds:8.2f} {imputer.last_iterations:14d}"
            )
    sizes = (size // 2, size)
    peaks = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--road-memory-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    if min(peaks) <= 0:
        print(f"peak memory growth below the measurement's resolution at {sizes}: use a larger --size")
        return
    print(
        f"peak memory growth (random half, float64): {sizes[0]}³ {peaks[0]:.0f} MB, {sizes[1]}³ {peaks[1]:.0f} MB "
        f"-> ratio {peaks[1] / peaks[0]:.1f} for {(sizes[1] / sizes[0]) ** 3:.0f}× the voxels "
        f"({peaks[1] * 2**20 / size**3:.0f} bytes per voxel at {size}³; "
        f"{(peaks[1] - peaks[0]) * 2**20 / (size**3 - sizes[0] ** 3):.0f} bytes per added voxel)"
    )


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def road_memory_child(size: int) -> None:
    torch.manual_seed(0)
    volume = torch.rand(1, size, size, size)
    keep = (torch.rand(size, size, size) > 0.5).float()
    try:  # reset the peak-RSS mark (Linux), else fall back to the process's peak so far
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        before = _status_kib("VmRSS")
        NoisyLinearImputer()(volume, keep)
        after = _status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        NoisyLinearImputer()(volume, keep)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=("all", "curves", "road"), default="all")
    parser.add_argument("--road-memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.road_memory_child is not None:
        road_memory_child(args.road_memory_child)
        return
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    if args.part in ("all", "curves"):
        curves_benchmark(args.size, args.steps, args.rounds)
    if args.part in ("all", "road"):
        road_benchmark(args.size, args.rounds)


if __name__ == "__main__":
    main()
