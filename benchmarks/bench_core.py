"""GradCAM speed: medcam3d against plain torch and peers, in one run.

Compares, on a small 3D CNN (CPU, 2 threads by default):
  (a) plain torch: forward + torch.autograd.grad to the same layer + Grad-CAM weights + trilinear resize
  (b) Captum LayerGradCam + LayerAttribution.interpolate, MONAI GradCAM, torchcam GradCAM + resize
      (each where installed)
Implementations run interleaved, round after round, so background load affects all alike;
the table reports the median time per call and the ratio to (a).

    python benchmarks/bench_core.py                  # 64³ and 96³, batch 1
    python benchmarks/bench_core.py --sizes 128 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import medcam3d
from medcam3d.utils.model_targets import ClassifierOutputTarget


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class Small3DCNN(nn.Module):
    """A small 3D classifier: 4 stages (16-32-64-128 channels), ×8 downsampling, global pooling."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stage1 = block(1, 16, 1)
        self.stage2 = block(16, 32, 2)
        self.stage3 = block(32, 64, 2)
        self.stage4 = block(64, 128, 2)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.fc(f.mean(dim=(2, 3, 4)))


def plain_torch(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int) -> torch.Tensor:
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out[:, cls].sum(), store["a"])
    a = store["a"].detach()
    cam = torch.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)[:, 0]


def implementations(base_model: nn.Module, x: torch.Tensor, cls: int) -> dict[str, Callable[[], object]]:
    # Each implementation gets its own copy of the model: MONAI leaves hooks registered on the
    # module it is given, which would slow down everything else sharing that instance.
    def fresh() -> nn.Module:
        return copy.deepcopy(base_model)

    plain_model, ours = fresh(), fresh()
    targets = [ClassifierOutputTarget(cls)] * x.shape[0]
    cam = medcam3d.GradCAM(ours, [ours.stage4], normalize=False, return_tensor=True)
    impls: dict[str, Callable[[], object]] = {
        "plain torch (a)": lambda: plain_torch(plain_model, plain_model.stage4, x, cls),
        "medcam3d GradCAM": lambda: cam(x, targets),
    }
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        captum_model = fresh()
        lgc = LayerGradCam(captum_model, captum_model.stage4)
        impls["captum LayerGradCam"] = lambda: LayerAttribution.interpolate(
            lgc.attribute(x, target=cls, relu_attributions=True),
            tuple(x.shape[2:]),
            interpolate_mode="trilinear",
        )
    except ImportError:
        pass
    try:
        from monai.visualize import GradCAM as MonaiGradCAM

        monai_cam = MonaiGradCAM(nn_module=fresh(), target_layers="stage4", postprocessing=lambda t: t)
        impls["monai GradCAM"] = lambda: monai_cam(x, class_idx=cls)
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM

        torchcam_model = fresh()

        def run_torchcam() -> object:
            with TorchcamGradCAM(
                torchcam_model, target_layer="stage4", input_shape=tuple(x.shape[1:])
            ) as extractor:
                scores = torchcam_model(x)
                maps = extractor(class_idx=[cls] * x.shape[0], scores=scores, normalized=False)[0]
            return F.interpolate(maps[:, None], size=x.shape[2:], mode="trilinear", align_corners=False)

        impls["torchcam GradCAM"] = run_torchcam
    except ImportError:
        pass
    return impls


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Small3DCNN().to(device).eval()
    print(
        f"# GradCAM benchmark — torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"device {device}, {args.threads} threads, batch {args.batch}, {args.repeats} rounds"
    )
    for size in args.sizes:
        x = torch.randn(args.batch, 1, size, size, size, device=device)
        impls = implementations(model, x, cls=1)
        for fn in impls.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.repeats):
            for name, fn in impls.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
        reference = statistics.median(times["plain torch (a)"])
        print(f"\n## {size}³ input (feature map {size // 8}³)\n")
        print("| implementation | median (ms) | ratio to plain torch |")
        print("|---|---:|---:|")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {median * 1000:.1f} | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
