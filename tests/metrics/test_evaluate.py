"""``medcam3d evaluate`` / :func:`medcam3d.metrics.evaluate.evaluate_folder` on real image files.

The reference numbers are :func:`medcam3d.metrics.localisation.localisation_scores` computed here on
the same files, and numpy statistics of the CSV's columns.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from medcam3d.errors import GeometryError, InputFileError, OutputPathError  # noqa: E402
from medcam3d.io import Geometry, read_image, write_image  # noqa: E402
from medcam3d.metrics.evaluate import SCORE_COLUMNS, evaluate_folder, pair_files  # noqa: E402
from medcam3d.metrics.localisation import localisation_scores  # noqa: E402

SHAPE = (12, 14, 16)
GEOMETRY = Geometry(SHAPE, spacing=(1.5, 1.0, 2.0), origin=(3.0, -2.0, 5.0))


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    z, y, x = (int(rng.integers(3, s - 5)) for s in SHAPE)
    labels[z : z + 3, y : y + 4, x : x + 3] = 1
    labels[1:3, 1:3, 1:4] = 2
    return labels


def _map(labels: np.ndarray, category: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cam = (labels == category).astype(np.float32) + noise * rng.random(SHAPE, dtype=np.float32)
    return cam / cam.max()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    maps, masks = tmp_path / "maps", tmp_path / "masks"
    maps.mkdir()
    masks.mkdir()
    for i, case in enumerate(["case_a", "case_b", "case_c"]):
        labels = _labels(i)
        ending = ".mha" if case == "case_c" else ".nii.gz"
        write_image(labels, GEOMETRY, masks / f"{case}{ending}")
        for method, noise in (("gradcam", 0.3), ("randomcam", 3.0)):
            for category in (1, 2):
                cam = _map(labels, category, 10 * i + category, noise)
                write_image(cam, GEOMETRY, maps / f"{case}_{method}_class{category}.nii.gz")
        write_image(labels, GEOMETRY, maps / f"{case}.nii.gz")  # a segmentation beside the maps: skipped
    (maps / "notes.txt").write_text("not an image")
    return maps, masks


def test_csv_equals_localisation_scores_on_the_same_files(folders: tuple[Path, Path], tmp_path: Path) -> None:
    maps, masks = folders
    out = tmp_path / "out"
    result = evaluate_folder(
        maps, masks, out, tolerance_mm=2.0, threshold=0.4, top_percent=3.0, progress=False
    )
    rows = _read_csv(out / "evaluation.csv")
    assert len(rows) == 3 * 2 * 2
    assert {p.name for p in result.skipped} == {
        "case_a.nii.gz",
        "case_b.nii.gz",
        "case_c.nii.gz",
        "notes.txt",
    }
    for row in rows:
        mask_path = masks / row["mask_file"]
        labels, mask_geometry = read_image(mask_path)
        cam, cam_geometry = read_image(maps / row["map_file"])
        category = int(row["class"])
        assert row["map_file"] == f"{row['case']}_{row['method']}_class{category}.nii.gz"
        expected = localisation_scores(
            cam,
            labels == category,
            mask_geometry.spacing_zyx,
            tolerance_mm=2.0,
            threshold=0.4,
            top_percent=3.0,
        )
        assert cam_geometry.allclose(mask_geometry)
        assert int(row["mask_voxels"]) == int(np.count_nonzero(labels == category))
        for name in SCORE_COLUMNS:
            assert float(row[name]) == pytest.approx(getattr(expected, name), rel=1e-12, abs=1e-12), name
        assert tuple(int(v) for v in row["peak_index"].split()) == expected.peak_index
    # a real map localises better than a noisy one
    by = {(r["case"], r["method"], r["class"]): r for r in rows}
    for case in ("case_a", "case_b", "case_c"):
        assert float(by[(case, "gradcam", "1")]["energy"]) > float(by[(case, "randomcam", "1")]["energy"])


def test_summary_statistics_and_figure(folders: tuple[Path, Path], tmp_path: Path) -> None:
    maps, masks = folders
    out = tmp_path / "out"
    result = evaluate_folder(maps, masks, out, progress=False)
    rows = _read_csv(out / "evaluation.csv")
    summary = json.loads((out / "evaluation_summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["cases"] == 3
    assert [(g["method"], g["class"]) for g in summary["groups"]] == [
        ("gradcam", 1),
        ("gradcam", 2),
        ("randomcam", 1),
        ("randomcam", 2),
    ]
    for group in summary["groups"]:
        for name in ("energy", "auroc", "dice_otsu", "peak_distance_mm"):
            values = np.array(
                [
                    float(r[name])
                    for r in rows
                    if r["method"] == group["method"] and int(r["class"]) == group["class"]
                ]
            )
            stats = group["scores"][name]
            q1, q3 = np.percentile(values, [25, 75])
            assert stats["n"] == 3
            assert stats["mean"] == pytest.approx(values.mean())
            assert stats["median"] == pytest.approx(np.median(values))
            assert stats["iqr"] == pytest.approx(q3 - q1)
            assert stats["min"] == pytest.approx(values.min()) and stats["max"] == pytest.approx(values.max())
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unpaired_files_are_listed_and_nothing_is_written(folders: tuple[Path, Path], tmp_path: Path) -> None:
    maps, masks = folders
    (masks / "case_b.nii.gz").unlink()
    write_image(_labels(7), GEOMETRY, masks / "case_z.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as info:
        evaluate_folder(maps, masks, out, progress=False)
    message = str(info.value)
    for name in ("case_b_gradcam_class1.nii.gz", "case_b_randomcam_class2.nii.gz", "case_z.nii.gz"):
        assert name in message
    assert "ignore-extra-masks" in message
    assert not out.exists()
    # the extra mask can be skipped on request; the unpaired maps cannot
    with pytest.raises(InputFileError, match="maps without a mask") as again:
        pair_files(maps, masks, ignore_extra_masks=True)
    assert "case_z" not in str(again.value)


def test_mismatched_grids_are_listed_and_resample_compares_in_world(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    maps, masks = folders
    labels = _labels(0)
    shifted = Geometry(SHAPE, spacing=GEOMETRY.spacing, origin=(3.0, -2.0, 7.0))  # one slice along z
    cam = _map(labels, 1, 1, 0.3)
    write_image(cam, shifted, maps / "case_a_gradcam_class1.nii.gz", overwrite=True)
    out = tmp_path / "out"
    with pytest.raises(GeometryError, match="case_a_gradcam_class1.nii.gz") as info:
        evaluate_folder(maps, masks, out, progress=False)
    assert "--resample" in str(info.value) and "case_a.nii.gz" in str(info.value)
    assert not out.exists()
    evaluate_folder(maps, masks, out, resample=True, figure=False, progress=False)
    row = next(
        r for r in _read_csv(out / "evaluation.csv") if r["map_file"] == "case_a_gradcam_class1.nii.gz"
    )
    expected = localisation_scores((cam, shifted), (labels == 1, GEOMETRY))
    assert float(row["energy"]) == pytest.approx(expected.energy)
    assert float(row["auroc"]) == pytest.approx(expected.auroc)
    assert not (out / "evaluation.png").exists()


def test_absent_class_gives_empty_cells(tmp_path: Path) -> None:
    maps, masks = tmp_path / "maps", tmp_path / "masks"
    maps.mkdir()
    masks.mkdir()
    labels = _labels(0)
    labels[labels == 2] = 0
    write_image(labels, GEOMETRY, masks / "only.nii.gz")
    write_image(_map(labels, 1, 0, 0.2), GEOMETRY, maps / "only_hirescam_class2.nii.gz")
    write_image(_map(labels, 1, 0, 0.2), GEOMETRY, maps / "only_hirescam_class1.nii.gz")
    result = evaluate_folder(maps, masks, tmp_path / "out", figure=False, progress=False)
    rows = {r["class"]: r for r in _read_csv(result.csv_path)}
    assert rows["2"]["mask_voxels"] == "0" and rows["2"]["energy"] == "" and rows["2"]["auroc"] == ""
    assert float(rows["1"]["energy"]) > 5 * np.mean(labels == 1)  # far above chance (the mask's share)
    group = next(g for g in result.summary["groups"] if g["class"] == 2)
    assert group["cases_without_class"] == 1 and group["scores"]["energy"]["mean"] is None


def test_arguments_and_existing_outputs_are_checked_first(folders: tuple[Path, Path], tmp_path: Path) -> None:
    maps, masks = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "evaluation.csv").write_text("old")
    with pytest.raises(OutputPathError, match="overwrite"):
        evaluate_folder(maps, masks, out, progress=False)
    assert (out / "evaluation.csv").read_text() == "old" and not (out / "evaluation_summary.json").exists()
    with pytest.raises(ValueError, match="tolerance_mm"):
        evaluate_folder(maps, masks, tmp_path / "new", tolerance_mm=-1, progress=False)
    with pytest.raises(ValueError, match="top_percent"):
        evaluate_folder(maps, masks, tmp_path / "new", top_percent=0, progress=False)
    with pytest.raises(InputFileError, match="does not exist"):
        evaluate_folder(tmp_path / "nope", masks, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    evaluate_folder(maps, masks, out, overwrite=True, figure=False, progress=False)
    assert len(_read_csv(out / "evaluation.csv")) == 12


def test_cli(folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medcam3d.cli import main

    maps, masks = folders
    out = tmp_path / "cli"
    assert main(["evaluate", str(maps), str(masks), "-o", str(out), "--tolerance", "2", "-q"]) == 0
    text = capsys.readouterr().out
    assert "gradcam" in text and "randomcam" in text and "evaluation.csv" in text
    rows = _read_csv(out / "evaluation.csv")
    direct = evaluate_folder(maps, masks, tmp_path / "direct", tolerance_mm=2.0, figure=False, progress=False)
    assert [r["pointing_game"] for r in rows] == [str(r["pointing_game"]) for r in direct.rows]
    (masks / "case_a.nii.gz").unlink()
    assert main(["evaluate", str(maps), str(masks), "-o", str(tmp_path / "cli2"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "case_a_gradcam_class1.nii.gz" in err and not (tmp_path / "cli2").exists()
    assert math.isfinite(float(rows[0]["auroc"]))
