"""A model folder is data, not code: checkpoints are read with torch.load(weights_only=True), a
crafted one is refused (its payload never runs) unless --trust-checkpoint, and the safely built
predictor equals the one nnU-Net's own loader builds."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import builder
import numpy as np
import pytest
import torch

from medcam3d.errors import ConfigurationError
from medcam3d.nnunet import load_predictor, run_cam_for_prediction, segment_and_explain
from medcam3d.nnunet.cli import main as cli_main
from medcam3d.nnunet.loading import load_checkpoint

pytestmark = pytest.mark.slow


class _Payload:
    """What a crafted checkpoint carries: unpickling it runs code (here: it writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


@pytest.fixture()
def crafted_model(nnunet_models, tmp_path) -> tuple[Path, Path]:
    """A copy of the SPHERE 3d_fullres model whose fold-0 checkpoint is the real one plus a payload."""
    model = tmp_path / "models" / nnunet_models.model_folder(builder.SPHERE).name
    shutil.copytree(nnunet_models.model_folder(builder.SPHERE), model)
    marker = tmp_path / "PAYLOAD_RAN"
    checkpoint_file = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)  # our own fixture
    checkpoint["logging"]["note"] = _Payload(marker)
    torch.save(checkpoint, checkpoint_file)
    return model, marker


def test_the_payload_is_real(crafted_model):
    """The control: unpickling the crafted checkpoint does run its payload."""
    model, marker = crafted_model
    torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert marker.read_text() == "the payload ran"


