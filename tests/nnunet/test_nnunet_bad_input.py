"""Bad model folders, inputs and options: a clear error from medcam3d.errors (no traceback), before
any heavy work, and no output folder. Options and inputs are checked before the checkpoints are
loaded: with an unloadable checkpoint, the error is the option's, not the checkpoint's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest
import SimpleITK as sitk

from medcam3d.errors import ConfigurationError, InputFileError
from medcam3d.nnunet import NnUNetCAM, load_predictor, segment_and_explain
from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow

CHECKPOINT = Path("fold_0") / "checkpoint_final.pth"


@pytest.fixture()
def model_copy(nnunet_models, tmp_path) -> Path:
    model = tmp_path / "models" / nnunet_models.model_folder(builder.SPHERE).name
    shutil.copytree(nnunet_models.model_folder(builder.SPHERE), model)
    return model


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    channels, _ = builder.make_case(builder.SPHERE, seed=11, shape=(18, 20, 20))
    builder.write_image(channels[0], folder / "case_0000.nii.gz", builder.SPHERE.spacing)
    return folder


def _garbage_checkpoint(model: Path) -> None:
    (model / CHECKPOINT).write_bytes(b"not a checkpoint, loading it would fail")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


MODEL_DAMAGE = {
    "zero-byte checkpoint": (lambda m: (m / CHECKPOINT).write_bytes(b""), "is empty (0 bytes)"),
    "truncated checkpoint": (lambda m: _truncate(m / CHECKPOINT), "truncated or damaged"),
    "plans.json not JSON": (lambda m: _truncate(m / "plans.json"), "plans.json is not valid JSON"),
    "plans.json a list": (lambda m: (m / "plans.json").write_text("[]"), "holds a JSON list"),
    "plans.json without configurations": (
        lambda m: (m / "plans.json").write_text(json.dumps({"dataset_name": "x"})),
        "is not the plans.json of an nnU-Net v2 model",
    ),
    "dataset.json not JSON": (lambda m: _truncate(m / "dataset.json"), "dataset.json is not valid JSON"),
    "dataset.json without keys": (
        lambda m: (m / "dataset.json").write_text(json.dumps({"name": "x"})),
        "lacks 'file_ending'",
    ),
}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
@pytest.mark.parametrize("list_layers", [False, True], ids=["run", "list-layers"])
def test_a_damaged_model_folder_is_named(model_copy, inputs, tmp_path, capsys, damage, list_layers):
    mutate, message = MODEL_DAMAGE[damage]
    mutate(model_copy)
    out = tmp_path / "out"
    if list_layers:
        args = ["--list-layers", "-m", str(model_copy), "-f", "0", "-device", "cpu"]
    else:
        args = ["-i", str(inputs), "-o", str(out), "-m", str(model_copy), "-f", "0", "-device", "cpu"]
        args += ["--target-layer", "encoder.stages.3", "--no-progress"]
    assert cli_main(args) == 1  # a MedCAMError: the CLI prints it and returns 1 (no traceback)
    err = capsys.readouterr().err
    assert err.startswith("medcam3d nnunet: error: ") and message in err, err
    assert "Copy the model folder again" in err or "not an nnU-Net v2 model file" in err
    assert not out.exists()


def test_damage_raises_configuration_errors_in_python(model_copy, inputs, tmp_path):
    _truncate(model_copy / CHECKPOINT)
    with pytest.raises(ConfigurationError, match="truncated or damaged"):
        load_predictor(model_copy)
    with pytest.raises(ConfigurationError, match="truncated or damaged"):
        segment_and_explain(model_copy, inputs, tmp_path / "out", "encoder.stages.3", progress=False)
    assert not (tmp_path / "out").exists()


def _vector_image(path: Path) -> None:
    values = np.random.default_rng(0).normal(size=(18, 20, 20, 2)).astype(np.float32)
    image = sitk.GetImageFromArray(values, isVector=True)  # two components per voxel
    image.SetSpacing(builder.SPHERE.spacing)
    sitk.WriteImage(image, str(path))


def _series_image(path: Path) -> None:
    volumes = [sitk.GetImageFromArray(np.full((18, 20, 20), t, np.float32)) for t in range(3)]
    image = sitk.JoinSeries(volumes)  # a 4-D series of 3 volumes
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(path))


BAD_ARGUMENTS = {
    "-f abc": (["-f", "abc"], "-f takes fold numbers or 'all'"),
    "-step_size 0": (["-step_size", "0"], "must be a number in (0, 1]"),
    "-step_size 1.5": (["-step_size", "1.5"], "must be a number in (0, 1]"),
    "-step_size -0.5": (["-step_size", "-0.5"], "must be a number in (0, 1]"),
    "-step_size nan": (["-step_size", "nan"], "must be a number in (0, 1]"),
    "--pool-size with gradcam": (["--pool-size", "2"], "is an option of Seg-XRes-CAM only"),
    "--pool-size 0": (["--method", "segxrescam", "--pool-size", "0"], "a whole number >= 1"),
    "unknown method": (["--method", "nope"], "Unknown CAM method 'nope'"),
    "vector image": ([], "holds 2 values per voxel"),
    "4-D image": ([], "holds 3 values per voxel"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_fail_before_loading(model_copy, inputs, tmp_path, capsys, case):
    """Every refusal comes before the checkpoint is opened (it is garbage here) and writes nothing."""
    extra, message = BAD_ARGUMENTS[case]
    _garbage_checkpoint(model_copy)
    if case == "vector image":
        _vector_image(inputs / "vector_0000.nii.gz")
    elif case == "4-D image":
        _series_image(inputs / "series_0000.nii.gz")
    out = tmp_path / "out"
    args = ["-i", str(inputs), "-o", str(out), "-m", str(model_copy), "-device", "cpu", "--no-progress"]
    args += ["--target-layer", "encoder.stages.3", *(extra if "-f" in extra else ["-f", "0", *extra])]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert "checkpoint" not in err.lower()  # not the (garbage) checkpoint's error: it was never opened
    assert not out.exists()


def test_the_python_api_checks_the_same_before_loading(model_copy, inputs, tmp_path):
    _garbage_checkpoint(model_copy)
    out = tmp_path / "out"
    common = dict(progress=False)
    with pytest.raises(ConfigurationError, match=r"\(0, 1\]"):
        segment_and_explain(model_copy, inputs, out, "encoder.stages.3", tile_step_size=0.0, **common)
    with pytest.raises(ConfigurationError, match="Seg-XRes-CAM only"):
        segment_and_explain(
            model_copy, inputs, out, "encoder.stages.3", method="hirescam", pool_size=2, **common
        )
    _vector_image(inputs / "vector_0000.nii.gz")
    with pytest.raises(InputFileError, match="2 values per voxel") as info:
        segment_and_explain(model_copy, inputs, out, "encoder.stages.3", **common)
    assert "vector_0000.nii.gz" in str(info.value)
    assert not out.exists()


def test_the_runner_class_checks_its_options_once(nnunet_models):
    """NnUNetCAM (the class for repeated use) refuses a bad step size and options its method does
    not take when it is made, not in the first case."""
    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    with pytest.raises(ConfigurationError, match=r"\(0, 1\]"):
        NnUNetCAM(predictor, "encoder.stages.3", tile_step_size=2.0)
    with pytest.raises(ConfigurationError, match="does not take the options"):
        NnUNetCAM(predictor, "encoder.stages.3", method="gradcam", method_kwargs={"pool_size": 2})
    runner = NnUNetCAM(predictor, "encoder.stages.3", method="segxrescam", method_kwargs={"pool_size": 2})
    assert runner.tile_step_size == predictor.tile_step_size


def test_every_unreadable_or_vector_image_is_named_in_one_error(nnunet_models, inputs, tmp_path):
    """A large input folder with several damaged files: one run names them all, not one per run."""
    good = (inputs / "case_0000.nii.gz").read_bytes()
    (inputs / "cut1_0000.nii.gz").write_bytes(good[:40])  # an interrupted copy: not even its header
    (inputs / "cut2_0000.nii.gz").write_bytes(b"not an image at all")
    _vector_image(inputs / "vector_0000.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as info:
        segment_and_explain(
            nnunet_models.model_folder(builder.SPHERE), inputs, out, "encoder.stages.3", progress=False
        )
    message = str(info.value)
    for name in ("cut1_0000.nii.gz", "cut2_0000.nii.gz", "vector_0000.nii.gz"):
        assert name in message, message
    assert "case_0000.nii.gz" not in message
    assert "Replace these files" in message and "2 values per voxel" in message
    assert not out.exists()
