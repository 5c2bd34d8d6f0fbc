"""The Ray engine's ratios, computed and printed the same way by bench_batch.py and bench_nnunet_batch.py."""

from __future__ import annotations


def report_ray(
    results: dict[str, float | int | str],
    local: float,
    local_start: float,
    one: tuple[float, float],
    two: tuple[float, float],
) -> None:
    """Add to ``results`` and print: 1 Ray worker against the local engine, 2 workers against 1,
    end to end and after the workers' start-up. ``one``/``two``: (wall s, of which start-up s)."""
    (one_s, one_start), (two_s, two_start) = one, two
    results.update(
        ray_1_worker_s=round(one_s, 2),
        ray_2_workers_s=round(two_s, 2),
        ray_1_worker_startup_s=round(one_start, 2),
        ray_2_workers_startup_s=round(two_start, 2),
        ray_1_worker_overhead=round(one_s / local, 3),
        speedup_2_vs_1_ray_workers=round(one_s / two_s, 3),
        speedup_2_ray_workers_vs_local=round(local / two_s, 3),
        ray_1_worker_overhead_after_startup=round((one_s - one_start) / (local - local_start), 3),
        speedup_2_vs_1_ray_workers_after_startup=round((one_s - one_start) / (two_s - two_start), 3),
    )
    print(
        f"ray engine, 1 worker: {one_s:.2f} s (start {one_start:.2f} s) -> {one_s / local:.3f} x the local engine"
    )
    print(
        f"ray engine, 2 workers: {two_s:.2f} s (start {two_start:.2f} s) -> {one_s / two_s:.3f} x faster than 1"
    )
    print(
        "after worker start-up: 1 Ray worker "
        f"{results['ray_1_worker_overhead_after_startup']} x local, 2 workers "
        f"{results['speedup_2_vs_1_ray_workers_after_startup']} x faster than 1"
    )
