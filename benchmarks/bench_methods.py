"""Benchmark of the eigen and perturbation methods: time and peak memory, beside the peers.

    python benchmarks/bench_methods.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_methods.py --quick    # smaller repeats, skips the full-SVD reproduction

Each case runs in its own Python process, so its peak memory (``ru_maxrss``) is its own; "extra
memory" is that peak minus the process's resident memory just before the measured call (model
and input already built). Times are the best of ``--repeats`` runs after one warm-up run.

Cases:

* EigenCAM at a 24³ × 64 feature map (96³ input): the projection alone and the full call
  (forward + projection + upsampling to 96³).
* pytorch-grad-cam's EigenCAM projection cannot be imported here (it needs torchvision); its
  algorithm is a numpy full SVD of the centred ``voxels × channels`` matrix
  (``np.linalg.svd(full_matrices=True)``, which builds the ``voxels × voxels`` matrix U). The case
  ``eigen_numpy_full_svd`` runs exactly that algorithm on the same matrix size.
* ScoreCAM and AblationCAM on a 64³ input (16 channels at 16³), and torchcam's ScoreCAM with the
  same chunk size. pytorch-grad-cam's ScoreCAM and AblationCAM do not run on 5-D input: the case
  ``pgc_5d`` runs the tensor operations they apply to the activations and records the errors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(min(2, os.cpu_count() or 1))


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Extra peak memory of the first (cold) call, then the best time of ``repeats`` warm calls."""
    before = rss_bytes()
    start = time.perf_counter()
    fn()
    cold = time.perf_counter() - start
    extra = max(0, peak_bytes() - before)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times) if times else cold, "cold_seconds": cold, "extra_mb": extra / 2**20}


class EigenNet(nn.Module):
    """96³ → 24³ × 64 feature map → classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(16, 64, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


class PerturbNet(nn.Module):
    """64³ → 16³ × 16 feature map → classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


CHUNK = 16


def case_eigen_projection(repeats: int) -> dict[str, Any]:
    from medcam3d.core.projection import first_component_projection

    torch.manual_seed(0)
    acts = torch.relu(torch.randn(1, 64, 24, 24, 24))
    return measure(lambda: first_component_projection(acts), repeats)


def case_eigencam_call(repeats: int) -> dict[str, Any]:
    from medcam3d import EigenCAM

    torch.manual_seed(0)
    model = EigenNet().eval()
    x = torch.randn(1, 1, 96, 96, 96)
    cam = EigenCAM(model, [model.features], return_tensor=True)
    result = measure(lambda: cam(x), repeats)  # first: its peak memory is its own
    with torch.no_grad():
        forward = measure(lambda: model(x), repeats)
    result["forward_seconds"] = forward["seconds"]
    return result


def case_eigen_numpy_full_svd(repeats: int) -> dict[str, Any]:
    """pytorch-grad-cam 1.5.7's get_2d_projection algorithm on one 24³ × 64 sample (float32)."""
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.standard_normal((1, 64, 24, 24, 24), dtype=np.float32), 0)

    def run() -> np.ndarray:
        batch = acts.copy()
        batch[np.isnan(batch)] = 0
        out = []
        for sample in batch:
            matrix = sample.reshape(sample.shape[0], -1).transpose()
            matrix = matrix - matrix.mean(axis=0)
            _, _, vt = np.linalg.svd(matrix, full_matrices=True)
            out.append((matrix @ vt[0, :]).reshape(sample.shape[1:]))
        return np.float32(out)

    return measure(run, max(0, repeats - 2))


