"""The one front door (segment_and_explain): case names refused up front, successes and failures
returned, FinerCAM through the nnU-Net runner, the compatibility module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest
import torch

from medcam3d.errors import InputFileError
from medcam3d.nnunet import load_predictor, run_cam_for_prediction, segment_and_explain
from medcam3d.nnunet.cli import main as cli_main
from medcam3d.nnunet.files import Case, check_case_names, group_input_files

ENDING = ".nii.gz"


def _write_case(folder: Path, name: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    channels, _ = builder.make_case(builder.SPHERE, seed=seed, shape=(20, 20, 20))
    path = folder / f"{name}_0000{ENDING}"
    builder.write_image(channels[0], path, builder.SPHERE.spacing)
    return path


# ------------------------------------------------------------------------------ names, no model needed
@pytest.mark.parametrize("name", ["..", ".", ""])
def test_unsafe_case_names_are_refused_listing_the_file(tmp_path, name):
    bad = _write_case(tmp_path / "in", name)
    _write_case(tmp_path / "in", "fine")
    with pytest.raises(InputFileError, match="cannot name output files") as info:
        group_input_files(tmp_path / "in", ENDING, 1)
    assert str(bad) in str(info.value) and "fine_0000" not in str(info.value)


def test_names_with_path_separators_and_duplicates_are_refused(tmp_path):
    with pytest.raises(InputFileError, match="path separator"):
        check_case_names([Case("a\\b", ["x/a\\b_0000.nii.gz"]), Case("ok", ["ok_0000.nii.gz"])])
    with pytest.raises(InputFileError, match="path separator"):
        check_case_names([Case("sub/case", ["sub/case_0000.nii.gz"])])
    first = _write_case(tmp_path / "a", "case1")
    second = _write_case(tmp_path / "b", "case1", seed=1)
    _write_case(tmp_path / "b", "case2")
    with pytest.raises(InputFileError, match="share a name") as info:
        group_input_files([tmp_path / "a", tmp_path / "b"], ENDING, 1)
    message = str(info.value)
    assert str(first) in message and str(second) in message and "case2" not in message
    # the same folder twice, or a folder and one of its files, is one case, not a duplicate
    cases = group_input_files([tmp_path / "b", tmp_path / "b", second], ENDING, 1)
    assert [c.identifier for c in cases] == ["case1", "case2"]


# ------------------------------------------------------------------------------ before loading / writing
@pytest.fixture()
def unloadable_model(nnunet_models, tmp_path) -> Path:
    """A copy of the SPHERE model whose checkpoint is garbage: loading it would fail."""
    model = tmp_path / "models" / nnunet_models.model_folder(builder.SPHERE).name
    shutil.copytree(nnunet_models.model_folder(builder.SPHERE), model)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    return model


@pytest.mark.slow
def test_cli_refuses_a_case_named_dotdot_before_loading_or_writing(unloadable_model, tmp_path, capsys):
    inputs = tmp_path / "in"
    bad = _write_case(inputs, "..")
    _write_case(inputs, "fine")
    out = tmp_path / "out"
    args = ["-i", str(inputs), "-o", str(out), "-m", str(unloadable_model), "-f", "0"]
    code = cli_main([*args, "--target-layer", "encoder.stages.3", "-device", "cpu", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot name output files" in err and str(bad) in err  # not the checkpoint's error
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "models"]  # no PNGs in the root either


@pytest.mark.slow
def test_python_api_refuses_duplicate_case_names_before_writing(
    nnunet_models, unloadable_model, sphere_inputs, tmp_path
):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sphere_inputs / "sph0_0000.nii.gz", other / "sph0_0000.nii.gz")
    out = tmp_path / "out"
    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    with pytest.raises(InputFileError, match="share a name") as info:
        run_cam_for_prediction(predictor, [str(sphere_inputs), str(other)], str(out), "encoder.stages.3")
    assert str(other / "sph0_0000.nii.gz") in str(info.value)
    assert str(sphere_inputs / "sph0_0000.nii.gz") in str(info.value)
    assert not out.exists()
    with pytest.raises(InputFileError, match="share a name"):  # from a model folder: before loading it
        segment_and_explain(unloadable_model, [sphere_inputs, other], out, "encoder.stages.3")
    assert not out.exists()


# ------------------------------------------------------------------------------ successes and failures
@pytest.mark.slow
def test_front_door_returns_successes_and_failures(nnunet_models, multi_inputs, tmp_path):
    """From a model folder: the case whose mask has the wrong shape is a failure (no files), the other
    a result whose maps and written files agree; continue_on_error=False raises instead."""
    masks = tmp_path / "masks"
    shutil.copytree(multi_inputs.parent / "multi_masks", masks)
    builder.write_image(np.zeros((5, 6, 7), np.uint8), masks / "mc1.nii.gz", (1.0, 1.0, 1.0))
    out = tmp_path / "out"
    model = nnunet_models.model_folder(builder.MULTI)
    common = dict(
        target="mask", mask_files=str(masks), use_mirroring=False, save_slices=False, progress=False
    )
    batch = segment_and_explain(
        model, multi_inputs, out, "encoder.stages.3", [1, 2], "hirescam", save_numpy=True, **common
    )
    assert [c.identifier for c in batch.cases] == ["mc0", "mc1"] and not batch.ok
    assert [f.identifier for f in batch.failures] == ["mc1"] and "mask" in batch.failures[0].error.lower()
    (result,) = batch.results
    assert result.identifier == "mc0" and result.maps.shape[0] == 2 and batch.output_folder == out
    batch_files = {"medcam3d_manifest_hirescam.json", ".medcam3d_manifest.lock"}
    assert sorted(p.name for p in result.files) == sorted(
        p.name for p in out.iterdir() if p.name not in batch_files
    )
    assert sorted(
        json.loads((out / "medcam3d_manifest_hirescam.json").read_text(encoding="utf-8"))["cases"]
    ) == ["mc0"]
    for k, cls in enumerate((1, 2)):
        np.testing.assert_array_equal(np.load(out / f"mc0_hirescam_class{cls}.npy"), result.maps[k])
    with pytest.raises(Exception, match="mask"):
        segment_and_explain(
            model, multi_inputs, None, "encoder.stages.3", 1, continue_on_error=False, **common
        )


# ------------------------------------------------------------------------------ FinerCAM in the runner
@pytest.mark.slow
def test_finercam_in_the_nnunet_runner(nnunet_models):
    """FinerCAM (registered for the nnU-Net tool) runs in the nnU-Net loop with FinerCAM's comparison
    score per patch: the logits stay nnU-Net's, and the maps are those of the generic engine with
    nnU-Net's geometry, Grad-CAM and SlidingFinerTarget."""
    from medcam3d import GradCAM
    from medcam3d.nnunet import NnUNetCAM
    from medcam3d.nnunet.engine import NnUNetSlidingWindow
    from medcam3d.sliding import SlidingFinerTarget

    predictor = load_predictor(nnunet_models.model_folder(builder.MULTI), folds=(0,), use_mirroring=False)
    torch.manual_seed(0)
    data = torch.randn(2, 20, 22, 18)
    reference_logits = predictor.predict_logits_from_preprocessed_data(data).numpy()
    runner = NnUNetCAM(
        predictor, "encoder.stages.3", method="finercam", target_classes=[1, 2], method_kwargs={"alpha": 0.5}
    )
    runner.progress = False
    logits, raw = runner.predict_preprocessed(data)
    np.testing.assert_array_equal(logits, reference_logits)
    network = runner.network
    engine = NnUNetSlidingWindow(
        GradCAM(network, ["encoder.stages.3"]),
        tuple(predictor.configuration_manager.patch_size),
        step_size=0.5,
        mirror_axes=None,
        progress=False,
    )
    expected = engine.raw_mean(engine.accumulate(data, [SlidingFinerTarget(k, alpha=0.5) for k in (1, 2)]))
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-7)
    plain = NnUNetCAM(predictor, "encoder.stages.3", method="gradcam", target_classes=[1, 2], progress=False)
    assert not torch.allclose(plain.predict_preprocessed(data)[1], raw)


# ------------------------------------------------------------------------------ compatibility
def test_the_predictor_module_still_offers_its_names():
    from medcam3d.nnunet import batch, layers, loading, predictor, runner

    assert predictor.NnUNetCAM is runner.NnUNetCAM and predictor.CaseResult is runner.CaseResult
    assert predictor.run_cam_for_prediction is batch.run_cam_for_prediction
    assert predictor.load_predictor is loading.load_predictor
    assert predictor.previous_stage_of is loading.previous_stage_of
    assert predictor.suggested_layers is layers.suggested_layers
    assert set(predictor.__all__) >= {"NnUNetCAM", "CaseResult", "TargetMode", "run_cam_for_prediction"}
