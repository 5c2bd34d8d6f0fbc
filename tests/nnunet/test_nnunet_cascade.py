"""3d_lowres and 3d_cascade_fullres against nnUNetv2_predict, and several classes in one run.

The fixture's MULTI dataset has a cascade planned the way nnU-Net plans one (``builder._add_cascade``):
``3d_lowres`` trained on fold ``all`` (its validation wrote the ``predicted_next_stage``
segmentations) and ``3d_cascade_fullres`` trained on fold 0 from them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import builder
import nibabel
import numpy as np
import pytest
import torch

from medcam3d.errors import ConfigurationError
from medcam3d.nnunet import load_predictor, run_cam_for_prediction
from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow

SPEC = builder.MULTI


def _nnunetv2_predict(
    fixture,
    inputs: Path,
    out: Path,
    configuration: str,
    folds: list[str],
    prev_stage: Path | None = None,
    tta: bool = True,
) -> None:
    command = shutil.which("nnUNetv2_predict")
    assert command is not None
    args = [
        command,
        "-i",
        str(inputs),
        "-o",
        str(out),
        "-d",
        str(SPEC.dataset_id),
        "-c",
        configuration,
        "-tr",
        builder.TRAINER_NAME,
        "-f",
        *folds,
        "-device",
        "cpu",
        "-npp",
        "1",
        "-nps",
        "1",
        "--disable_progress_bar",
    ]
    if prev_stage is not None:
        args += ["-prev_stage_predictions", str(prev_stage)]
    if not tta:
        args.append("--disable_tta")
    proc = subprocess.run(
        args, capture_output=True, text=True, env=dict(os.environ, **fixture.env), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def lowres_reference(nnunet_models, multi_inputs, tmp_path_factory) -> Path:
    """nnUNetv2_predict of the 3d_lowres model (fold all): the reference, and the cascade's input."""
    out = tmp_path_factory.mktemp("lowres_reference")
    _nnunetv2_predict(nnunet_models, multi_inputs, out, "3d_lowres", ["all"])
    return out


def _same_segmentation_and_geometry(ours: Path, reference: Path, inputs: Path, maps: list[str]) -> None:
    for case in ("mc0", "mc1"):
        ref = nibabel.load(reference / f"{case}.nii.gz")
        seg = nibabel.load(ours / f"{case}.nii.gz")
        assert np.asarray(ref.dataobj).sum() > 0
        np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(ref.dataobj))
        source = nibabel.load(inputs / f"{case}_0000.nii.gz")
        for name in maps:
            cam = nibabel.load(ours / f"{case}_{name}.nii.gz")
            assert cam.shape == source.shape
            np.testing.assert_allclose(cam.affine, source.affine, atol=1e-5)
            values = np.asarray(cam.dataobj)
            assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() == pytest.approx(1.0)


def test_lowres_identical_to_nnunetv2_predict(nnunet_models, multi_inputs, lowres_reference, tmp_path):
    model = nnunet_models.model_folder(SPEC, "3d_lowres")
    predictor = load_predictor(model, folds=("all",))
    assert predictor.configuration_manager.next_stage_names == ["3d_cascade_fullres"]
    assert (
        predictor.configuration_manager.spacing
        != load_predictor(nnunet_models.model_folder(SPEC), folds=(0,)).configuration_manager.spacing
    )
    ours = tmp_path / "ours"
    code = cli_main(
        [
            "-i",
            str(multi_inputs),
            "-o",
            str(ours),
            "-m",
            str(model),
            "-f",
            "all",
            "--target-layer",
            "encoder.stages.3",
            "--target-class",
            "1",
            "2",
            "-device",
            "cpu",
            "--no-progress",
            "--no-save-slices",
        ]
    )
    assert code == 0
    _same_segmentation_and_geometry(
        ours, lowres_reference, multi_inputs, ["gradcam_class1", "gradcam_class2"]
    )


def test_cascade_without_previous_stage_is_refused(nnunet_models, multi_inputs, tmp_path, capsys):
    model = nnunet_models.model_folder(SPEC, "3d_cascade_fullres")
    out = tmp_path / "ours"
    code = cli_main(
        [
            "-i",
            str(multi_inputs),
            "-o",
            str(out),
            "-m",
            str(model),
            "-f",
            "0",
            "--target-layer",
            "encoder.stages.3",
            "-device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 1
    message = capsys.readouterr().err
    assert "cascade stage" in message and "3d_lowres" in message and "-prev_stage_predictions" in message
    assert not out.exists()
    # the Python API refuses too, before any case is touched
    predictor = load_predictor(model, folds=(0,))
    with pytest.raises(ConfigurationError, match="prev_stage_predictions"):
        run_cam_for_prediction(predictor, str(multi_inputs), str(out), "encoder.stages.3", save_slices=False)
    assert not out.exists()


def test_cascade_identical_to_nnunetv2_predict(nnunet_models, multi_inputs, lowres_reference, tmp_path):
    model = nnunet_models.model_folder(SPEC, "3d_cascade_fullres")
    reference = tmp_path / "reference"
    # without mirroring on both sides (mirroring is covered by the other comparisons): 8x fewer passes
    _nnunetv2_predict(
        nnunet_models,
        multi_inputs,
        reference,
        "3d_cascade_fullres",
        ["0"],
        prev_stage=lowres_reference,
        tta=False,
    )
    ours = tmp_path / "ours"
    code = cli_main(
        [
            "-i",
            str(multi_inputs),
            "-o",
            str(ours),
            "-m",
            str(model),
            "-f",
            "0",
            "-prev_stage_predictions",
            str(lowres_reference),
            "--target-layer",
            "decoder.stages.2",
            "--disable-tta",
            "-device",
            "cpu",
            "--no-progress",
            "--no-save-slices",
        ]
    )
    assert code == 0
    _same_segmentation_and_geometry(ours, reference, multi_inputs, ["gradcam_class1"])


def test_several_classes_one_forward_equal_single_class_runs(nnunet_models, multi_inputs):
    """Two target classes in one run: one batch-1 forward per (patch, fold, mirror), and each map
    equals the map of a run for that class alone."""
    predictor = load_predictor(nnunet_models.model_folder(SPEC), folds=(0,), use_mirroring=False)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    batch_sizes: list[int] = []

    def count(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        batch_sizes.append(int(args[0].shape[0]))

    one = str(multi_inputs / "mc0_0000.nii.gz")
    handle = network.register_forward_pre_hook(count)
    try:
        both = run_cam_for_prediction(
            predictor, one, None, "encoder.stages.3", target_class=[1, 2], save_slices=False
        )[0]
        n_multi = len(batch_sizes)
        singles = [
            run_cam_for_prediction(
                predictor, one, None, "encoder.stages.3", target_class=k, save_slices=False
            )[0]
            for k in (1, 2)
        ]
    finally:
        handle.remove()
    assert set(batch_sizes) == {1}
    assert len(batch_sizes) - n_multi == 2 * n_multi  # the two single-class runs: twice the forwards
    assert all(single.shape[0] == 1 for single in singles)  # one int class: (1, *S), as nnunetv2_cam
    assert both.shape == (2, *singles[0].shape[1:])
    for k in range(2):
        np.testing.assert_array_equal(both[k], singles[k][0])
    assert not np.allclose(both[0], both[1])
