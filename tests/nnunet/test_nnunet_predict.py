"""The nnU-Net integration against nnU-Net itself: identical segmentations, exact geometry."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import builder
import matplotlib.image as plt_image
import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from medcam3d.nnunet import load_predictor, run_cam_for_prediction
from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow


def _sitk_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _same_sitk_geometry(a: Path, b: Path) -> None:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    np.testing.assert_allclose(ia.GetSpacing(), ib.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(ia.GetOrigin(), ib.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ia.GetDirection(), ib.GetDirection(), atol=1e-6)


def _nnunet_sequential(model_folder: Path, folds, inputs: Path, out: Path, tta: bool = True) -> None:
    """nnU-Net's own predictor (the sequential variant of predict_from_files: no worker processes)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=tta, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=folds)
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(inputs), str(out))


def test_segmentation_identical_to_nnunetv2_predict(nnunet_models, sphere_inputs, tmp_path):
    """The key test: the CLI (2 folds, mirroring TTA, a plan with transpose [2, 0, 1], inputs that
    need resampling) writes the same segmentation as nnUNetv2_predict, voxel for voxel, and maps
    with the input's exact geometry."""
    spec = builder.SPHERE
    model = nnunet_models.model_folder(spec)
    assert load_predictor(model, folds=(0,)).plans_manager.transpose_forward == [2, 0, 1]
    reference = tmp_path / "reference"
    nnunet_cmd = shutil.which("nnUNetv2_predict")
    assert nnunet_cmd is not None
    env = dict(os.environ, **nnunet_models.env)
    proc = subprocess.run(
        [
            nnunet_cmd,
            "-i",
            str(sphere_inputs),
            "-o",
            str(reference),
            "-d",
            str(spec.dataset_id),
            "-c",
            "3d_fullres",
            "-tr",
            builder.TRAINER_NAME,
            "-f",
            "0",
            "1",
            "-device",
            "cpu",
            "-npp",
            "1",
            "-nps",
            "1",
            "--disable_progress_bar",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = tmp_path / "ours"
    code = cli_main(
        [
            "-i",
            str(sphere_inputs),
            "-o",
            str(ours),
            "-m",
            str(model),
            "-f",
            "0",
            "1",
            "--target-layer",
            "encoder.stages.3",
            "decoder.stages.2",
            "-device",
            "cpu",
            "--no-progress",
            "--save-numpy",
        ]
    )
    assert code == 0
    for case in ("sph0", "sph1"):
        ref_seg = _sitk_array(reference / f"{case}.nii.gz")
        our_seg = _sitk_array(ours / f"{case}.nii.gz")
        assert ref_seg.sum() > 0
        np.testing.assert_array_equal(our_seg, ref_seg)
        _same_sitk_geometry(ours / f"{case}.nii.gz", reference / f"{case}.nii.gz")
        cam_file = ours / f"{case}_gradcam_class1.nii.gz"
        _same_sitk_geometry(cam_file, sphere_inputs / f"{case}_0000.nii.gz")
        cam_image = sitk.ReadImage(str(cam_file))
        assert cam_image.GetPixelID() == sitk.sitkFloat32
        cam = sitk.GetArrayFromImage(cam_image)
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        np.testing.assert_allclose(np.load(ours / f"{case}_gradcam_class1.npy"), cam, atol=1e-6)
        pngs = sorted((ours / "gradcam" / case).glob("*.png"))
        assert len(pngs) == cam.shape[0]
        # the predicted segmentation is outlined (magenta) exactly where its one-pixel contour lies
        from medcam3d.viz.figures import label_outline

        z = int(np.argmax(our_seg.reshape(our_seg.shape[0], -1).sum(axis=1)))
        pixels = plt_image.imread(pngs[z])[..., :3]
        magenta = np.all(np.isclose(pixels, (1.0, 0.0, 1.0), atol=1 / 255), axis=-1)
        assert magenta.any() and np.array_equal(magenta, label_outline(our_seg[z]))
    # nothing else than the promised outputs
    names = {p.name for p in ours.iterdir()}
    assert names == {
        "sph0.nii.gz",
        "sph1.nii.gz",
        "sph0_gradcam_class1.nii.gz",
        "sph1_gradcam_class1.nii.gz",
        "sph0_gradcam_class1.npy",
        "sph1_gradcam_class1.npy",
        "gradcam",
        "medcam3d_manifest_gradcam.json",  # the batch layer's record of the finished cases
        ".medcam3d_manifest.lock",  # its lock against a second run into the same folder
    }


def test_multichannel_two_classes_nibabel_identical(nnunet_models, multi_inputs, tmp_path):
    """Two channels grouped as nnU-Net does, two target classes in one run, NibabelIO: the
    segmentation equals nnU-Net's and each map keeps the input's affine. (Without mirroring on
    both sides, to keep the suite short: mirroring is compared in the tests above and in the
    3d_lowres test.)"""
    spec = builder.MULTI
    model = nnunet_models.model_folder(spec)
    reference = tmp_path / "reference"
    _nnunet_sequential(model, (0,), multi_inputs, reference, tta=False)
    predictor = load_predictor(model, folds=(0,), use_mirroring=False)
    maps = run_cam_for_prediction(
        predictor,
        str(multi_inputs),
        str(tmp_path / "ours"),
        "encoder.stages.3",
        target_class=[1, 2],
        method="hirescam",
        save_slices=False,
    )
    assert len(maps) == 2
    for i, case in enumerate(("mc0", "mc1")):
        ref = nibabel.load(reference / f"{case}.nii.gz")
        ours = nibabel.load(tmp_path / "ours" / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
        source = nibabel.load(multi_inputs / f"{case}_0000.nii.gz")
        for k in (1, 2):
            cam = nibabel.load(tmp_path / "ours" / f"{case}_hirescam_class{k}.nii.gz")
            np.testing.assert_allclose(cam.affine, source.affine, atol=1e-5)
            assert cam.shape == source.shape
            assert cam.get_data_dtype() == np.float32
        assert maps[i].shape == (
            2,
            *reversed(source.shape),
        )  # (T, z, y, x): nnU-Net's array order for NibabelIO
        assert not np.allclose(maps[i][0], maps[i][1])  # class-specific


def test_2d_configuration_on_3d_volume(nnunet_models, sphere_inputs, tmp_path):
    """A 2d configuration slides over the slices of a 3D volume; cam-type 2d normalises per slice."""
    spec = builder.SPHERE
    model = nnunet_models.model_folder(spec, "2d")
    reference = tmp_path / "reference"
    _nnunet_sequential(model, (0,), sphere_inputs, reference)
    predictor = load_predictor(model, folds=(0,))
    maps = run_cam_for_prediction(
        predictor,
        str(sphere_inputs / "sph1_0000.nii.gz"),
        str(tmp_path / "ours"),
        "decoder.stages.2",
        target_class=1,
        cam_type="2d",
        save_slices=False,
    )
    ref = _sitk_array(reference / "sph1.nii.gz")
    np.testing.assert_array_equal(_sitk_array(tmp_path / "ours" / "sph1.nii.gz"), ref)
    assert maps[0].shape == (1, *ref.shape) and maps[0].dtype == np.float32  # nnunetv2_cam's (1, *S)
    cam = maps[0][0]
    per_slice_max = cam.reshape(cam.shape[0], -1).max(axis=1)
    assert np.all((np.isclose(per_slice_max, 1.0)) | (per_slice_max == 0.0))


def test_mask_target_and_channel_target(nnunet_models, multi_inputs, tmp_path):
    """Ground-truth mask targets and whole-channel targets give different, valid maps."""
    model = nnunet_models.model_folder(builder.MULTI)
    predictor = load_predictor(model, folds=(0,), use_mirroring=False)
    one = str(multi_inputs / "mc0_0000.nii.gz")
    masks = {"mc0": str(multi_inputs.parent / "multi_masks" / "mc0.nii.gz")}
    by_mask = run_cam_for_prediction(
        predictor,
        one,
        None,
        "encoder.stages.2",
        target_class=1,
        target="mask",
        mask_files=masks,
        save_slices=False,
    )[0]
    whole = run_cam_for_prediction(
        predictor, one, None, "encoder.stages.2", target_class=1, target="channel", save_slices=False
    )[0]
    for cam in (by_mask, whole):
        assert np.isfinite(cam).all() and 0.0 <= cam.min() and cam.max() <= 1.0
    assert not np.allclose(by_mask, whole)
