"""Fixtures for the nnU-Net tests: real model folders made by nnU-Net's own pipeline.

Built once per test session (about 70 s on 2 idle CPU cores) by ``builder.py``, cached in
``~/.cache/medcam3d-tests`` (``MEDCAM3D_TEST_CACHE=0`` disables the persistent cache).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import builder  # noqa: E402


@dataclass(frozen=True)
class NnUNetFixture:
    root: Path
    env: dict[str, str]

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def model_folder(self, spec: builder.DatasetSpec, configuration: str = "3d_fullres") -> Path:
        return spec.model_folder(self.results, configuration)


@pytest.fixture(scope="session")
def nnunet_models() -> Iterator[NnUNetFixture]:
    root = builder.cached_build()
    try:
        with builder.nnunet_environment(root) as env:
            yield NnUNetFixture(root, env)
    finally:
        if root.name.startswith(builder.TEMPORARY_PREFIX):  # cache disabled or not writable: clean up
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sphere_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two single-channel test cases whose spacing differs from the training data (so nnU-Net resamples),
    with a non-trivial origin and direction."""
    folder = tmp_path_factory.mktemp("sphere_inputs")
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    for i, shape in enumerate([(30, 37, 23), (12, 40, 26)]):
        channels, _ = builder.make_case(builder.SPHERE, seed=500 + i, shape=shape)
        builder.write_image(
            channels[0],
            folder / f"sph{i}_0000.nii.gz",
            (2.2, 0.9, 1.1),
            origin=(3.0, -4.0, 5.5),
            direction=direction if i == 0 else None,
        )
    return folder


@pytest.fixture(scope="session")
def multi_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two two-channel cases (``_0000``, ``_0001``); their ground-truth masks lie in the sibling folder
    ``multi_masks``."""
    folder = tmp_path_factory.mktemp("multi_inputs")
    for i in range(2):
        channels, label = builder.make_case(builder.MULTI, seed=700 + i, shape=(28, 34, 30))
        for c, img in enumerate(channels):
            builder.write_image(
                img, folder / f"mc{i}_{c:04d}.nii.gz", (1.0, 1.2, 0.9), origin=(-10.0, 2.0, 7.0)
            )
        masks = folder.parent / "multi_masks"
        masks.mkdir(exist_ok=True)
        builder.write_image(label, masks / f"mc{i}.nii.gz", (1.0, 1.2, 0.9), origin=(-10.0, 2.0, 7.0))
    return folder
