"""Build tiny but real nnU-Net v2 model folders with nnU-Net's own pipeline.

Used by the test fixtures (``tests/nnunet/conftest.py``) and by ``benchmarks/bench_nnunet.py``.
Each dataset is synthetic (bright spheres, and a cube for the second label), goes through
nnU-Net's fingerprint extraction, experiment planning and preprocessing, and is trained by nnU-Net's
own trainer with a one-epoch schedule of a few iterations (see :func:`_tiny_trainer_class`). The plans are
edited between planning and preprocessing, as nnU-Net's documentation describes for custom
plans, to make the patch smaller than the image (so that sliding windows really slide) and the
network narrow (so that training takes seconds on a CPU). For the cascade (MULTI), the plans get
``3d_lowres`` and ``3d_cascade_fullres`` configurations as nnU-Net's planner writes them (the tiny
images are too small for the planner to want one); ``3d_lowres`` is trained on fold ``all`` and
nnU-Net's own validation of it (``perform_actual_validation``, as ``nnUNetv2_train`` runs it) writes
the ``predicted_next_stage`` segmentations of every training case that ``3d_cascade_fullres``
then trains on.

Results can be cached in a persistent folder (``MEDCAM3D_TEST_CACHE``, default
``~/.cache/medcam3d-tests``) keyed by :data:`BUILD_VERSION` and the nnU-Net version.

Run ``python tests/nnunet/builder.py OUT_FOLDER`` to build everything into ``OUT_FOLDER``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BUILD_VERSION = "5"
TRAINER_NAME = "nnUNetTrainer"
TRAIN_ITERATIONS = 12
TEMPORARY_PREFIX = "medcam3d-nnunet-"


@dataclass(frozen=True)
class DatasetSpec:
    """A synthetic dataset: ``spacing`` in SimpleITK order (x, y, z); arrays are (z, y, x)."""

    dataset_id: int
    name: str
    n_cases: int = 8
    shape: tuple[int, int, int] = (32, 32, 32)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_channels: int = 1
    n_labels: int = 1
    file_ending: str = ".nii.gz"
    reader_writer: str | None = None
    trainings: tuple[tuple[str, tuple[int | str, ...]], ...] = (("3d_fullres", (0,)),)
    n_folds: int = 2
    patch_3d: tuple[int, int, int] = (16, 16, 16)
    patch_2d: tuple[int, int] = (16, 16)
    features: tuple[int, ...] = (8, 16, 32, 64)
    #: Spacing of the added ``3d_lowres`` stage relative to ``3d_fullres`` (used when ``trainings``
    #: names ``3d_lowres``; the tiny images are too small for nnU-Net to plan a cascade itself).
    lowres_factor: float = 1.6
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    def model_folder(self, results: Path, configuration: str) -> Path:
        return results / self.folder_name / f"{TRAINER_NAME}__nnUNetPlans__{configuration}"


#: Single channel, label 1, SimpleITK, anisotropic spacing whose coarsest axis is x, so that the
#: plans have a non-identity transpose ([2, 0, 1]).
SPHERE = DatasetSpec(
    dataset_id=971,
    name="MedcamSphere",
    spacing=(2.0, 1.0, 1.0),
    trainings=(("3d_fullres", (0, 1)), ("2d", (0,))),
)
#: Two channels (``_0000``, ``_0001``), labels 1 and 2, NIfTI read by nibabel, isotropic; also a
#: cascade: ``3d_lowres`` (fold ``all``, whose validation writes the ``predicted_next_stage``
#: segmentations of every training case, as nnU-Net does) and ``3d_cascade_fullres`` (fold 0).
MULTI = DatasetSpec(
    dataset_id=972,
    name="MedcamMulti",
    n_channels=2,
    n_labels=2,
    reader_writer="NibabelIO",
    trainings=(("3d_fullres", (0,)), ("3d_lowres", ("all",)), ("3d_cascade_fullres", (0,))),
)
ALL_SPECS = (SPHERE, MULTI)


def make_case(
    spec: DatasetSpec, seed: int, shape: tuple[int, ...] | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Return (channels, label), arrays (z, y, x): a bright sphere (label 1) and, for two labels, a cube (label 2)."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape or spec.shape)
    grid = np.indices(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    centre = np.array([rng.uniform(0.3, 0.7) * s for s in shape])
    radius = rng.uniform(0.15, 0.25) * min(shape)
    dist2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    label[dist2 < radius**2] = 1
    if spec.n_labels >= 2:
        corner = [int(rng.integers(1, max(2, s // 4))) for s in shape]
        size = max(3, min(shape) // 5)
        cube = tuple(slice(c, c + size) for c in corner)
        label[cube] = 2
    channels = []
    for c in range(spec.n_channels):
        img = rng.normal(0.0, 20.0, shape).astype(np.float32)
        img += (label == 1) * (100.0 if c == 0 else 40.0)
        img += (label == 2) * (60.0 if c == 0 else 120.0)
        channels.append(img.astype(np.float32))
    return channels, label


def write_image(
    array_zyx: np.ndarray, path: Path, spacing_xyz: tuple[float, ...], origin=(0.0, 0.0, 0.0), direction=None
) -> None:
    """Write a (z, y, x) array with SimpleITK (any ending SimpleITK supports)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(image, str(path))


