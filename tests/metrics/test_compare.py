"""``medcam3d.metrics.compare``: every method x layer scored and ranked.

On the trained demo network and its planted lesion (a real method must beat RandomCAM), and on a
small 3D UNet-like segmenter with segmentation targets, also through a sliding window. The scores are
checked against the metric functions called directly on the same maps.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from medcam3d import GradCAM, HiResCAM, RandomCAM
from medcam3d.core.targets import ClassifierOutputTarget, SemanticSegmentationTarget
from medcam3d.errors import ConfigurationError, LayerNotFoundError
from medcam3d.metrics.curves import deletion_insertion
from medcam3d.metrics.localisation import localisation_scores


# ------------------------------------------------------------------------------------- demo model
@pytest.fixture(scope="module")
def demo_case() -> tuple[nn.Module, torch.Tensor, np.ndarray, tuple[float, float, float]]:
    pytest.importorskip("SimpleITK")
    from medcam3d.demo.data import (
        candidate_centres,
        lesion_weight,
        load_template,
        plant_lesion,
        random_lesion,
    )
    from medcam3d.demo.model import load_demo_model

    template = load_template()
    lesion = random_lesion(np.random.default_rng(1), candidate_centres(template))
    weight = lesion_weight(template.image.shape, template.spacing, lesion)
    volume = plant_lesion(template.image, weight, lesion.contrast)
    return load_demo_model(), torch.from_numpy(volume)[None, None], weight >= 0.5, template.spacing


@pytest.fixture(scope="module")
def demo_result(demo_case):  # type: ignore[no-untyped-def]
    from medcam3d.metrics import compare

    model, x, mask, spacing = demo_case
    return compare(
        model,
        x,
        [ClassifierOutputTarget(1)],
        ["hirescam", RandomCAM],
        ["block1"],
        mask,
        spacing=spacing,
        steps=4,
        progress=False,
    )


@pytest.mark.slow
def test_real_method_beats_randomcam_on_the_demo(demo_result, demo_case) -> None:  # type: ignore[no-untyped-def]
    model, x, mask, spacing = demo_case
    assert demo_result.rank_by == "localisation"
    assert [r.method for r in demo_result.rows] == ["hirescam", "randomcam"]
    hires, random = demo_result.row("hirescam", "block1"), demo_result.row("randomcam", "block1")
    assert hires.localisation > random.localisation + 0.2
    assert hires.deletion_auc < random.deletion_auc and hires.insertion_auc > random.insertion_auc
    by_deletion = demo_result.rerank("deletion_auc")
    assert [r.method for r in by_deletion.rows] == ["hirescam", "randomcam"]
    # the scores are the metric functions on the same maps
    for row in demo_result.rows:
        expected = localisation_scores(row.maps[0], mask, spacing)
        assert row.pointing_game == expected.pointing_game and row.energy == pytest.approx(expected.energy)
        assert row.dice_otsu == pytest.approx(expected.dice_otsu) and row.auroc == pytest.approx(
            expected.auroc
        )
        assert row.localisation == pytest.approx(
            np.mean([expected.pointing_game, expected.energy, expected.dice_otsu, expected.auroc])
        )
        deletion, insertion = deletion_insertion(
            model, x, row.maps, [ClassifierOutputTarget(1)], steps=4, progress=False
        )
        assert row.deletion_auc == pytest.approx(float(deletion.auc[0]))
        assert row.insertion_auc == pytest.approx(float(insertion.auc[0]))
    # the maps are the method's own maps on that layer
    direct = HiResCAM(model=model, target_layers=["block1"])(
        input_tensor=x, targets=[ClassifierOutputTarget(1)]
    )
    np.testing.assert_allclose(hires.maps, direct, atol=1e-6)


@pytest.mark.slow
def test_outputs_rows_csv_table_figure(demo_result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = demo_result.to_rows()
    assert [r["rank"] for r in rows] == [1, 2] and "maps" not in rows[0]
    path = demo_result.to_csv(tmp_path / "compare.csv")
    with open(path, newline="", encoding="utf-8") as stream:
        written = list(csv.DictReader(stream))
    assert [w["method"] for w in written] == ["hirescam", "randomcam"]
    assert float(written[0]["energy"]) == pytest.approx(rows[0]["energy"])
    assert written[0]["road"] == ""  # not computed: an empty cell
    text = demo_result.table()
    assert "hirescam" in text and "ranked by localisation" in text and "ROAD" not in text
    pytest.importorskip("matplotlib")
    figure = demo_result.save_figure(tmp_path / "compare.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- small models
class TinyUNet(nn.Module):
    """A 3D UNet-like segmenter: (N, 1, D, H, W) -> (N, 2, D, H, W) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.down = nn.MaxPool3d(2)
        self.enc2 = nn.Sequential(nn.Conv3d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.dec = nn.Sequential(nn.Conv3d(12, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.up(self.enc2(self.down(a)))
        return self.head(self.dec(torch.cat([a, b], dim=1)))


def _segmentation_case() -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 4:9, 6:11, 5:10] = 1.0
    with torch.no_grad():  # make class 1 respond to the bright block
        model.head.bias.copy_(torch.tensor([0.5, -0.5]))
    mask = (x[0, 0] > 0).numpy()
    return model, x, mask


def test_segmenter_with_segmentation_targets() -> None:
    from medcam3d.metrics import compare

    model, x, mask = _segmentation_case()
    target = SemanticSegmentationTarget(1, mask)
    result = compare(
        model,
        x,
        [target],
        ["gradcam", "hirescam", "randomcam"],
        ["enc1", "dec"],
        mask,
        steps=3,
        progress=False,
    )
    assert len(result.rows) == 6 and result.rank_by == "localisation"
    assert sorted(r.rank for r in result.rows) == list(range(1, 7))
    scores = [r.localisation for r in result.rows]
    assert scores == sorted(scores, reverse=True)
    for row in result.rows:
        assert row.maps.shape == (1, 16, 16, 16) and np.isfinite(row.deletion_auc)
        deletion, _ = deletion_insertion(model, x, row.maps, [target], steps=3, progress=False)
        assert row.deletion_auc == pytest.approx(float(deletion.auc[0]))
    # without masks: ranked by insertion - deletion
    plain = compare(model, x, [target], ["gradcam"], ["enc1", "dec"], steps=3, progress=False)
    assert plain.rank_by == "insertion_minus_deletion"
    values = [r.insertion_auc - r.deletion_auc for r in plain.rows]
    assert values == sorted(values, reverse=True) and np.isnan(plain.rows[0].energy)


def test_segmenter_through_a_sliding_window() -> None:
    from medcam3d.metrics.comparison import _SlidingInference, compare
    from medcam3d.sliding import SlidingSegmentationTarget, sliding_window_cam

    model, x, mask = _segmentation_case()
    # one patch as large as the volume: the sliding-window output is the model's own output
    with torch.no_grad():
        torch.testing.assert_close(
            _SlidingInference(model, (16, 16, 16), 0.5)(x), model(x), rtol=0, atol=1e-6
        )
    target = SemanticSegmentationTarget(1, mask)
    result = compare(
        model,
        x,
        [target],
        ["hirescam"],
        ["enc1"],
        mask,
        patch_size=(8, 8, 8),
        steps=2,
        shared_forward=False,
        progress=False,
    )
    row = result.rows[0]
    expected = sliding_window_cam(
        HiResCAM(model=model, target_layers=["enc1"]),
        x[0],
        (8, 8, 8),
        [SlidingSegmentationTarget(1, mask)],
        progress=False,
    )
    np.testing.assert_allclose(row.maps[0], expected[0].numpy(), atol=1e-6)
    assert np.isfinite(row.deletion_auc) and np.isfinite(row.localisation)
    with pytest.raises(ConfigurationError, match="sanity"):
        compare(model, x, [target], ["hirescam"], ["enc1"], patch_size=(8, 8, 8), sanity=True, progress=False)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_shared_forward_sanity_and_road_on_a_2d_classifier() -> None:
    from medcam3d.metrics.comparison import compare
    from medcam3d.metrics.road import NoisyLinearImputer, ROADCombined
    from medcam3d.metrics.sanity import model_randomisation_test, randomisation_groups

    torch.manual_seed(1)
    model = TinyClassifier().eval()
    x = torch.rand(2, 1, 12, 12)
    shared = compare(
        model,
        x,
        None,
        [GradCAM],
        ["features.0", "features.2"],
        steps=3,
        sanity=True,
        road=True,
        road_percentiles=(50,),
        road_imputer=NoisyLinearImputer(noise=0.0),
        progress=False,
    )
    alone = compare(
        model, x, None, [GradCAM], ["features.0", "features.2"], steps=3, shared_forward=False, progress=False
    )
    targets = [ClassifierOutputTarget(int(c)) for c in model(x).argmax(dim=1)]
    top = randomisation_groups(model, x)[0][1]
    for layer in ("features.0", "features.2"):
        a, b = shared.row("gradcam", layer), alone.row("gradcam", layer)
        np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)
        sanity = model_randomisation_test(model, GradCAM, [layer], x, targets, layers=[top], keep_maps=False)
        assert a.sanity_spearman == pytest.approx(sanity.steps[0].spearman_abs)
        road = ROADCombined([50], NoisyLinearImputer(noise=0.0))(x, a.maps, targets, model)
        assert a.road == pytest.approx(float(np.mean(road)), abs=1e-5)
    assert (
        shared.rerank("sanity_spearman").rows[0].sanity_spearman
        <= shared.rerank("sanity_spearman").rows[1].sanity_spearman
    )


def test_bad_arguments_are_refused_before_any_map() -> None:
    from medcam3d.metrics.comparison import compare

    model, x, mask = _segmentation_case()
    target = [SemanticSegmentationTarget(1, mask)]
    with pytest.raises(ConfigurationError, match="Unknown CAM method"):
        compare(model, x, target, ["nope"], ["enc1"], progress=False)
    with pytest.raises(LayerNotFoundError, match="enc1"):
        compare(model, x, target, ["gradcam"], ["encl"], progress=False)
    with pytest.raises(ConfigurationError, match="Cannot rank by 'localisation'"):
        compare(model, x, target, ["gradcam"], ["enc1"], rank_by="localisation", progress=False)
    with pytest.raises(ConfigurationError, match="twice"):
        compare(model, x, target, ["gradcam", GradCAM], ["enc1"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        compare(model, x, target, ["gradcam"], ["enc1"], np.zeros((16, 16, 16)), progress=False)
    with pytest.raises(ValueError, match="targets=None"):
        compare(model, x, None, ["gradcam"], ["enc1"], progress=False)
