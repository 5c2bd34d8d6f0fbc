"""What comes out: nnunetv2_cam's return convention (float32 in [0, 1]), warnings for all-zero maps
naming the case and the class, and written files that are read back before they take their name."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest
import SimpleITK as sitk

from medcam3d.errors import OutputPathError
from medcam3d.nnunet import load_predictor, run_cam_for_prediction, segment_and_explain
from medcam3d.nnunet.files import verify_image_file, verify_segmentation_file, write_float_map, write_npy

pytestmark = pytest.mark.slow


def _case(folder: Path, name: str, spec: builder.DatasetSpec, seed: int, shape=(18, 22, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    channels, label = builder.make_case(spec, seed=seed, shape=shape)
    for c, image in enumerate(channels):
        builder.write_image(
            image, folder / f"{name}_{c:04d}.nii.gz", (1.0, 1.2, 0.9), origin=(4.0, -2.0, 1.0)
        )
    return folder


# ------------------------------------------------------------------------------ the return convention
def test_run_cam_for_prediction_returns_nnunetv2_cams_convention(nnunet_models, tmp_path):
    """One ``(1, *S)`` float32 array in [0, 1] per case (nnunetv2_cam: one ``(1, *S)`` per case, in
    the reader's array order), equal to the written map read back by SimpleITK; a list of classes
    gives ``(T, *S)``; the rich API returns the same maps."""
    inputs = _case(tmp_path / "in", "a", builder.SPHERE, 1)
    _case(inputs, "b", builder.SPHERE, 2, shape=(16, 20, 24))
    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,), use_mirroring=False)
    out = tmp_path / "out"
    maps = run_cam_for_prediction(predictor, str(inputs), str(out), "encoder.stages.3", 1, save_slices=False)
    assert isinstance(maps, list) and len(maps) == 2
    for case, cam in zip("ab", maps):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz")))  # (z, y, x)
        assert cam.shape == (1, *image.shape) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0, abs=1e-6)  # not nnunetv2_cam's 1.3
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}_gradcam_class1.nii.gz")))
        np.testing.assert_array_equal(written, cam[0])
    rich = segment_and_explain(
        predictor, inputs, None, "encoder.stages.3", 1, save_slices=False, progress=False
    ).results
    for cam, result in zip(maps, rich):
        np.testing.assert_array_equal(result.maps, cam)
    several = run_cam_for_prediction(
        predictor, str(inputs / "a_0000.nii.gz"), None, "encoder.stages.3", [0, 1]
    )
    assert several[0].shape == (2, *maps[0].shape[1:]) and several[0].dtype == np.float32
    np.testing.assert_array_equal(several[0][1], maps[0][0])


# ------------------------------------------------------------------------------ all-zero maps warn
def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("medcam3d.nnunet")
    ]


def test_an_empty_mask_and_a_missing_label_warn(nnunet_models, tmp_path, caplog):
    """target='mask': an empty mask gives an all-zero map, and so does a label map without the
    class's label (its other labels do not stand in for it); each is a warning naming the case,
    the class and the mask. A binary mask serves every class (no warning)."""
    inputs = _case(tmp_path / "in", "empty", builder.MULTI, 5)
    for name in ("other", "binary"):
        for c in range(2):
            shutil.copy(inputs / f"empty_{c:04d}.nii.gz", inputs / f"{name}_{c:04d}.nii.gz")
    image = sitk.ReadImage(str(inputs / "empty_0000.nii.gz"))
    masks = tmp_path / "masks"
    masks.mkdir()
    cube = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    cube[4:12, 6:14, 5:13] = 1
    for name, values in {"empty": cube * 0, "other": cube * 2, "binary": cube}.items():
        mask = sitk.GetImageFromArray(values)
        mask.CopyInformation(image)
        sitk.WriteImage(mask, str(masks / f"{name}.nii.gz"))
    predictor = load_predictor(nnunet_models.model_folder(builder.MULTI), folds=(0,), use_mirroring=False)
    with caplog.at_level(logging.WARNING, logger="medcam3d.nnunet"):
        batch = segment_and_explain(
            predictor,
            inputs,
            None,
            "encoder.stages.3",
            [1, 2],
            target="mask",
            mask_files=str(masks),
            progress=False,
        )
    maps = {r.identifier: r.maps for r in batch.results}
    assert not np.any(maps["empty"]) and not np.any(maps["other"][0])  # class 1: no voxel of label 1
    assert maps["other"][1].max() == pytest.approx(1.0) and maps["binary"].reshape(2, -1).max(
        1
    ) == pytest.approx(1)
    messages = _warnings(caplog)
    empty = [m for m in messages if m.startswith("Case empty, class ")]
    assert len(empty) == 2 and all("is empty" in m and str(masks / "empty.nii.gz") in m for m in empty), (
        messages
    )
    (other,) = [m for m in messages if m.startswith("Case other, ")]
    assert "class 1" in other and "no voxel of label 1 (labels present: 2)" in other
    assert not [m for m in messages if "binary" in m]


def test_a_class_predicted_nowhere_warns(nnunet_models, tmp_path, caplog):
    """A network that never predicts class 1 (its output bias for class 1 lowered by 200: a real,
    modified model): target 'prediction' has no voxel to explain, the map is all zero, and the
    warning names the case, the class and the way out (--target channel), which gives a map."""
    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,), use_mirroring=False)
    last = max(
        int(k.split(".")[2]) for k in predictor.list_of_parameters[0] if k.startswith("decoder.seg_layers.")
    )
    bias = f"decoder.seg_layers.{last}.bias"  # the full-resolution head (deep supervision is off)
    parameters = dict(predictor.list_of_parameters[0])
    parameters[bias] = parameters[bias].clone()
    parameters[bias][1] -= 200.0
    predictor.list_of_parameters = [parameters]
    inputs = _case(tmp_path / "in", "nowhere", builder.SPHERE, 7)
    with caplog.at_level(logging.WARNING, logger="medcam3d.nnunet"):
        (result,) = segment_and_explain(
            predictor, inputs, None, "encoder.stages.3", 1, progress=False
        ).results
    assert not np.any(result.segmentation == 1) and not np.any(result.maps)
    (message,) = _warnings(caplog)
    assert message.startswith("Case nowhere, class 1: the gradcam map is all zero")
    assert "predicted nowhere" in message and "--target channel" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medcam3d.nnunet"):
        (channel,) = segment_and_explain(
            predictor, inputs, None, "encoder.stages.3", 1, target="channel", progress=False
        ).results
    assert channel.maps.max() == pytest.approx(1.0) and not _warnings(caplog)


# ------------------------------------------------------------------------------ verified writes
@pytest.fixture()
def written(tmp_path):
    """A real input read by nnU-Net's SimpleITKIO, and a segmentation and a float map written for it."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    inputs = _case(tmp_path / "in", "v", builder.SPHERE, 9)
    rw = SimpleITKIO()
    image, properties = rw.read_images([str(inputs / "v_0000.nii.gz")])
    rng = np.random.default_rng(0)
    segmentation = (rng.random(image.shape[1:]) > 0.7).astype(np.uint8)
    seg_path = tmp_path / "v.nii"  # uncompressed: a cut-off file must be caught by its size
    rw.write_seg(segmentation, str(seg_path), properties)
    cam = rng.random(image.shape[1:]).astype(np.float32)
    map_path = write_float_map(cam, tmp_path / "v_gradcam_class1.nii.gz", properties, rw)
    return rw, properties, segmentation, seg_path, cam, map_path


def test_the_verifiers_accept_what_was_written_and_refuse_anything_else(written):
    rw, properties, segmentation, seg_path, cam, map_path = written
    verify_segmentation_file(seg_path, segmentation, properties, rw)
    verify_image_file(map_path, cam, properties, rw)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(map_path))), cam)
    changed = segmentation.copy()
    changed[0, 0, 0] = 1 - changed[0, 0, 0]
    with pytest.raises(OutputPathError, match="1 of .* voxels"):
        verify_segmentation_file(seg_path, changed, properties, rw)
    with pytest.raises(OutputPathError, match="shape"):
        verify_image_file(map_path, cam[:-1], properties, rw)
    with pytest.raises(OutputPathError, match="read back differently"):
        verify_image_file(map_path, cam * 0.5, properties, rw)
    moved = {**properties, "sitk_stuff": {**properties["sitk_stuff"], "origin": (0.0, 0.0, 0.0)}}
    with pytest.raises(OutputPathError, match="origin"):
        verify_image_file(map_path, cam, moved, rw)
    stretched = {**properties, "spacing": [2 * s for s in properties["spacing"]]}
    with pytest.raises(OutputPathError, match="spacing"):
        verify_segmentation_file(seg_path, segmentation, stretched, rw)
    data = seg_path.read_bytes()
    seg_path.write_bytes(data[:-100])  # cut off: ITK would zero-fill the missing voxels
    with pytest.raises(OutputPathError, match="header needs"):
        verify_segmentation_file(seg_path, segmentation, properties, rw)


