"""``medcam3d explain --bundle``: a MONAI bundle built here, run on NIfTI files with non-trivial
geometry; the maps overlay the inputs exactly and equal the Python API's map on the bundle's own
preprocessed tensor, brought back by MONAI's inverse (computed here, independently)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_builder import PREPROCESSING, build_network, make_bundle
from test_explain_factory import assert_same_grid, zyx

import medcam3d
from medcam3d.cli import main

monai = pytest.importorskip("monai")
pytestmark = pytest.mark.filterwarnings(
    "ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning"
)


def reference_transform():
    from monai.bundle import ConfigParser

    parser = ConfigParser({"preprocessing": PREPROCESSING})
    return parser.get_parsed_content("preprocessing")


def test_bundle_maps_overlay_the_inputs_and_equal_the_python_api(scans, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scans / "oblique.nii.gz"), str(scans / "lps.nii.gz"), "-o", str(out)]
    argv += ["--bundle", str(bundle), "--target-class", "1", "--target", "channel", "-device", "cpu"]
    assert main([*argv, "--target-layer", "model.1.submodule", "--no-progress"]) == 0
    network = build_network()
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    transform = reference_transform()
    for case in ("oblique", "lps"):
        scan = scans / f"{case}.nii.gz"
        written = out / f"{case}_gradcam_class1.nii.gz"
        assert_same_grid(written, scan)
        data = transform({"image": str(scan)})
        image = data["image"]
        cam = medcam3d.GradCAM(network, ["model.1.submodule"])(
            image.as_tensor()[None], [lambda o: o[1].sum()]
        )[0]
        from monai.data import MetaTensor

        mt = MetaTensor(
            torch.as_tensor(cam)[None],
            meta=dict(image.meta),
            applied_operations=list(image.applied_operations),
        )
        mt.affine = image.affine.clone()
        inverted = transform.inverse({"image": mt})["image"]
        expected = np.asarray(inverted.as_tensor()[0]).transpose(2, 1, 0)
        assert expected.shape == zyx(scan).shape
        np.testing.assert_allclose(zyx(written), expected, atol=1e-4)
        sidecar = json.loads((out / f"{case}_gradcam_class1.json").read_text())
        assert sidecar["model"]["kind"] == "bundle" and sidecar["preprocessing"] == "bundle"
        assert sidecar["target"] == {"kind": "channel", "class": 1, "label": "class1"}
        labels = out / f"{case}_segmentation.nii.gz"
        assert nib.load(str(labels)).get_data_dtype() == np.uint8
        assert_same_grid(labels, scan)


def test_the_bundle_inferer_roi_becomes_the_sliding_window(scans, tmp_path):
    inferer = {
        "_target_": "SlidingWindowInferer",
        "roi_size": [16, 16, 16],
        "sw_batch_size": 1,
        "overlap": 0.25,
    }
    bundle = make_bundle(tmp_path / "bundle", inferer=inferer)
    out = tmp_path / "out"
    argv = [
        "explain",
        "-i",
        str(scans / "plain.nii"),
        "-o",
        str(out),
        "--bundle",
        str(bundle),
        "-device",
        "cpu",
    ]
    assert main([*argv, "--no-progress"]) == 0
    sidecar = json.loads((out / "plain_gradcam_class1.json").read_text())
    assert sidecar["map"]["sliding_window"]["patch_size"] == [16, 16, 16]
    assert sidecar["map"]["sliding_window"]["overlap"] == 0.25
    assert sidecar["target_layers_suggested"] and sidecar["target_layers"][0] not in ("model", "model.2")
    assert_same_grid(out / "plain_gradcam_class1.nii.gz", scans / "plain.nii")
    assert main(["explain", "--bundle", str(bundle), "--list-layers", "-device", "cpu"]) == 0
