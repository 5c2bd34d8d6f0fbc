"""The ``medcam3d demo`` end to end, on the real shipped template and weights.

The demo runs once per module (a few seconds on two cores); the checks recompute what it reports
from the files it wrote, with nibabel and numpy only.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("SimpleITK")

from medcam3d.demo import DEFAULT_METHODS, DEFAULT_SEED, DemoResult, pointing_game, run_demo  # noqa: E402
from medcam3d.demo.data import (  # noqa: E402
    MASK_FILE,
    TEMPLATE_FILE,
    Lesion,
    augment,
    candidate_centres,
    lesion_weight,
    load_template,
    random_lesion,
)
from medcam3d.demo.model import DemoLesionNet, default_weights_path, load_demo_model  # noqa: E402
from medcam3d.errors import ConfigurationError, LayerNotFoundError, OutputPathError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METHODS = list(DEFAULT_METHODS)
SEED = DEFAULT_SEED


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """The demo with its defaults (about a minute on two busy cores): the claim is about them."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(out)


def _zyx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """nibabel array (x, y, z) -> (z, y, x), plus the affine."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj).transpose(2, 1, 0), image.affine


def test_assets_ship_with_licence() -> None:
    folder = TEMPLATE_FILE.parent
    assert TEMPLATE_FILE.stat().st_size < 2_000_000
    assert (folder / "LICENSE").read_text().count("Louis Collins") >= 1
    assert "nimare" in (folder / "README.md").read_text().lower()
    assert default_weights_path().stat().st_size < 200_000
    meta = json.loads(default_weights_path().with_suffix(".json").read_text())
    assert meta["input_shape_NCDHW"] == [1, 1, 91, 109, 91]
    assert meta["validation_accuracy_augmented"] >= 0.9


def test_outputs_are_on_the_template_grid(demo: DemoResult) -> None:
    reference = nib.load(str(TEMPLATE_FILE))
    names = {"input.nii.gz", "lesion_mask.nii.gz", "summary.json", "compare.csv"}
    names |= {f"cam_{m}.nii.gz" for m in METHODS}
    assert names <= {p.name for p in demo.output_dir.iterdir()}
    for m in demo.methods:
        assert m.map_path is not None
        image = nib.load(str(m.map_path))
        assert image.shape == reference.shape == (91, 109, 91)
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
        data = np.asarray(image.dataobj)
        assert data.dtype == np.float32
        assert 0.0 <= data.min() and data.max() <= 1.0 + 1e-6 and data.max() > 0.5
    mask_image = nib.load(str(MASK_FILE))
    np.testing.assert_allclose(nib.load(str(demo.lesion_mask_path)).affine, mask_image.affine, atol=1e-4)


def test_figures_and_one_viewer_show_the_lesion(demo: DemoResult) -> None:
    if demo.viewer_path is None or demo.methods_figure is None:
        pytest.skip("medcam3d.viz is not part of this build")
    for m in demo.methods:
        assert m.figure_path is not None and m.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert m.viewer_path == demo.viewer_path
    for path in (demo.methods_figure, demo.comparison_figure):
        assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in demo.output_dir.glob("*.html")] == ["viewer.html"]  # one page, not one per method
    html = demo.viewer_path.read_text(encoding="utf-8")
    assert "<html" in html.lower() and len(html) > 10_000
    for m in demo.methods:
        assert f"{m.method} @ {m.layer}" in html  # the method selector's entries
    assert "true lesion" in html  # the ground-truth outline's legend


def test_pointing_game_matches_the_files(demo: DemoResult) -> None:
    """Peak, distance and hit recomputed independently from the written NIfTI files."""
    mask, affine = _zyx(demo.lesion_mask_path)  # type: ignore[arg-type]
    lesion = np.argwhere(mask > 0)
    assert len(lesion) == demo.lesion_voxels > 10
    centre = np.asarray(demo.lesion.centre)
    assert np.linalg.norm(lesion.mean(axis=0) - centre) < 1.5  # the mask sits where the lesion was said to be
    x, y, z, _ = affine @ np.array([centre[2], centre[1], centre[0], 1.0])
    np.testing.assert_allclose(demo.lesion_mni, (x, y, z), atol=1e-3)
    for m in demo.methods:
        cam, _ = _zyx(m.map_path)  # type: ignore[arg-type]
        peak = np.array(np.unravel_index(np.argmax(cam), cam.shape))
        assert tuple(int(v) for v in peak) == m.peak_voxel
        distance = np.sqrt((((lesion - peak) * 2.0) ** 2).sum(axis=1)).min()
        assert m.distance_mm == pytest.approx(distance)
        assert m.hit == (distance <= demo.tolerance_mm)
        px, py, pz, _ = affine @ np.array([peak[2], peak[1], peak[0], 1.0])
        np.testing.assert_allclose(m.peak_mni, (px, py, pz), atol=1e-3)


def test_the_network_and_the_default_maps_find_the_lesion(demo: DemoResult) -> None:
    """The claim of docs/demo.md: with the defaults, every map peaks INSIDE the lesion (not just
    within the tolerance), checked on the written files."""
    assert demo.probability > 0.9
    assert demo.probability_without_lesion < 0.5
    assert demo.target_layer == "auto"
    mask, _ = _zyx(demo.lesion_mask_path)  # type: ignore[arg-type]
    for m in demo.methods:
        cam, _ = _zyx(m.map_path)  # type: ignore[arg-type]
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert mask[peak] == 1, f"{m.method} on {m.layer} peaks outside the lesion"
        assert m.inside and m.distance_mm == 0.0
        # the layer is the one the comparison ranked best for this method
        assert m.layer == demo.comparison.best_for(m.method).layer
    assert demo.inside == demo.hits == len(METHODS)


def test_the_ranking(demo: DemoResult) -> None:
    comparison = demo.comparison
    assert comparison.rank_by == "localisation"
    compared = {r.method for r in comparison.rows}
    assert compared == set(METHODS) | {"gradcam", "gradcam++", "randomcam"}
    assert {r.layer for r in comparison.rows} == {"block1", "block2", "features"}
    best_random = comparison.best_for("randomcam")
    for method in METHODS:
        assert comparison.best_for(method).localisation > best_random.localisation
    with open(demo.comparison_csv, newline="", encoding="utf-8") as stream:  # type: ignore[arg-type]
        import csv

        rows = list(csv.DictReader(stream))
    assert [(r["method"], r["layer"]) for r in rows] == [(r.method, r.layer) for r in comparison.rows]


def test_summary_json(demo: DemoResult) -> None:
    summary = json.loads(demo.summary_path.read_text())  # type: ignore[union-attr]
    assert summary["seed"] == SEED
    assert [m["method"] for m in summary["methods"]] == METHODS
    assert [m["layer"] for m in summary["methods"]] == [m.layer for m in demo.methods]
    assert summary["hits"] == demo.hits and summary["inside"] == demo.inside
    assert len(summary["comparison"]) == len(demo.comparison.rows)
    assert demo.seconds < 180


def test_same_seed_same_lesion(tmp_path: Path) -> None:
    template = load_template()
    centres = candidate_centres(template)
    a = random_lesion(np.random.default_rng(3), centres)
    b = random_lesion(np.random.default_rng(3), centres)
    assert a == b
    weight = lesion_weight(template.image.shape, template.spacing, a)
    inside = weight >= 0.5
    assert template.mask[inside].mean() > 0.95  # planted inside the brain


def test_lesion_weight_is_an_ellipsoid() -> None:
    lesion = Lesion(centre=(10.0, 10.0, 10.0), radii_mm=(6.0, 6.0, 6.0), contrast=0.5)
    weight = lesion_weight((21, 21, 21), (2.0, 2.0, 2.0), lesion)
    assert (
        weight[10, 10, 10] > 0.99
        and weight[10, 10, 13] == pytest.approx(0.5)
        and weight[10, 10, 14] < 0.15
        and weight[10, 10, 12] > 0.85
    )
    assert weight[0, 0, 0] == 0.0


def test_augment_is_deterministic_and_keeps_shape() -> None:
    volume = np.random.default_rng(0).random((12, 14, 16), dtype=np.float32)
    a, shift_a, flip_a = augment(volume, np.random.default_rng(5))
    b, shift_b, flip_b = augment(volume, np.random.default_rng(5))
    assert a.shape == volume.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert shift_a == shift_b and flip_a == flip_b


def test_pointing_game_unit() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[4:6, 4:6, 4:6] = True
    cam = np.zeros((10, 10, 10), np.float32)
    cam[5, 5, 9] = 1.0  # 4 voxels = 8 mm from the nearest lesion voxel (5, 5, 5)
    assert pointing_game(cam, mask, (2.0, 2.0, 2.0), tolerance_mm=8.0) == ((5, 5, 9), 8.0, True)
    assert pointing_game(cam, mask, (2.0, 2.0, 2.0), tolerance_mm=7.9)[2] is False
    cam[4, 4, 4] = 2.0
    assert pointing_game(cam, mask, (1.0, 1.0, 1.0), tolerance_mm=0.0) == ((4, 4, 4), 0.0, True)
    with pytest.raises(ConfigurationError):
        pointing_game(cam[:5], mask, (1.0, 1.0, 1.0))


def test_model_loads_with_weights_only() -> None:
    model = load_demo_model()
    assert isinstance(model, DemoLesionNet) and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 91, 109, 91)).shape == (1, 2)


def test_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("x")
    with pytest.raises(OutputPathError, match="overwrite"):
        run_demo(tmp_path / "full", methods=["gradcam"])
    with pytest.raises(ConfigurationError, match="Available"):
        run_demo(tmp_path / "new", methods=["no-such-cam"])
    with pytest.raises(ConfigurationError, match="reference"):
        run_demo(tmp_path / "new", reference_methods=["no-such-cam"])
    with pytest.raises(ConfigurationError, match="steps"):
        run_demo(tmp_path / "new", steps=-1)
    assert not (tmp_path / "new").exists()


def test_bad_layer_writes_nothing_and_the_next_run_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10: '--layer nope' used to write input.nii.gz and lesion_mask.nii.gz, then fail, and the
    next run into that folder was refused as non-empty."""
    from medcam3d.cli import main

    out = tmp_path / "out"
    quick = ["--no-viewer", "--no-figures", "--compare-with", "none", "--steps", "0"]
    assert main(["demo", "-o", str(out), "--layer", "nope", *quick]) == 1
    assert "no layer named 'nope'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(LayerNotFoundError):
        run_demo(out, candidate_layers=["block1", "blokc2"])
    out.mkdir()
    with pytest.raises(LayerNotFoundError):
        run_demo(out, target_layer="features.9")
    assert not any(out.iterdir())
    assert main(["demo", "-o", str(out), "--layer", "features", "--methods", "gradcam", *quick]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_layer"] == "features" and summary["methods"][0]["layer"] == "features"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medcam3d.cli import main

    out = tmp_path / "cli_out"
    quick = ["--no-viewer", "--no-figures", "--compare-with", "randomcam", "--layers", "block1,features"]
    code = main(["demo", "-o", str(out), "--methods", "gradcam", "--steps", "2", "--seed", "11", *quick])
    text = capsys.readouterr().out
    assert code == 0
    assert "pointing game: " in text and "gradcam" in text and "MNI (x, y, z)" in text
    assert "which method, which layer?" in text and "randomcam" in text and "ranked by localisation" in text
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['hits']}/1 hit" in text and f"{summary['inside']}/1 peaks inside" in text
    assert {(r["method"], r["layer"]) for r in summary["comparison"]} == {
        (m, layer) for m in ("gradcam", "randomcam") for layer in ("block1", "features")
    }
    assert not list(out.glob("*.png")) and not list(out.glob("*.html"))
    # a second run into the same folder is refused without --overwrite
    quick = ["--no-viewer", "--no-figures", "--compare-with", "none", "--layer", "features", "--steps", "0"]
    assert main(["demo", "-o", str(out), "--methods", "gradcam", *quick]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert main(["demo", "-o", str(out), "--methods", "gradcam", "--overwrite", *quick]) == 0


def test_training_script_is_deterministic(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "train_demo_model", ROOT / "scripts" / "train_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_demo_model", module)
    spec.loader.exec_module(module)
    states = []
    for run_name, pointing in (("a", "1"), ("b", "0")):  # the pointing game runs after training
        out = tmp_path / run_name / "w.pt"
        args = ["--steps", "2", "--batch-size", "2", "--val-size", "2", "--width", "2"]
        args += ["--pointing-game", pointing, "--output", str(out)]
        assert module.main(args) == 0
        states.append(torch.load(out, weights_only=True))
        assert json.loads(out.with_suffix(".json").read_text())["steps"] == 2
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)


def test_cli_help_lists_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    from medcam3d.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--output",
        "--methods",
        "--seed",
        "--overwrite",
        "--no-viewer",
        "--no-figures",
        "--layer",
        "--layers",
        "--compare-with",
        "--steps",
    ):
        assert option in text