def perturb_setup(dead_channels: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The 64³ model; ``dead_channels`` of the target layer's 16 channels made constant (zero after
    the ReLU, as dead channels of trained ReLU networks are)."""
    torch.manual_seed(0)
    model = PerturbNet().eval()
    if dead_channels:
        with torch.no_grad():
            model.features[4].bias[:dead_channels] = -1e4
    return model, torch.randn(1, 1, 64, 64, 64)


def case_scorecam_ours_dead8(repeats: int) -> dict[str, Any]:
    from medcam3d import ScoreCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model, x = perturb_setup(dead_channels=8)
    cam = ScoreCAM(model, [model.features[5]], batch_size=CHUNK, progress=False, return_tensor=True)
    return measure(lambda: cam(x, [ClassifierOutputTarget(0)]), repeats)


def case_scorecam_torchcam_dead8(repeats: int) -> dict[str, Any]:
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    model, x = perturb_setup(dead_channels=8)
    cam = TorchcamScoreCAM(model, "features.5", batch_size=CHUNK, input_shape=(1, 64, 64, 64))

    def run() -> Any:
        with torch.no_grad():
            model(x)
        return cam(class_idx=0)

    try:
        return measure(run, repeats)
    finally:
        cam.remove_hooks()


def case_scorecam_ours(repeats: int) -> dict[str, Any]:
    from medcam3d import ScoreCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model, x = perturb_setup()
    cam = ScoreCAM(model, [model.features[4]], batch_size=CHUNK, progress=False, return_tensor=True)
    return measure(lambda: cam(x, [ClassifierOutputTarget(0)]), repeats)


def case_scorecam_ours_budget(repeats: int) -> dict[str, Any]:
    from medcam3d import ScoreCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model, x = perturb_setup()
    cam = ScoreCAM(model, [model.features[4]], progress=False, return_tensor=True)  # 1 GiB budget
    result = measure(lambda: cam(x, [ClassifierOutputTarget(0)]), repeats)
    result["chunk"] = cam.chunk_size(x)
    return result


def case_scorecam_torchcam(repeats: int) -> dict[str, Any]:
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    model, x = perturb_setup()
    cam = TorchcamScoreCAM(model, "features.4", batch_size=CHUNK, input_shape=(1, 64, 64, 64))

    def run() -> Any:
        with torch.no_grad():
            model(x)
        return cam(class_idx=0)

    try:
        return measure(run, repeats)
    finally:
        cam.remove_hooks()


def case_scorecam_ours_top8(repeats: int) -> dict[str, Any]:
    from medcam3d import ScoreCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model, x = perturb_setup()
    cam = ScoreCAM(
        model, [model.features[4]], batch_size=CHUNK, top_k_channels=8, progress=False, return_tensor=True
    )
    return measure(lambda: cam(x, [ClassifierOutputTarget(0)]), repeats)


def case_scorecam_paired(repeats: int) -> dict[str, Any]:
    """Ours and torchcam's ScoreCAM alternated in one process (robust to load from other processes
    on a shared machine): median times and their ratio, for all 16 channels and with 8 dead."""
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    from medcam3d import ScoreCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    result: dict[str, Any] = {}
    for dead, layer in ((0, 4), (8, 5)):
        model, x = perturb_setup(dead_channels=dead)
        ours = ScoreCAM(model, [model.features[layer]], batch_size=CHUNK, progress=False, return_tensor=True)
        theirs = TorchcamScoreCAM(model, f"features.{layer}", batch_size=CHUNK, input_shape=(1, 64, 64, 64))

        def run_theirs(model: nn.Module = model, x: torch.Tensor = x, theirs: Any = theirs) -> Any:
            with torch.no_grad():
                model(x)
            return theirs(class_idx=0)

        times: dict[str, list[float]] = {"ours": [], "torchcam": []}
        for _ in range(max(3, repeats) + 1):
            for name, fn in (
                ("ours", lambda ours=ours, x=x: ours(x, [ClassifierOutputTarget(0)])),
                ("torchcam", run_theirs),
            ):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        theirs.remove_hooks()
        medians = {name: float(np.median(values[1:])) for name, values in times.items()}
        result[f"dead{dead}"] = {**medians, "speedup": medians["torchcam"] / medians["ours"]}
    return result


def case_ablationcam_ours(repeats: int) -> dict[str, Any]:
    from medcam3d import AblationCAM
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    model, x = perturb_setup()
    cam = AblationCAM(model, [model.features[4]], batch_size=CHUNK, progress=False, return_tensor=True)
    return measure(lambda: cam(x, [ClassifierOutputTarget(0)]), repeats)


def case_pgc_5d(repeats: int) -> dict[str, Any]:
    """The 2D-only operations pytorch-grad-cam 1.5.7 applies in ScoreCAM and AblationCAM, on 5-D tensors."""
    acts = torch.rand(1, 16, 16, 16, 16)
    errors = {}
    try:  # ScoreCAM: torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])(activations)
        torch.nn.UpsamplingBilinear2d(size=(64, 64))(acts)
    except Exception as exc:  # noqa: BLE001
        errors["scorecam"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    try:  # AblationLayer.set_next_batch: activations[i, :, :, :].clone().unsqueeze(0).repeat(n, 1, 1, 1)
        acts[0, :, :, :].clone().unsqueeze(0).repeat(CHUNK, 1, 1, 1)
    except Exception as exc:  # noqa: BLE001
        errors["ablationcam"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return {"errors": errors}


CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    "eigen_projection": case_eigen_projection,
    "eigencam_call": case_eigencam_call,
    "eigen_numpy_full_svd": case_eigen_numpy_full_svd,
    "scorecam_ours": case_scorecam_ours,
    "scorecam_ours_budget": case_scorecam_ours_budget,
    "scorecam_ours_top8": case_scorecam_ours_top8,
    "scorecam_torchcam": case_scorecam_torchcam,
    "scorecam_ours_dead8": case_scorecam_ours_dead8,
    "scorecam_torchcam_dead8": case_scorecam_torchcam_dead8,
    "scorecam_paired": case_scorecam_paired,
    "ablationcam_ours": case_ablationcam_ours,
    "pgc_5d": case_pgc_5d,
}


def run_case(name: str, repeats: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", name, "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict[str, Any]]) -> str:
    def cell(name: str, key: str, fmt: str = "{:.3f}") -> str:
        value = results.get(name, {}).get(key)
        return (
            fmt.format(value)
            if isinstance(value, (int, float))
            else results.get(name, {}).get("error", "n/a")
        )

    lines = [
        "| case | time (s) | extra peak memory (MB) |",
        "|---|---|---|",
        f"| EigenCAM projection, 24³ × 64 (ours, torch eigh of the K×K Gram) | {cell('eigen_projection', 'seconds')} | {cell('eigen_projection', 'extra_mb', '{:.0f}')} |",
        f"| EigenCAM full call, 96³ input (ours; forward alone {cell('eigencam_call', 'forward_seconds')} s) | {cell('eigencam_call', 'seconds')} | {cell('eigencam_call', 'extra_mb', '{:.0f}')} |",
        f"| pytorch-grad-cam's algorithm: numpy full SVD of the 13824 × 64 matrix | {cell('eigen_numpy_full_svd', 'seconds')} | {cell('eigen_numpy_full_svd', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, 16 channels, chunk {CHUNK} (ours) | {cell('scorecam_ours', 'seconds')} | {cell('scorecam_ours', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, 1 GiB budget (ours, chunk {cell('scorecam_ours_budget', 'chunk', '{}')}) | {cell('scorecam_ours_budget', 'seconds')} | {cell('scorecam_ours_budget', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, top_k_channels=8 of 16 (ours, approximate: 8 forwards) | {cell('scorecam_ours_top8', 'seconds')} | {cell('scorecam_ours_top8', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, 16 channels, chunk {CHUNK} (torchcam 0.5.0) | {cell('scorecam_torchcam', 'seconds')} | {cell('scorecam_torchcam', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, 8 of the 16 channels dead, chunk {CHUNK} (ours: dead channels scored once) | {cell('scorecam_ours_dead8', 'seconds')} | {cell('scorecam_ours_dead8', 'extra_mb', '{:.0f}')} |",
        f"| ScoreCAM 64³, 8 of the 16 channels dead, chunk {CHUNK} (torchcam 0.5.0) | {cell('scorecam_torchcam_dead8', 'seconds')} | {cell('scorecam_torchcam_dead8', 'extra_mb', '{:.0f}')} |",
        f"| AblationCAM 64³, 16 channels, chunk {CHUNK} (ours) | {cell('ablationcam_ours', 'seconds')} | {cell('ablationcam_ours', 'extra_mb', '{:.0f}')} |",
    ]
    for dead in (0, 8):
        paired = results.get("scorecam_paired", {}).get(f"dead{dead}")
        if paired:
            lines.append(
                f"| ScoreCAM paired run, {dead} dead channels: ours {paired['ours']:.3f} s vs torchcam "
                f"{paired['torchcam']:.3f} s (medians, alternated) | speed-up {paired['speedup']:.2f}× | — |"
            )
    errors = results.get("pgc_5d", {}).get("errors", {})
    for method, error in errors.items():
        lines.append(f"| pytorch-grad-cam {method} on 5-D input | crashes: `{error}` | — |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args()
    if args.case:
        sys.stdout.write(json.dumps(CASES[args.case](args.repeats)) + "\n")
        return 0
    repeats = 1 if args.quick else args.repeats
    results = {}
    for name in CASES:
        if (args.quick and name == "eigen_numpy_full_svd") or (args.only and name not in args.only):
            continue
        results[name] = run_case(name, repeats, args.timeout)
        sys.stderr.write(f"{name}: {results[name]}\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    sys.stdout.write(markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
