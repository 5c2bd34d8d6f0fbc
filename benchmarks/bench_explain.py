"""Per-case time of ``medcam3d explain`` against the bare Python-API CAM on the preprocessed tensors.

A folder of ``--cases`` (default 8) NIfTI volumes of ``--size``³ (default 96³), a MONAI
``DenseNet121`` (block config (6, 12, 24, 16)) with a small growth rate (``--growth``, default 8;
``init_features`` = 2 × growth) or ``--arch resnet18``. Two timings:

- **bare**: ``GradCAM(model, [layer])(x)`` on each preprocessed tensor (z-scored, already in memory);
- **explain**: ``explain_folder`` (what ``medcam3d explain`` calls) on the folder: reading,
  z-scoring, the CAM, mapping back, writing the verified NIfTI map and the JSON sidecar. Its
  per-case time is ``CaseResult.seconds`` (split in ``CaseResult.timings``); the one-off part (loading the model once, the probe
  forward pass, the layer suggestion) is reported apart.

The target is the predicted class in both (one forward, one backward per case). The figure to
watch is ``ratio`` = mean explain per-case time / mean bare time (goal: ≤ 1.3).

    python benchmarks/bench_explain.py [--cases 8] [--size 96] [--growth 8] [--arch densenet121|resnet18] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_cases(folder: Path, cases: int, size: int) -> list[Path]:
    import nibabel as nib

    rng = np.random.default_rng(0)
    paths = []
    for index in range(cases):
        volume = rng.normal(0, 50, (size, size, size)).astype(np.float32)
        c = rng.integers(size // 4, 3 * size // 4, 3)
        volume[c[0] - 8 : c[0] + 8, c[1] - 8 : c[1] + 8, c[2] - 8 : c[2] + 8] += 400
        path = folder / f"case{index:02d}.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 1.5, 1.0])), str(path))
        paths.append(path)
    return paths


def factory_spec(arch: str, growth: int) -> tuple[str, dict[str, object]]:
    if arch == "resnet18":
        return "monai.networks.nets:resnet18", {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}
    return "monai.networks.nets:DenseNet121", {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "growth_rate": growth,
        "init_features": 2 * growth,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--growth", type=int, default=8)
    parser.add_argument("--arch", default="densenet121", choices=["densenet121", "resnet18"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (bare, explain)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import medcam3d
    from medcam3d.explain import ExplainSettings, explain_folder
    from medcam3d.io import read_image
    from medcam3d.models import load_model, model_source
    from medcam3d.models.factory import build_from_factory

    torch.manual_seed(0)
    spec, kwargs = factory_spec(args.arch, args.growth)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scans = root / "scans"
        scans.mkdir()
        paths = make_cases(scans, args.cases, args.size)
        checkpoint = root / "model.pt"
        torch.save(build_from_factory(spec, kwargs).state_dict(), checkpoint)
        source = model_source(factory=spec, model_kwargs=kwargs, checkpoint=checkpoint)

        # bare Python API on the preprocessed tensors (read + z-score outside the timing)
        model = load_model(source, device=args.device).network
        from medcam3d.utils.find_layers import suggest_target_layer

        shape = (1, 1, args.size, args.size, args.size)
        layer = suggest_target_layer(model, shape)
        cam = medcam3d.GradCAM(model, [layer])
        tensors = []
        for path in paths:
            array, _ = read_image(path, dtype=np.float32)
            array = (array - array.mean()) / array.std()
            tensors.append(torch.from_numpy(array)[None, None].to(args.device))
        cam(tensors[0])  # warm-up
        # rounds alternate bare and explain, so a busy machine slows both alike
        bare: list[float] = []
        per_case: list[float] = []
        timings: list[dict[str, float]] = []
        one_off: list[float] = []
        for _ in range(args.repeat):
            for x in tensors:
                start = time.perf_counter()
                cam(x)
                bare.append(time.perf_counter() - start)
            settings = ExplainSettings(
                zscore=True, input_size=(args.size,) * 3, progress=False, overwrite=True
            )
            start = time.perf_counter()
            results = explain_folder(scans, root / "out", source, settings, device=args.device)
            total = time.perf_counter() - start
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            per_case += [r.seconds for r in results]
            timings += [r.timings for r in results]
            one_off.append(total - sum(r.seconds for r in results))
    part = {key: statistics.mean(t[key] for t in timings) for key in ("read", "cam", "write")}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}",
        "model": f"{spec} {kwargs}",
        "layer": layer,
        "cases": args.cases,
        "size": args.size,
        "repeat": args.repeat,
        "bare_mean_s": statistics.mean(bare),
        "explain_per_case_mean_s": statistics.mean(per_case),
        "ratio": statistics.mean(per_case) / statistics.mean(bare),
        "explain_parts_mean_s": part,
        "explain_one_off_s": one_off,
        "bare_s": bare,
        "explain_per_case_s": per_case,
    }
    sys.stdout.write(
        f"{report['model']} on {args.cases} x {args.size}^3, layer {layer}, {report['machine']}\n"
        f"  bare GradCAM per case      {report['bare_mean_s']:.2f} s (median {statistics.median(bare):.2f})\n"
        f"  medcam3d explain per case  {report['explain_per_case_mean_s']:.2f} s (median "
        f"{statistics.median(per_case):.2f}; ratio of means {report['ratio']:.2f})\n"
        f"    of which read+preprocess {part['read']:.2f} s, CAM {part['cam']:.2f} s, map back+write {part['write']:.2f} s\n"
        f"  explain one-off per run (load once, probe, suggestion) {statistics.mean(one_off):.2f} s\n"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