def write_raw_dataset(spec: DatasetSpec, raw: Path) -> Path:
    folder = raw / spec.folder_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(spec.n_cases):
        channels, label = make_case(spec, seed=1000 * spec.dataset_id + i)
        for c, img in enumerate(channels):
            write_image(img, folder / "imagesTr" / f"case{i:02d}_{c:04d}{spec.file_ending}", spec.spacing)
        write_image(label, folder / "labelsTr" / f"case{i:02d}{spec.file_ending}", spec.spacing)
    labels = {"background": 0, "sphere": 1}
    if spec.n_labels >= 2:
        labels["cube"] = 2
    dataset_json: dict[str, object] = {
        "channel_names": {str(c): ("CT" if c == 0 else f"mod{c}") for c in range(spec.n_channels)},
        "labels": labels,
        "numTraining": spec.n_cases,
        "file_ending": spec.file_ending,
    }
    if spec.reader_writer:
        dataset_json["overwrite_image_reader_writer"] = spec.reader_writer
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder


def _add_cascade(spec: DatasetSpec, plans: dict) -> None:
    """Add ``3d_lowres`` and ``3d_cascade_fullres`` as nnU-Net's planner writes them when it plans a
    cascade (``ExperimentPlanner.plan_experiment``): lowres is the fullres plan at a coarser spacing
    with its own data identifier and ``next_stage``; the cascade inherits from fullres."""
    configurations = plans["configurations"]
    wanted = {c for c, _ in spec.trainings}
    if "3d_lowres" not in wanted or "3d_lowres" in configurations:
        return
    lowres = json.loads(json.dumps(configurations["3d_fullres"]))
    lowres["data_identifier"] = f"{plans['plans_name']}_3d_lowres"
    lowres["spacing"] = [s * spec.lowres_factor for s in lowres["spacing"]]
    lowres["median_image_size_in_voxels"] = [
        round(s / spec.lowres_factor) for s in lowres["median_image_size_in_voxels"]
    ]
    if "3d_cascade_fullres" in wanted:
        lowres["next_stage"] = "3d_cascade_fullres"
        configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    configurations["3d_lowres"] = lowres


def _edit_plans(spec: DatasetSpec, plans_file: Path) -> None:
    plans = json.loads(plans_file.read_text())
    _add_cascade(spec, plans)
    for name, config in plans["configurations"].items():
        if "architecture" not in config:
            continue
        ndim = len(config["patch_size"])
        config["patch_size"] = list(spec.patch_3d if ndim == 3 else spec.patch_2d)
        config["batch_size"] = 2
        kwargs = config["architecture"]["arch_kwargs"]
        n_stages = kwargs["n_stages"]
        kwargs["features_per_stage"] = [
            spec.features[min(i, len(spec.features) - 1)] for i in range(n_stages)
        ]
        del name
    plans_file.write_text(json.dumps(plans, indent=1))


def _write_splits(spec: DatasetSpec, preprocessed: Path) -> None:
    cases = [f"case{i:02d}" for i in range(spec.n_cases)]
    splits = []
    for k in range(spec.n_folds):
        val = cases[k :: spec.n_folds]
        splits.append({"train": [c for c in cases if c not in val], "val": val})
    (preprocessed / spec.folder_name / "splits_final.json").write_text(json.dumps(splits, indent=1))