def test_npy_maps_are_read_back(tmp_path):
    cam = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    path = write_npy(tmp_path / "m.npy", cam)
    back = np.load(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, cam)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy"]


def test_every_output_reads_back_as_returned(nnunet_models, tmp_path):
    """Segmentation (nibabel reader-writer), float maps, .npy and PNGs of a run: each file reads back
    as what was returned, and no temporary is left."""
    inputs = _case(tmp_path / "in", "mc", builder.MULTI, 13)
    predictor = load_predictor(nnunet_models.model_folder(builder.MULTI), folds=(0,), use_mirroring=False)
    out = tmp_path / "out"
    (result,) = segment_and_explain(
        predictor, inputs, out, "encoder.stages.3", [1, 2], "hirescam", save_numpy=True, progress=False
    ).results
    import nibabel

    assert all(p.is_file() for p in result.files) and not list(out.rglob(".medcam3d-tmp-*"))
    segmentation = np.asarray(nibabel.load(out / "mc.nii.gz").dataobj).transpose(2, 1, 0)  # NibabelIO order
    np.testing.assert_array_equal(segmentation, result.segmentation)
    for t, k in enumerate((1, 2)):
        cam = np.asarray(nibabel.load(out / f"mc_hirescam_class{k}.nii.gz").dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(cam, result.maps[t])
        np.testing.assert_array_equal(np.load(out / f"mc_hirescam_class{k}.npy"), result.maps[t])
        pngs = sorted((out / "hirescam" / "mc").glob(f"class{k}_slice_*.png"))
        assert len(pngs) == result.maps.shape[1] and set(pngs) <= set(result.files)
