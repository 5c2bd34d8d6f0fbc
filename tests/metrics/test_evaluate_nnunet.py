"""``medcam3d evaluate`` on the outputs of ``medcam3d nnunet`` for the real nnU-Net fixture model
(built and cached by ``tests/nnunet/builder.py``): the CSV's numbers equal
:func:`medcam3d.metrics.localisation.localisation_scores` computed here on the same files."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nnunet"))

import builder  # noqa: E402

from medcam3d.io import read_image  # noqa: E402
from medcam3d.metrics.evaluate import SCORE_COLUMNS, evaluate_folder  # noqa: E402
from medcam3d.metrics.localisation import localisation_scores  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sphere_model() -> Iterator[Path]:
    root = builder.cached_build((builder.SPHERE,))
    with builder.nnunet_environment(root):
        yield builder.SPHERE.model_folder(root / "nnUNet_results", "3d_fullres")


def test_evaluate_nnunet_outputs(sphere_model: Path, tmp_path: Path) -> None:
    from medcam3d.cli import main
    from medcam3d.nnunet import load_predictor, run_cam_for_prediction

    inputs, labels, out = tmp_path / "inputs", tmp_path / "labels", tmp_path / "cams"
    inputs.mkdir()
    labels.mkdir()
    for i, shape in enumerate([(20, 30, 26), (18, 28, 30)]):
        channels, label = builder.make_case(builder.SPHERE, seed=900 + i, shape=shape)
        builder.write_image(
            channels[0], inputs / f"ev_{i}_0000.nii.gz", (1.0, 1.0, 2.0), origin=(2.0, -3.0, 1.0)
        )
        builder.write_image(label, labels / f"ev_{i}.nii.gz", (1.0, 1.0, 2.0), origin=(2.0, -3.0, 1.0))
    predictor = load_predictor(sphere_model, folds=(0,), use_mirroring=False)
    for method in ("gradcam", "hirescam"):
        run_cam_for_prediction(
            predictor,
            str(inputs),
            str(out),
            "encoder.stages.3",
            1,
            method,
            save_slices=False,
            save_segmentation=True,
        )
    assert (out / "ev_0.nii.gz").is_file()  # nnU-Net's segmentation beside the maps
    evaluated = tmp_path / "evaluation"
    assert main(["evaluate", str(out), str(labels), "-o", str(evaluated), "-q"]) == 0
    with open(evaluated / "evaluation.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((r["case"], r["method"], r["class"]) for r in rows) == [
        (f"ev_{i}", m, "1") for i in range(2) for m in ("gradcam", "hirescam")
    ]
    for row in rows:
        cam, cam_geometry = read_image(out / row["map_file"])
        label, label_geometry = read_image(labels / row["mask_file"])
        assert cam_geometry.allclose(label_geometry)
        expected = localisation_scores(cam, label == 1, label_geometry.spacing_zyx)
        for name in SCORE_COLUMNS:
            assert float(row[name]) == pytest.approx(getattr(expected, name), rel=1e-12, abs=1e-12), name
        assert np.isfinite(float(row["auroc"]))
    # the nnU-Net output folder evaluated from Python: the same rows
    direct = evaluate_folder(out, labels, tmp_path / "direct", figure=False, progress=False)
    assert [str(r["energy"]) for r in direct.rows] == [r["energy"] for r in rows]
