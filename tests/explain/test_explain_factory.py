"""``medcam3d explain`` with ``--model factory --checkpoint``: maps in each input's exact geometry,
equal to the Python API's maps computed here on independently preprocessed tensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import explain_nets
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from explain_helpers import blob_volume, load_classifier, load_segmenter, rotation

import medcam3d
from medcam3d.cli import main
from medcam3d.explain import ExplainSettings, explain_folder
from medcam3d.models import load_model, model_source
from medcam3d.sliding import SlidingSegmentationTarget, SlidingWindowCAM
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CLASSIFIER = ["--model", "explain_nets:classifier", "--model-kwargs", '{"num_classes": 3}']
SEGMENTER = ["--model", "explain_nets:segmenter", "--model-kwargs", '{"num_classes": 3}']


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zyx(path: Path) -> np.ndarray:
    """A NIfTI file's voxels in (z, y, x) order, read with nibabel."""
    return np.ascontiguousarray(np.asanyarray(nib.load(str(path)).dataobj).transpose(2, 1, 0))


def zscore(a: np.ndarray) -> np.ndarray:
    return ((a - a.mean()) / a.std()).astype(np.float32)


def centre(array: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre crop / zero pad to size³ and the start index (numpy reference)."""
    start = (np.array(array.shape) - size) // 2
    out = np.zeros((size,) * 3, np.float32)
    for idx in np.ndindex(*out.shape):
        src = np.array(idx) + start
        if np.all(src >= 0) and np.all(src < array.shape):
            out[idx] = array[tuple(src)]
    return out, start


def uncentre(map_: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for idx in np.ndindex(*map_.shape):
        dst = np.array(idx) + start
        if np.all(dst >= 0) and np.all(dst < shape):
            out[tuple(dst)] = map_[idx]
    return out


def assert_same_grid(written: Path, source: Path) -> None:
    a, b = nib.load(str(written)), nib.load(str(source))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    assert a.shape == b.shape
    for code in ("sform_code", "qform_code"):
        assert int(a.header[code]) == int(b.header[code]), code
    ia, ib = sitk.ReadImage(str(written)), sitk.ReadImage(str(source))
    assert ia.GetSize() == ib.GetSize()
    np.testing.assert_allclose(ia.GetSpacing(), ib.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ia.GetOrigin(), ib.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ia.GetDirection(), ib.GetDirection(), atol=1e-5)


def test_classifier_maps_overlay_the_inputs_and_equal_the_python_api(scans, classifier_checkpoint, tmp_path):
    out = tmp_path / "out"
    calls = explain_nets.CALLS["classifier"]
    argv = [
        "explain",
        "-i",
        str(scans),
        "-o",
        str(out),
        *CLASSIFIER,
        "--checkpoint",
        str(classifier_checkpoint),
    ]
    argv += [
        "--input-size",
        "16",
        "16",
        "16",
        "--zscore",
        "--target-class",
        "predicted",
        "1",
        "-device",
        "cpu",
    ]
    assert main([*argv, "--no-progress"]) == 0
    assert explain_nets.CALLS["classifier"] == calls + 1  # loaded once for three cases
    model = load_classifier(classifier_checkpoint)
    for scan in sorted(scans.iterdir()):
        case = scan.name.split(".")[0]
        x_np, start = centre(zscore(zyx(scan)), 16)
        x = torch.from_numpy(x_np)[None, None]
        with torch.no_grad():
            logits = model(x)[0]
        predicted = int(logits.argmax())
        for label, k in (("predicted", predicted), ("class1", 1)):
            written = out / f"{case}_gradcam_{label}.nii.gz"
            assert_same_grid(written, scan)
            header = nib.load(str(written)).header
            assert header.get_data_dtype() == np.float32
            assert (
                b"gradcam" in header["descrip"].tobytes() and b"layer=layer4" in header["descrip"].tobytes()
            )
            expected = medcam3d.GradCAM(model, ["layer4"])(x, [ClassifierOutputTarget(k)])[0]
            np.testing.assert_allclose(zyx(written), uncentre(expected, start, zyx(scan).shape), atol=2e-4)
            sidecar = json.loads((out / f"{case}_gradcam_{label}.json").read_text())
            assert sidecar["model"]["checkpoint_sha256"] == sha256(classifier_checkpoint)
            assert sidecar["inputs"][0]["sha256"] == sha256(scan)
            assert sidecar["method"] == "gradcam" and sidecar["target_layers"] == ["layer4"]
            assert sidecar["target"]["class"] == k and sidecar["target_layers_suggested"] is True
            assert sidecar["prediction"]["predicted_class"] == predicted
            assert sidecar["target_score"] == pytest.approx(float(logits[k]), abs=1e-4)
            assert sidecar["settings"]["input_size"] == [16, 16, 16] and sidecar["settings"]["zscore"] is True
            assert sidecar["medcam3d_version"] == medcam3d.__version__
    mni = nib.load(str(out / "oblique_gradcam_class1.nii.gz"))
    assert int(mni.header["sform_code"]) == 4  # an MNI-space input stays MNI


def test_orientation_is_an_exact_flip_undone_on_the_way_back(scans, classifier_checkpoint, tmp_path):
    scan = scans / "lps.nii.gz"  # stored L-P-S: RAS flips index axes x and y
    settings = ExplainSettings(orientation="RAS", percentiles=(1, 99), target_classes=(2,), progress=False)
    source = model_source(
        factory="explain_nets:classifier", model_kwargs={"num_classes": 3}, checkpoint=classifier_checkpoint
    )
    (result,) = explain_folder(scan, tmp_path / "out", source, settings, device="cpu")
    assert result.ok, result.error
    volume = zyx(scan)
    low, high = np.percentile(volume, [1, 99])
    flipped = np.ascontiguousarray(
        np.clip((volume - low) / (high - low), 0, 1)[:, ::-1, ::-1], dtype=np.float32
    )
    model = load_classifier(classifier_checkpoint)
    expected = medcam3d.GradCAM(model, ["layer4"])(
        torch.from_numpy(flipped)[None, None], [ClassifierOutputTarget(2)]
    )[0]
    written = result.maps[0].map_file
    np.testing.assert_allclose(zyx(written), expected[:, ::-1, ::-1], atol=1e-4)
    assert_same_grid(written, scan)
    steps = json.loads(result.maps[0].sidecar_file.read_text())["preprocessing"]
    assert [s["step"] for s in steps] == ["orientation", "percentiles"]


def test_spacing_resamples_in_world_coordinates_and_back(scans, classifier_checkpoint, tmp_path):
    scan = scans / "oblique.nii.gz"
    settings = ExplainSettings(spacing=(1.5, 1.5, 1.5), target_classes=(0,), progress=False, normalize="none")
    source = model_source(
        factory="explain_nets:classifier", model_kwargs={"num_classes": 3}, checkpoint=classifier_checkpoint
    )
    (result,) = explain_folder(scan, tmp_path / "out", source, settings, device="cpu")
    assert result.ok, result.error
    # reference: SimpleITK resampling onto the 1.5 mm grid with the same direction and outer faces
    image = sitk.ReadImage(str(scan), sitk.sitkFloat32)
    old = np.array(image.GetSpacing())
    size = np.maximum(np.round(np.array(image.GetSize()) * old / 1.5), 1).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((1.5 - old) / 2)
    resampled = sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(origin),
        (1.5,) * 3,
        tuple(direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    x = torch.from_numpy(sitk.GetArrayFromImage(resampled))[None, None]
    model = load_classifier(classifier_checkpoint)
    raw = medcam3d.GradCAM(model, ["layer4"], normalize=False)(x, [ClassifierOutputTarget(0)])[0]
    cam_image = sitk.GetImageFromArray(raw.astype(np.float32))
    cam_image.CopyInformation(resampled)
    back = sitk.GetArrayFromImage(sitk.Resample(cam_image, image, sitk.Transform(), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(zyx(result.maps[0].map_file), back, rtol=1e-4, atol=1e-4 * float(raw.max()))
    assert_same_grid(result.maps[0].map_file, scan)


def test_segmenter_sliding_window_equals_the_engine_and_raw_maps_stay_raw(
    scans, segmenter_checkpoint, tmp_path
):
    scan = scans / "plain.nii"
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scan), "-o", str(out), *SEGMENTER, "--checkpoint", str(segmenter_checkpoint)]
    argv += [
        "--patch-size",
        "8",
        "8",
        "8",
        "--overlap",
        "0.5",
        "--target-class",
        "1",
        "2",
        "--normalize",
        "none",
    ]
    assert main([*argv, "-device", "cpu", "--no-progress", "--target-layer", "dec"]) == 0
    model = load_segmenter(segmenter_checkpoint)
    volume = torch.from_numpy(zyx(scan))[None]
    engine = SlidingWindowCAM(
        medcam3d.GradCAM(model, ["dec"]), (8, 8, 8), step_size=0.5, normalization="none", progress=False
    )
    expected = engine(volume, [SlidingSegmentationTarget(1), SlidingSegmentationTarget(2)]).numpy()
    for index, k in enumerate((1, 2)):
        written = out / f"plain_gradcam_class{k}.nii.gz"
        np.testing.assert_allclose(zyx(written), expected[index], rtol=1e-5, atol=1e-6)
        sidecar = json.loads((out / f"plain_gradcam_class{k}.json").read_text())
        assert sidecar["map"]["normalize"] == "none" and sidecar["map"]["sliding_window"]["patch_size"] == [
            8,
            8,
            8,
        ]
        assert sidecar["target"]["kind"] == "prediction"
    labels = nib.load(str(out / "plain_segmentation.nii.gz"))
    assert labels.get_data_dtype() == np.uint8  # label maps stay integer


def test_segmenter_crop_label_map_and_target_mask(scans, segmenter_checkpoint, tmp_path):
    scan = scans / "lps.nii.gz"
    masks = tmp_path / "masks"
    masks.mkdir()
    volume = zyx(scan)
    mask = (volume > 100).astype(np.uint8) * 2  # a label map: class 2 where the blob is
    image = nib.load(str(scan))
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), image.affine), str(masks / "lps.nii.gz"))
    source = model_source(
        factory="explain_nets:segmenter", model_kwargs={"num_classes": 3}, checkpoint=segmenter_checkpoint
    )
    settings = ExplainSettings(target_classes=(2,), target_layers=("down",), progress=False)
    (result,) = explain_folder(scan, tmp_path / "out", source, settings, masks=masks, device="cpu")
    assert result.ok, result.error
    model = load_segmenter(segmenter_checkpoint)
    x = torch.from_numpy(volume)[None, None]
    expected = medcam3d.GradCAM(model, ["down"])(x, [SemanticSegmentationTarget(2, mask=(mask == 2))])[0]
    np.testing.assert_allclose(zyx(result.maps[0].map_file), expected, atol=1e-5)
    assert result.maps[0].target_kind == "mask"
    with torch.no_grad():
        predicted = model(x)[0][0].argmax(0).numpy()
    labels = tmp_path / "out" / "lps_segmentation.nii.gz"
    assert nib.load(str(labels)).get_data_dtype() == np.uint8
    np.testing.assert_array_equal(zyx(labels), predicted)
    assert_same_grid(labels, scan)


def test_mha_input_keeps_an_oblique_geometry_in_its_own_format(classifier_checkpoint, tmp_path):
    array = blob_volume((16, 18, 12), 5).transpose(2, 1, 0).copy()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-4.0, 8.0, 1.5))
    image.SetDirection(tuple(rotation(25.0, 40.0).ravel()))
    scan = tmp_path / "oblique.mha"
    sitk.WriteImage(image, str(scan))
    source = model_source(
        factory="explain_nets:classifier", model_kwargs={"num_classes": 3}, checkpoint=classifier_checkpoint
    )
    settings = ExplainSettings(output_format="input", target_classes=(1,), progress=False)
    (result,) = explain_folder(scan, tmp_path / "out", source, settings, device="cpu")
    assert result.ok, result.error
    written = result.maps[0].map_file
    assert written.name == "oblique_gradcam_class1.mha"
    back = sitk.ReadImage(str(written))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    expected = medcam3d.GradCAM(load_classifier(classifier_checkpoint), ["layer4"])(
        torch.from_numpy(array)[None, None], [ClassifierOutputTarget(1)]
    )[0]
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), expected, atol=1e-5)


def write_dicom_series(folder: Path, volume: np.ndarray) -> None:
    folder.mkdir()
    for k, plane in enumerate(volume.astype(np.int16)):
        slice_image = sitk.GetImageFromArray(plane)
        slice_image.SetSpacing((0.8, 0.8))
        tags = {
            "0008|0060": "CT",
            "0010|0020": "TEST",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.7.1",
            "0020|0013": str(k + 1),
            "0020|0032": f"-10\\-20\\{k * 2.0 + 5}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_a_dicom_series_folder_is_one_case(classifier_checkpoint, tmp_path):
    volume = blob_volume((16, 16, 12), 3).transpose(2, 1, 0)
    write_dicom_series(tmp_path / "series1", volume)
    source = model_source(
        factory="explain_nets:classifier", model_kwargs={"num_classes": 3}, checkpoint=classifier_checkpoint
    )
    (result,) = explain_folder(
        tmp_path / "series1", tmp_path / "out", source, ExplainSettings(progress=False), device="cpu"
    )
    assert result.ok, result.error and result.identifier == "series1"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series1")))
    series = reader.Execute()
    written = sitk.ReadImage(str(result.maps[0].map_file))
    assert written.GetSize() == series.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), series.GetSpacing(), atol=1e-5)


def test_a_broken_case_fails_alone(scans, classifier_checkpoint, tmp_path, capsys):
    (scans / "broken.nii.gz").write_bytes((scans / "lps.nii.gz").read_bytes()[:300])
    out = tmp_path / "out"
    argv = [
        "explain",
        "-i",
        str(scans),
        "-o",
        str(out),
        *CLASSIFIER,
        "--checkpoint",
        str(classifier_checkpoint),
    ]
    assert main([*argv, "-device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "broken" in err
    assert {p.name for p in out.glob("*.nii*")} == {
        "lps_gradcam_predicted.nii.gz",
        "oblique_gradcam_predicted.nii.gz",
        "plain_gradcam_predicted.nii.gz",
    }
    # no temporaries left (the batch layer's lock file stays: it guards the folder against a parallel run)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".medcam3d_manifest.lock"]
    assert "broken" not in json.loads((out / "medcam3d_manifest.json").read_text())["cases"]


def test_list_layers_marks_suggestions_heads_and_side_branches(segmenter_checkpoint, capsys):
    argv = ["explain", *SEGMENTER, "--checkpoint", str(segmenter_checkpoint), "--list-layers"]
    assert main([*argv, "--input-size", "16", "16", "16", "-device", "cpu"]) == 0
    text = capsys.readouterr().out
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line for line in text.splitlines()[2:]
    }
    assert lines["down"].startswith("*") and "bottleneck" in lines["down"]
    assert lines["dec"].startswith("*") and "decoder" in lines["dec"]
    assert "(the model output)" in lines["head"] and "(off the gradient path)" in lines["aux"]


def test_the_python_api_takes_a_loaded_model(scans, classifier_checkpoint, tmp_path):
    loaded = load_model(
        model_source(
            factory="explain_nets:classifier",
            model_kwargs={"num_classes": 3},
            checkpoint=classifier_checkpoint,
        ),
        device="cpu",
    )
    results = explain_folder(
        [scans / "plain.nii", scans / "lps.nii.gz"],
        tmp_path / "out",
        loaded,
        ExplainSettings(methods=("gradcam", "eigencam"), progress=False),
    )
    assert [r.identifier for r in results] == ["plain", "lps"] and all(r.ok for r in results)
    assert sorted(m.method for m in results[0].maps) == ["eigencam", "gradcam"]


def test_figures_and_viewer(scans, classifier_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scans / "lps.nii.gz"), "-o", str(out), *CLASSIFIER]
    argv += [
        "--checkpoint",
        str(classifier_checkpoint),
        "--method",
        "gradcam",
        "layercam",
        "--figures",
        "--viewer",
    ]
    assert main([*argv, "-device", "cpu", "--no-progress"]) == 0
    for method in ("gradcam", "layercam"):
        png = (out / f"lps_{method}_predicted.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = (out / "lps_viewer.html").read_text(encoding="utf-8")
    assert "gradcam class" in page and "layercam class" in page
