"""A generic real worker for the batch tests: a small 3D CNN + GradCAM writing NIfTI maps.

Every call is appended to a log file (one line per call, from any process), so tests count the
work a run did, also across processes and Ray workers. Optional faults: a case whose worker dies
(``os._exit``) the first time (a marker file remembers it), a case killed with SIGKILL in the middle
of writing, a case whose prepare or process raises.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d import GradCAM
from medcam3d._atomic import atomic_path
from medcam3d.batch import Case, CaseContext
from medcam3d.core.targets import ClassifierOutputTarget
from medcam3d.errors import InputFileError
from medcam3d.io import Geometry, read_image, write_image, write_map

SHAPE = (12, 16, 20)  # (z, y, x)


class TinyCNN3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(f.mean(dim=(2, 3, 4)))


def make_model() -> TinyCNN3d:
    torch.manual_seed(0)
    return TinyCNN3d().eval()


def make_cases(folder: Path, count: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> list[Case]:
    """``count`` NIfTI scans ``case_XXX.nii.gz`` of random values, spacing (0.8, 0.9, 2.0) mm."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        path = folder / f"case_{index:03d}.nii.gz"
        write_scan(path, rng.normal(size=shape).astype(np.float32))
        cases.append(Case(f"case_{index:03d}", (path,)))
    return cases


def write_scan(path: Path, volume: np.ndarray) -> None:
    geometry = Geometry(tuple(volume.shape), spacing=(0.8, 0.9, 2.0), origin=(1.0, -2.0, 3.0))  # type: ignore[arg-type]
    write_image(volume, geometry, path, overwrite=True, dtype=np.float32)


def log_call(log: str | None, what: str, identifier: str) -> None:
    if log:
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(f"{what} {identifier} {os.getpid()}\n")


def calls(log: Path, what: str = "process") -> list[str]:
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.split()[0] == what]


class CamWorker:
    """prepare: read the scan; process: GradCAM of class 1 on ``conv2`` → ``<case>_gradcam.nii.gz``
    plus the class scores as ``<case>_scores.npy``."""

    def __init__(
        self,
        log: str | None = None,
        die_once_on: str | None = None,
        die_always_on: str | None = None,
        marker: str | None = None,
        sigkill_on: str | None = None,
        fail_prepare_on: str | None = None,
        fail_process_on: str | None = None,
        sleep_s: float = 0.0,
        fail_init: bool = False,
    ) -> None:
        if fail_init:
            raise InputFileError("the model file is missing (on purpose)")
        self.model = make_model()
        self.log = log
        self.die_once_on, self.die_always_on, self.marker = die_once_on, die_always_on, marker
        self.sigkill_on = sigkill_on
        self.fail_prepare_on, self.fail_process_on = fail_prepare_on, fail_process_on
        self.sleep_s = sleep_s
        log_call(log, "init", "-")

    def prepare(self, case: Any) -> tuple[torch.Tensor, Geometry]:
        log_call(self.log, "prepare", case.identifier)
        if case.identifier == self.fail_prepare_on:
            raise InputFileError(f"{case.files[0]} is damaged (on purpose)")
        array, geometry = read_image(case.files[0], dtype=np.float32)
        return torch.from_numpy(array)[None, None], geometry

    def process(self, case: Any, prepared: tuple[torch.Tensor, Geometry], context: CaseContext) -> list[Path]:
        log_call(self.log, "process", case.identifier)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if case.identifier == self.die_always_on:
            os._exit(3)
        if case.identifier == self.die_once_on and self.marker and not os.path.exists(self.marker):
            Path(self.marker).write_text("died once\n")
            os._exit(3)
        if case.identifier == self.fail_process_on:
            raise RuntimeError("the network produced NaN (on purpose)")
        x, geometry = prepared
        cam = GradCAM(self.model, [self.model.conv2])
        maps = cam(x, [ClassifierOutputTarget(1)])
        with torch.no_grad():
            scores = self.model(x)[0].numpy()
        out = context.output_dir
        written = [write_map(maps[0], geometry, out / f"{case.identifier}_gradcam.nii.gz", overwrite=True)]
        npy = out / f"{case.identifier}_scores.npy"
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as stream:
                np.save(stream, scores)
                if case.identifier == self.sigkill_on:
                    stream.flush()
                    os.kill(os.getpid(), signal.SIGKILL)  # in the middle of an atomic write
        written.append(npy)
        return written
