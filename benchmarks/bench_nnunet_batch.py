"""Dataset throughput of ``medcam3d nnunet``: the local engine vs Ray with 1 and 2 workers, and a
re-run of the finished folder, on a folder of cases of the nnU-Net test fixture.

The fixture is the tiny real nnU-Net model the tests build (tests/nnunet/builder.py, built or
reused from the cache); every run explains the same cases (fold 0, mirroring TTA, the last decoder
stage, segmentation + one float map per case, no PNGs) through
:func:`medcam3d.nnunet.segment_and_explain`, one torch thread per worker, in one process run so
that the ratios share the machine's load. The Ray cluster is started once before the Ray runs (its
start-up is reported apart); the workers' start-up (each loads the model) is inside the timed
runs and also reported, so that both the end-to-end and the steady-state ratios can be read.

    python benchmarks/bench_nnunet_batch.py                 # 12 cases of 40³
    python benchmarks/bench_nnunet_batch.py --cases 4 --edge 32 --skip-ray

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "nnunet"))

import builder  # noqa: E402
from ray_report import report_ray  # noqa: E402

from medcam3d.batch import BatchOptions  # noqa: E402

LAYER = "decoder.stages.2"


def make_inputs(folder: Path, count: int, edge: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        channels, _ = builder.make_case(builder.SPHERE, seed=1200 + i, shape=(edge, edge, edge))
        builder.write_image(channels[0], folder / f"case{i:03d}_0000.nii.gz", builder.SPHERE.spacing)
    return folder


def timed(model: Path, inputs: Path, out: Path, options: BatchOptions) -> tuple[float, float, int]:
    """(wall seconds of the run, of which starting the workers, cases computed)."""
    from medcam3d.nnunet import segment_and_explain

    start = time.perf_counter()
    batch = segment_and_explain(
        model,
        inputs,
        out,
        LAYER,
        [1],
        folds=[0],
        use_mirroring=True,
        save_slices=False,
        device="cpu",
        keep_maps=False,
        options=options,
    )
    elapsed = time.perf_counter() - start
    assert batch.summary is not None
    if not batch.summary.ok:
        raise SystemExit(f"benchmark run failed: {batch.summary.failures}")
    return elapsed, batch.summary.startup_s, len(batch.summary.done)


def load_seconds(model: Path) -> float:
    """How long loading the model folder and making the runner takes (what a Ray worker does first)."""
    from medcam3d.nnunet import NnUNetCAM, load_predictor

    start = time.perf_counter()
    NnUNetCAM(load_predictor(model, folds=(0,)), LAYER, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--edge", type=int, default=40, help="edge of each (cubic) case in voxels")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    root = builder.cached_build()
    model = builder.SPHERE.model_folder(root / "nnUNet_results", "3d_fullres")
    results: dict[str, float | int | str] = {
        "cores": os.cpu_count() or 0,
        "cases": args.cases,
        "edge": args.edge,
    }
    results["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp, builder.nnunet_environment(root):
        folder = Path(tmp)
        inputs = make_inputs(folder / "in", args.cases, args.edge)
        local, _, _ = timed(model, inputs, folder / "local", BatchOptions(quiet=True, torch_threads=1))
        local_start = load_seconds(model)  # the local engine loads and checks the model before its run
        results.update(local_s=round(local, 2), local_startup_s=round(local_start, 2))
        print(
            f"local engine, 1 worker, 1 thread: {local:.2f} s for {args.cases} cases "
            f"({local / args.cases:.2f} s per case; model load {local_start:.2f} s)"
        )
        again, _, computed = timed(model, inputs, folder / "local", BatchOptions(quiet=True))
        results.update(rerun_finished_s=round(again, 3), rerun_cases_computed=computed)
        print(f"re-run of the finished {args.cases}-case folder: {again:.3f} s, {computed} case(s) computed")
        if not args.skip_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            results["ray_cluster_start_s"] = round(time.perf_counter() - start, 2)
            print(
                f"ray.init (local cluster, 2 CPUs): {results['ray_cluster_start_s']} s (not in the runs below)"
            )
            try:
                one, one_start, _ = timed(
                    model, inputs, folder / "ray1", BatchOptions(engine="ray", workers=1, quiet=True)
                )
                two, two_start, _ = timed(
                    model, inputs, folder / "ray2", BatchOptions(engine="ray", workers=2, quiet=True)
                )
            finally:
                ray.shutdown()
            report_ray(results, local, local_start, (one, one_start), (two, two_start))
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