def _sphere_input(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    channels, _ = builder.make_case(builder.SPHERE, seed=3, shape=(18, 20, 20))
    builder.write_image(channels[0], folder / "c_0000.nii.gz", builder.SPHERE.spacing)
    return folder


@pytest.mark.parametrize("list_layers", [False, True], ids=["run", "list-layers"])
def test_cli_refuses_a_crafted_checkpoint_without_running_it(crafted_model, tmp_path, capsys, list_layers):
    model, marker = crafted_model
    out = tmp_path / "out"
    if list_layers:
        args = ["--list-layers", "-m", str(model), "-f", "0", "-device", "cpu"]
    else:
        inputs = _sphere_input(tmp_path / "in")
        args = ["-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0"]
        args += ["--target-layer", "encoder.stages.3", "-device", "cpu", "--no-progress"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "GLOBAL exec" in err and "checkpoint_final.pth" in err, err
    assert not marker.exists()
    assert not out.exists()


def test_python_api_refuses_a_crafted_checkpoint_without_running_it(crafted_model, tmp_path):
    model, marker = crafted_model
    inputs = _sphere_input(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError, match="trust-checkpoint"):
        load_predictor(model, folds=(0,))
    with pytest.raises(ConfigurationError, match="trust_checkpoint=True"):
        segment_and_explain(model, inputs, out, "encoder.stages.3", progress=False)
    with pytest.raises(ConfigurationError, match="trust-checkpoint"):
        run_cam_for_prediction(str(model), str(inputs), str(out), "encoder.stages.3", save_slices=False)
    with pytest.raises(ConfigurationError, match="trust-checkpoint"):
        load_checkpoint(model / "fold_0" / "checkpoint_final.pth")
    assert not marker.exists() and not out.exists()


def test_trust_checkpoint_unpickles(crafted_model, tmp_path, capsys):
    """The explicit flag loads the file the safe loader refused (and so its payload runs: that is
    what trusting a file means)."""
    model, marker = crafted_model
    args = ["--list-layers", "-m", str(model), "-f", "0", "-device", "cpu", "--trust-checkpoint"]
    assert cli_main(args) == 0
    assert "encoder.stages.3" in capsys.readouterr().out
    assert marker.read_text() == "the payload ran"
    marker.unlink()
    predictor = load_predictor(model, folds=(0,), trust_checkpoint=True)
    assert marker.exists() and predictor.network is not None


def _same_predictor(ours, theirs) -> None:
    assert type(ours.network) is type(theirs.network)
    assert ours.trainer_name == theirs.trainer_name
    assert ours.allowed_mirroring_axes == theirs.allowed_mirroring_axes
    assert ours.configuration_manager.configuration == theirs.configuration_manager.configuration
    assert ours.plans_manager.plans == theirs.plans_manager.plans and ours.dataset_json == theirs.dataset_json
    assert len(ours.list_of_parameters) == len(theirs.list_of_parameters)
    for mine, reference in zip(ours.list_of_parameters, theirs.list_of_parameters):
        assert list(mine) == list(reference)
        for key in reference:
            assert torch.equal(mine[key], reference[key]), key
    current, expected = ours.network.state_dict(), theirs.network.state_dict()
    assert all(torch.equal(current[k], expected[k]) for k in expected)  # the first fold's weights loaded


@pytest.mark.parametrize(
    "spec, configuration, folds",
    [
        (builder.SPHERE, "3d_fullres", (0, 1)),
        (builder.SPHERE, "2d", (0,)),
        (builder.MULTI, "3d_lowres", ("all",)),
        (builder.MULTI, "3d_cascade_fullres", (0,)),
    ],
)
def test_safe_loader_builds_what_nnunet_builds(nnunet_models, spec, configuration, folds):
    """Real nnU-Net checkpoints hold numpy scalars, which torch.load(weights_only=True) refuses by
    itself; with the allow-list they load, and the predictor equals nnU-Net's own
    (initialize_from_trained_model_folder, which unpickles with weights_only=False)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model = nnunet_models.model_folder(spec, configuration)
    first = model / f"fold_{folds[0]}" / "checkpoint_final.pth"
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(first, map_location="cpu", weights_only=True)
    theirs = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    theirs.initialize_from_trained_model_folder(str(model), use_folds=folds)
    _same_predictor(load_predictor(model, folds=folds), theirs)


def test_checkpoints_saved_with_numpy_1_load(nnunet_models, tmp_path):
    """Most nnU-Net checkpoints were written under numpy 1.x, whose scalars pickle as
    numpy.core.multiarray.scalar: the same checkpoint with that name loads, with the same values."""
    source = nnunet_models.model_folder(builder.SPHERE) / "fold_0" / "checkpoint_final.pth"
    legacy = tmp_path / "legacy.pth"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(legacy, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(name, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(str(legacy))
    ours = load_checkpoint(legacy)
    reference = torch.load(source, map_location="cpu", weights_only=False)
    assert isinstance(ours["_best_ema"], np.floating) and ours["_best_ema"] == reference["_best_ema"]
    assert ours["trainer_name"] == reference["trainer_name"]
    for key, value in reference["network_weights"].items():
        assert torch.equal(ours["network_weights"][key], value)


def test_numpy_arrays_in_a_checkpoint_load(tmp_path):
    """Some nnU-Net versions log numpy arrays; those load too (no pickled code involved)."""
    path = tmp_path / "checkpoint_final.pth"
    logged = {"dice": np.arange(4, dtype=np.float64), "ema": [np.float32(0.5)]}
    init_args = {"configuration": "3d_fullres", "device": torch.device("cpu")}
    torch.save(
        {
            "network_weights": {"w": torch.ones(3)},
            "trainer_name": "T",
            "init_args": init_args,
            "logging": logged,
        },
        path,
    )
    loaded = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["logging"]["dice"], logged["dice"])
    assert loaded["logging"]["ema"] == [np.float32(0.5)] and loaded["init_args"] == init_args


def test_a_file_that_is_no_nnunet_checkpoint_is_named(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, path)  # a plain state dict
    with pytest.raises(ConfigurationError, match="not an nnU-Net v2 checkpoint.*network_weights"):
        load_checkpoint(path)


def test_a_crafted_later_fold_is_refused_too(crafted_model, tmp_path):
    """The predictor is never initialised by nnU-Net's loader: a fold whose checkpoint needs
    unpickling, listed after a clean one, is refused before the network is built."""
    model, marker = crafted_model
    shutil.copy(model / "fold_1" / "checkpoint_final.pth", tmp_path / "clean.pth")
    shutil.copy(model / "fold_0" / "checkpoint_final.pth", model / "fold_1" / "checkpoint_final.pth")
    shutil.copy(tmp_path / "clean.pth", model / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ConfigurationError, match=r"fold_1.*trust-checkpoint"):
        load_predictor(model, folds=(0, 1))
    assert not marker.exists()


def test_a_cut_off_legacy_checkpoint_is_damaged_not_refused(tmp_path):
    """A truncated checkpoint in torch's legacy (non-zip) format fails inside the weights-only
    unpickler; it is reported as damaged, not as a file that pickles code."""
    path = tmp_path / "checkpoint_final.pth"
    checkpoint = {
        "network_weights": {"w": torch.ones(3)},
        "trainer_name": "T",
        "init_args": {"configuration": "c"},
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    assert list(load_checkpoint(path)) == list(checkpoint)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ConfigurationError, match="truncated or damaged") as info:
        load_checkpoint(path)
    assert "trust" not in str(info.value)
