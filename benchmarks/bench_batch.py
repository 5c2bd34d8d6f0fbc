"""Throughput of medcam3d.batch: local engine vs Ray with 1 and 2 workers, and a finished re-run.

Every engine runs the same cases with the same real worker (a small 3D CNN + Grad-CAM writing a
NIfTI map and an .npy per case, tests/batch/batch_helpers.py), one torch thread per worker, in one
process run, so that the ratios are measured under the same machine load. The Ray cluster is
started once before the timed runs (its start-up is reported separately); the worker (actor)
start-up, which includes loading the model, is inside the timed runs.

    python benchmarks/bench_batch.py                      # 14 cases of 64x128x128, 20-case re-run
    python benchmarks/bench_batch.py --cases 6 --shape 32 48 48 --skip-ray   # quick, local only

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "batch"))

import batch_helpers as helpers  # noqa: E402
from ray_report import report_ray  # noqa: E402

from medcam3d.batch import BatchOptions, run_batch  # noqa: E402

SETTINGS = {"method": "gradcam", "layer": "conv2", "benchmark": True}


def timed(cases, out: Path, options: BatchOptions, log: Path | None = None) -> tuple[float, float]:
    """(wall time of run_batch, of which starting the workers) in seconds."""
    factory = functools.partial(helpers.CamWorker, log=str(log) if log else None)
    start = time.perf_counter()
    summary = run_batch(cases, factory, out, SETTINGS, options)
    elapsed = time.perf_counter() - start
    if not summary.ok:
        raise SystemExit(f"benchmark run failed: {summary.failures}")
    return elapsed, summary.startup_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=14)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], help="(z, y, x) of each scan")
    parser.add_argument("--rerun-cases", type=int, default=20)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    results: dict[str, float | int | str] = {"cores": os.cpu_count() or 0, "cases": args.cases}
    results["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = helpers.make_cases(folder / "in", args.cases, shape=tuple(args.shape))  # type: ignore[arg-type]
        local, local_start = timed(cases, folder / "local", BatchOptions(quiet=True, torch_threads=1))
        results.update(local_s=round(local, 2), local_startup_s=round(local_start, 2))
        print(
            f"local engine, 1 worker, 1 thread: {local:.2f} s for {args.cases} cases ({args.cases / local:.2f} cases/s; "
            f"worker start {local_start:.2f} s)"
        )
        if not args.skip_ray:
            import ray
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(helpers)  # the helpers are not installed on the workers
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            results["ray_cluster_start_s"] = round(time.perf_counter() - start, 2)
            print(
                f"ray.init (local cluster, 2 CPUs): {results['ray_cluster_start_s']} s (not in the runs below)"
            )
            try:
                one, one_start = timed(
                    cases, folder / "ray1", BatchOptions(engine="ray", workers=1, quiet=True)
                )
                two, two_start = timed(
                    cases, folder / "ray2", BatchOptions(engine="ray", workers=2, quiet=True)
                )
            finally:
                ray.shutdown()
            report_ray(results, local, local_start, (one, one_start), (two, two_start))
        rerun_cases = helpers.make_cases(folder / "in20", args.rerun_cases, shape=tuple(args.shape))  # type: ignore[arg-type]
        timed(rerun_cases, folder / "rerun", BatchOptions(quiet=True, torch_threads=1))
        log = folder / "rerun.log"
        again, _ = timed(rerun_cases, folder / "rerun", BatchOptions(quiet=True), log=log)
        computed = len(helpers.calls(log)) if log.exists() else 0
        results.update(
            rerun_finished_s=round(again, 3), rerun_cases_computed=computed, rerun_cases=args.rerun_cases
        )
        print(
            f"re-run of a finished {args.rerun_cases}-case folder: {again:.3f} s, {computed} case(s) computed"
        )
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