@contextlib.contextmanager
def nnunet_environment(root: Path) -> Iterator[dict[str, str]]:
    """Point nnU-Net's environment variables into ``root`` (restored afterwards)."""
    env = {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_dataset(spec: DatasetSpec, root: Path, quiet: bool = True) -> None:
    """Run nnU-Net's real pipeline for ``spec`` inside ``root`` (raw → plans → preprocess → train)."""
    import torch

    with nnunet_environment(root):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )

        write_raw_dataset(spec, root / "nnUNet_raw")
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            extract_fingerprints(
                [spec.dataset_id],
                num_processes=1,
                check_dataset_integrity=False,
                show_progress_bar=False,
                verbose=False,
            )
            plan_experiments([spec.dataset_id])
            preprocessed = root / "nnUNet_preprocessed"
            _edit_plans(spec, preprocessed / spec.folder_name / "nnUNetPlans.json")
            _write_splits(spec, preprocessed)
            # the cascade stage reads the 3d_fullres data (same data identifier): nothing to preprocess
            configurations = tuple(dict.fromkeys(c for c, _ in spec.trainings if c != "3d_cascade_fullres"))
            preprocess(
                [spec.dataset_id],
                configurations=configurations,
                num_processes=[1] * len(configurations),
                show_progress_bar=False,
            )
            torch.manual_seed(0)
            old_da = os.environ.get("nnUNet_n_proc_DA")
            os.environ["nnUNet_n_proc_DA"] = "0"  # data augmentation in-process: no worker processes
            try:
                _train(spec, root)
            finally:
                if old_da is None:
                    os.environ.pop("nnUNet_n_proc_DA", None)
                else:
                    os.environ["nnUNet_n_proc_DA"] = old_da


def _tiny_trainer_class() -> type:
    """nnU-Net's own ``nnUNetTrainer`` with a one-epoch schedule of a few iterations.

    The subclass keeps the name ``nnUNetTrainer`` on purpose: the checkpoint records the class
    name, and nnU-Net rebuilds the network at inference time from that (unchanged) stock class, so
    the model folder is a standard ``nnUNetTrainer__nnUNetPlans__<configuration>`` folder that
    ``nnUNetv2_predict`` loads without any custom trainer lookup (which would import every trainer
    module that nnU-Net ships, some of them with heavy optional dependencies).
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as StockTrainer

    CPU = torch.device("cpu")

    class nnUNetTrainer(StockTrainer):  # noqa: N801 - the name nnU-Net will look up
        def __init__(
            self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = TRAIN_ITERATIONS
            self.num_val_iterations_per_epoch = 2
            self.save_every = 10**6

    return nnUNetTrainer


def _train(spec: DatasetSpec, root: Path) -> None:
    import torch

    trainer_class = _tiny_trainer_class()
    preprocessed = root / "nnUNet_preprocessed" / spec.folder_name
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    for configuration, folds in spec.trainings:  # a previous stage is listed before its next stage
        for fold in folds:
            plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
            plans["continue_training"] = False
            trainer = trainer_class(
                plans=plans,
                configuration=configuration,
                fold=fold,
                dataset_json=dataset_json,
                device=torch.device("cpu"),
            )
            trainer.run_training()
            if trainer.configuration_manager.next_stage_names:
                # nnU-Net's validation (as nnUNetv2_train runs it) also writes, for every validation
                # case, the segmentation resampled to the next stage into
                # <model folder>/predicted_next_stage/<next stage>/: the cascade's training input.
                trainer.perform_actual_validation(False)


def build_all(root: Path, specs: tuple[DatasetSpec, ...] = ALL_SPECS, quiet: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        build_dataset(spec, root, quiet=quiet)
    return root


def cache_key() -> str:
    from importlib.metadata import version

    import nnunetv2  # noqa: F401

    return f"v{BUILD_VERSION}-nnunetv2-{version('nnunetv2')}-torch-{version('torch')}"


def cached_build(specs: tuple[DatasetSpec, ...] = ALL_SPECS) -> Path:
    """Build (or reuse) the fixture models in the persistent cache; return the root folder.

    ``MEDCAM3D_TEST_CACHE=0`` disables the persistent cache (a fresh temporary folder is used).
    """
    cache_setting = os.environ.get("MEDCAM3D_TEST_CACHE", str(Path.home() / ".cache" / "medcam3d-tests"))
    if cache_setting in ("0", "", "off"):
        return build_all(Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX)), specs)
    final = Path(cache_setting) / cache_key()
    if (final / "COMPLETE").exists():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable cache: build in a temporary folder
        return build_all(Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX)), specs)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        build_all(work, specs)
        (work / "COMPLETE").write_text("ok\n")
        try:
            os.replace(work, final)
        except OSError:  # someone else finished first
            if not (final / "COMPLETE").exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "nnunet_fixture")
    build_all(out, quiet=False)
    print(out)
