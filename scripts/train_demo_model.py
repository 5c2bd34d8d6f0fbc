#!/usr/bin/env python
"""Train the demo's lesion detector (``medcam3d demo``) on the shipped MNI152 T1 2 mm template.

Deterministic, CPU only, a few minutes on two cores::

    python scripts/train_demo_model.py                 # writes src/medcam3d/assets/demo/demo_cnn.pt
    python scripts/train_demo_model.py --steps 20 --output /tmp/w.pt   # a quick smoke run

Data: every sample is the template, with probability 0.5 a synthetic lesion (a soft ellipsoid of
radii 5-10 mm, brighter or darker than the tissue around it) planted at a random position inside the
brain, then augmented (left-right flip, shifts of up to 3 voxels, bias field, gamma, scale, noise; see
:func:`medcam3d.demo.data.augment`). Label 1 = lesion present.

Determinism: numpy and torch are seeded, ``torch.use_deterministic_algorithms(True)`` is on and the
number of threads is fixed (``--threads``; results can differ in the last bits with another count).
Next to the weights the script writes ``demo_cnn.json``: seed, steps, input shape, validation
accuracy, training time, versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcam3d.demo.data import (
    CONTRAST_RANGE,
    RADIUS_RANGE_MM,
    Template,
    augment,
    candidate_centres,
    lesion_weight,
    load_template,
    plant_lesion,
    random_lesion,
)
from medcam3d.demo.model import LESION_CLASS, TARGET_LAYER, DemoLesionNet, default_weights_path

#: Curriculum start: lesion radii (mm) and contrast of the first steps. Small lesions in a large
#: volume give almost no gradient to an untrained network; large ones teach it what a lesion is.
START_RADIUS_MM = (15.0, 25.0)
START_CONTRAST = (0.6, 0.9)
#: Fraction of the steps over which the curriculum reaches the demo's lesion sizes.
CURRICULUM_FRACTION = 0.5


def make_batch(
    template: Template,
    centres: np.ndarray,
    rng: np.random.Generator,
    size: int,
    augmented: bool = True,
    paired: bool = True,
    progress: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes ``(size, 1, D, H, W)`` and labels ``(size,)`` (1 = lesion).

    ``paired``: the batch is made of matched pairs, the same augmented brain (same flip, shift, bias
    field, gamma, scale and noise) once with and once without a lesion, so that the lesion is the
    only difference the loss can learn from. Otherwise each volume is drawn independently, with a
    lesion with probability 0.5 (the validation sets).

    ``progress`` in [0, 1] drives the curriculum: at 0 the lesions are large and strong
    (radii :data:`START_RADIUS_MM`, contrast :data:`START_CONTRAST`), at 1 (and for validation) they
    have the demo's sizes and contrasts (:data:`~medcam3d.demo.data.RADIUS_RANGE_MM`,
    :data:`~medcam3d.demo.data.CONTRAST_RANGE`); in between, linearly.
    """
    t = min(max(progress, 0.0), 1.0)
    radius_range = (
        START_RADIUS_MM[0] + t * (RADIUS_RANGE_MM[0] - START_RADIUS_MM[0]),
        START_RADIUS_MM[1] + t * (RADIUS_RANGE_MM[1] - START_RADIUS_MM[1]),
    )
    contrast_range = (
        START_CONTRAST[0] + t * (CONTRAST_RANGE[0] - START_CONTRAST[0]),
        START_CONTRAST[1] + t * (CONTRAST_RANGE[1] - START_CONTRAST[1]),
    )
    volumes: list[np.ndarray] = []
    labels: list[int] = []
    while len(volumes) < size:
        lesion = random_lesion(rng, centres, radius_range, contrast_range)
        weight = lesion_weight(template.image.shape, template.spacing, lesion)
        with_lesion = plant_lesion(template.image, weight, lesion.contrast)
        choices = (
            [(template.image, 0), (with_lesion, 1)]
            if paired
            else [(with_lesion, 1) if rng.random() < 0.5 else (template.image, 0)]
        )
        state = rng.bit_generator.state
        for volume, label in choices:
            if augmented:
                rng.bit_generator.state = state  # the same augmentation for both members of a pair
                volume, _, _ = augment(volume, rng)
            volumes.append(volume)
            labels.append(label)
    x = torch.from_numpy(np.stack(volumes[:size])[:, None])
    return x, torch.tensor(labels[:size], dtype=torch.long)


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def pointing_game_rates(
    model: torch.nn.Module, template: Template, centres: np.ndarray, count: int, seed: int
) -> dict[str, float]:
    """Hit rate of each default demo method over ``count`` new clean lesion volumes (as the demo)."""
    from medcam3d.demo.runner import DEFAULT_METHODS, DEFAULT_TOLERANCE_MM, demo_methods, pointing_game
    from medcam3d.utils.model_targets import ClassifierOutputTarget

    if count <= 0:
        return {}
    model.eval()
    registry = demo_methods()
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(DEFAULT_METHODS, 0)
    for _ in range(count):
        lesion = random_lesion(rng, centres)
        weight = lesion_weight(template.image.shape, template.spacing, lesion)
        x = torch.from_numpy(plant_lesion(template.image, weight, lesion.contrast))[None, None]
        for name in DEFAULT_METHODS:
            with registry[name](model=model, target_layers=[TARGET_LAYER]) as cam:
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(LESION_CLASS)])
            hit = pointing_game(maps[0], weight >= 0.5, template.spacing, DEFAULT_TOLERANCE_MM)[2]
            hits[name] += int(hit)
    return {name: value / count for name, value in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=default_weights_path(), help="state_dict file to write"
    )
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=8, help="volumes per step (pairs: even)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--width", type=int, default=8, help="channels of the first block")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-size", type=int, default=96, help="validation volumes (augmented)")
    parser.add_argument(
        "--pointing-game",
        type=int,
        default=24,
        metavar="N",
        help="score the CAMs of N new lesion volumes with the demo's pointing game (0: skip)",
    )
    args = parser.parse_args(argv)

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's torch RNG as it was
            torch.manual_seed(args.seed)
            return _train(args)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _train(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    val_rng = np.random.default_rng(args.seed + 1)  # separate stream: validation never seen in training

    start = time.perf_counter()
    template = load_template()
    centres = candidate_centres(template)
    val_batches = [
        make_batch(template, centres, val_rng, min(16, args.val_size - i), paired=False)
        for i in range(0, args.val_size, 16)
    ]
    clean_batches = [
        make_batch(template, centres, val_rng, min(16, args.val_size - i), augmented=False, paired=False)
        for i in range(0, args.val_size, 16)
    ]

    model = DemoLesionNet(width=args.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    running = 0.0
    for step in range(1, args.steps + 1):
        model.train()
        progress = (step - 1) / max(CURRICULUM_FRACTION * args.steps, 1.0)
        x, y = make_batch(template, centres, rng, args.batch_size, progress=progress)
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.9 * running + 0.1 * value if step > 1 else value
        if step % 20 == 0 or step == args.steps:
            print(
                f"step {step:4d}/{args.steps}  loss {running:.3f}  {time.perf_counter() - start:6.1f} s",
                flush=True,
            )

    val_acc = accuracy(model, val_batches)
    clean_acc = accuracy(model, clean_batches)
    elapsed = time.perf_counter() - start
    print(
        f"validation accuracy: augmented {val_acc:.3f}, clean {clean_acc:.3f} ({args.val_size} volumes each)"
    )
    print(f"training time: {elapsed:.0f} s on {args.threads} thread(s)")
    pointing = pointing_game_rates(model, template, centres, args.pointing_game, args.seed + 2)
    for name, rate in pointing.items():
        print(f"pointing game {name}: {rate:.2f} of {args.pointing_game} new lesion volumes")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.output)
    meta = {
        "model": "medcam3d.demo.model.DemoLesionNet",
        "width": args.width,
        "input_shape_NCDHW": [1, 1, *template.image.shape],
        "target_layer": "features",
        "classes": {"0": "no lesion", "1": "lesion"},
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "validation_accuracy_augmented": round(val_acc, 4),
        "validation_accuracy_clean": round(clean_acc, 4),
        "validation_size": args.val_size,
        "training_seconds": round(elapsed, 1),
        "pointing_game_volumes": args.pointing_game,
        "pointing_game_hit_rate": {k: round(v, 3) for k, v in pointing.items()},
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    args.output.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
