"""Wall time and peak memory of ``medcam3d nnunet`` against ``nnUNetv2_predict`` (and ``nnunetv2_cam``).

Each tool runs as its own command under ``/usr/bin/time`` (wall seconds, peak resident memory
of the largest process), on the tiny real nnU-Net model of the test fixture
(``tests/nnunet/builder.py``, built or reused from the cache), with the same folds and TTA
settings, in two scenarios:

- ``fixture``: two 32-voxel-wide cases, folds 0 and 1, mirroring TTA on;
- ``large``: one ``--large``³ case (default 160³: thousands of 16³ patches), fold 0, TTA off.

medcam3d does a forward *and* a backward pass (to the target layer) per patch, nnU-Net a forward
pass only, so the ratio depends on the layer: the bottleneck needs the backward pass through the
whole decoder, the last decoder stage almost none. Both are measured.

    python benchmarks/bench_nnunet.py [--large 160] [--repeat 1] [--json out.json]

On a busy machine (``--background N``: N CPU-bound processes run during every timed command,
started before the first and stopped after the last, so both tools share the cores with the same
load; ``--background-kind torch`` makes them torch matrix products instead of a Python loop):

    python benchmarks/bench_nnunet.py --skip-large --folds 0 --layers decoder.stages.2 --background 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "nnunet"))

import builder  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MiB, return code, stderr tail) of one command."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        proc = subprocess.run(
            [time_bin, "-f", "%M", "-o", report.name, *cmd], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        text = Path(report.name).read_text().strip().splitlines()
    peak_kib = float(text[-1]) if text and text[-1].strip().isdigit() else float("nan")
    return wall, peak_kib / 1024.0, proc.returncode, (proc.stderr or "")[-600:]


def make_inputs(folder: Path, shapes: list[tuple[int, int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(shapes):
        channels, _ = builder.make_case(builder.SPHERE, seed=900 + i, shape=shape)
        builder.write_image(channels[0], folder / f"bench{i}_0000.nii.gz", builder.SPHERE.spacing)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=160, help="edge of the large case (voxels)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (the minimum is reported)")
    parser.add_argument("--layers", nargs="+", default=["encoder.stages.3", "decoder.stages.2"])
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--folds", nargs="+", default=["0", "1"], help="folds of the fixture scenario")
    parser.add_argument(
        "--background", type=int, default=0, metavar="N", help="CPU-bound processes running meanwhile"
    )
    parser.add_argument(
        "--background-kind",
        choices=["python", "torch"],
        default="python",
        help="'python': a pure Python loop per process; 'torch': torch operations on every core per process",
    )
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument(
        "--inprocess",
        type=int,
        default=0,
        metavar="EDGE",
        help="only time the prediction loops in-process on an EDGE³ preprocessed array "
        "(interleaved, minimum of --repeat runs)",
    )
    args = parser.parse_args()
    if args.inprocess:
        return inprocess(args.inprocess, args.layers, max(args.repeat, 1))

    root = builder.cached_build()
    spec = builder.SPHERE
    model = spec.model_folder(root / "nnUNet_results", "3d_fullres")
    work = Path(tempfile.mkdtemp(prefix="bench-nnunet-"))
    scenarios = [
        (
            f"fixture 2×32³, folds {' '.join(args.folds)}, TTA",
            make_inputs(work / "in_fixture", [(32, 32, 32), (32, 32, 32)]),
            list(args.folds),
            True,
        )
    ]
    if not args.skip_large:
        n = args.large
        scenarios.append(
            (f"large 1×{n}³, fold 0, no TTA", make_inputs(work / "in_large", [(n, n, n)]), ["0"], False)
        )
    peer = importlib.util.find_spec("nnunetv2_cam") is not None
    rows = []
    with builder.nnunet_environment(root) as nn_env:
        env = dict(os.environ, **nn_env, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        for title, inputs, folds, tta in scenarios:
            tools: list[tuple[str, list[str]]] = []
            reference = [
                shutil.which("nnUNetv2_predict") or "nnUNetv2_predict",
                "-i",
                str(inputs),
                "-o",
                str(work / "out_ref"),
                "-d",
                str(spec.dataset_id),
                "-c",
                "3d_fullres",
                "-tr",
                builder.TRAINER_NAME,
                "-f",
                *folds,
                "-device",
                "cpu",
                "-npp",
                "1",
                "-nps",
                "1",
                "--disable_progress_bar",
                *([] if tta else ["--disable_tta"]),
            ]
            tools.append(("nnUNetv2_predict", reference))
            for layer in args.layers:
                tools.append(
                    (
                        f"medcam3d nnunet ({layer})",
                        [
                            sys.executable,
                            "-m",
                            "medcam3d.nnunet.cli",
                            "-i",
                            str(inputs),
                            "-o",
                            str(work / "out_ours"),
                            "-m",
                            str(model),
                            "-f",
                            *folds,
                            "--target-layer",
                            layer,
                            "-device",
                            "cpu",
                            "--no-progress",
                            "--no-save-slices",
                            "--overwrite",  # every run computes (a re-run would resume: nothing to do)
                            *([] if tta else ["--disable-tta"]),
                        ],
                    )
                )
            if peer:
                tools.append(
                    (
                        "nnunetv2_cam",
                        [
                            shutil.which("nnunetv2_cam") or "nnunetv2_cam",
                            "-i",
                            str(inputs),
                            "-o",
                            str(work / "out_peer"),
                            "-m",
                            str(model),
                            "-f",
                            *folds,
                            "--target-layer",
                            args.layers[0],
                            "--cam-type",
                            "3d",
                            "-device",
                            "cpu",
                            "--no-save-slices",
                            *([] if tta else ["--disable-tta"]),
                        ],
                    )
                )
            results: dict[str, tuple[float, float, int, str]] = {}
            burners = start_background(args.background, args.background_kind)
            try:
                time.sleep(2.0 if burners else 0.0)  # let the load settle
                for _ in range(args.repeat):
                    for name, cmd in tools:
                        wall, peak, code, err = timed(cmd, env)
                        best = results.get(name)
                        if best is None or (code == 0 and wall < best[0]):
                            results[name] = (wall, peak, code, err)
            finally:
                stop_background(burners)
            base = results["nnUNetv2_predict"][0]
            for name, (wall, peak, code, err) in results.items():
                status = (
                    "ok" if code == 0 else f"failed: {err.strip().splitlines()[-1] if err.strip() else code}"
                )
                rows.append(
                    {
                        "scenario": title,
                        "tool": name,
                        "wall_s": round(wall, 2),
                        "peak_rss_mib": round(peak),
                        "ratio_to_nnunet": round(wall / base, 2) if code == 0 else None,
                        "status": status,
                    }
                )
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"torch threads default; each tool a separate command (start-up and model loading included); "
        f"{args.background} background {args.background_kind} process(es).\n"
    )
    print("| scenario | tool | wall (s) | × nnUNetv2_predict | peak RSS (MiB) | status |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        ratio = "" if r["ratio_to_nnunet"] is None else f"{r['ratio_to_nnunet']:.2f}"
        print(
            f"| {r['scenario']} | {r['tool']} | {r['wall_s']:.1f} | {ratio} | {r['peak_rss_mib']} | {r['status']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


BURNERS = {
    "python": "x = 0\nwhile True:\n    x = (x + 1) % 1000003\n",
    # another torch job: the default thread count (every core), small and large operations
    "torch": (
        "import torch\nconv = torch.nn.Conv3d(8, 8, 3, padding=1)\nx = torch.randn(1, 8, 24, 24, 24)\n"
        "a = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n    y = conv(x).sum()\n"
    ),
}


def start_background(count: int, kind: str) -> list[subprocess.Popen[bytes]]:
    """``count`` CPU-bound processes (the other jobs of a busy machine), stopped by :func:`stop_background`."""
    return [subprocess.Popen([sys.executable, "-c", BURNERS[kind]]) for _ in range(count)]


def stop_background(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def inprocess(edge: int, layers: list[str], repeat: int) -> int:
    """The loops alone: nnU-Net's ``predict_logits_from_preprocessed_data`` against ours."""
    import numpy as np
    import torch

    root = builder.cached_build()
    with builder.nnunet_environment(root):
        from medcam3d.nnunet import NnUNetCAM, load_predictor

        model = builder.SPHERE.model_folder(root / "nnUNet_results", "3d_fullres")
        print(
            f"In-process loops on a 1×{edge}³ preprocessed array, fold 0; minimum of {repeat} interleaved runs.\n"
        )
        print("| TTA | loop | wall (s) | × nnU-Net | patches × passes | logits identical |")
        print("|---|---|---:|---:|---:|---|")
        for tta in (False, True):
            predictor = load_predictor(model, folds=(0,), use_mirroring=tta)
            data = torch.randn(1, edge, edge, edge)
            runners = {layer: NnUNetCAM(predictor, layer, progress=False) for layer in layers}
            best: dict[str, float] = {}
            same: dict[str, bool] = {}
            reference = None
            for _ in range(repeat):
                start = time.perf_counter()
                reference = predictor.predict_logits_from_preprocessed_data(data).numpy()
                best["nnU-Net"] = min(best.get("nnU-Net", 1e9), time.perf_counter() - start)
                for layer, runner in runners.items():
                    start = time.perf_counter()
                    logits, _ = runner.predict_preprocessed(data)
                    best[layer] = min(best.get(layer, 1e9), time.perf_counter() - start)
                    same[layer] = bool(np.array_equal(logits, reference))
            steps = builder_steps(edge, predictor)
            passes = 8 if tta else 1
            for name, wall in best.items():
                ratio = wall / best["nnU-Net"]
                ident = "" if name == "nnU-Net" else ("yes" if same[name] else "NO")
                print(
                    f"| {'on' if tta else 'off'} | {name} | {wall:.1f} | {ratio:.2f} | {steps} × {passes} | {ident} |"
                )
    return 0


def builder_steps(edge: int, predictor: object) -> int:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    patch = predictor.configuration_manager.patch_size  # type: ignore[attr-defined]
    steps = compute_steps_for_sliding_window((edge,) * 3, patch, 0.5)
    return len(steps[0]) * len(steps[1]) * len(steps[2])


if __name__ == "__main__":
    sys.exit(main())
