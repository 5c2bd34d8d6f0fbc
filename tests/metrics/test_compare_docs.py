"""The examples of the sections "Which method and layer?" and "Evaluating a folder of maps" of
docs/metrics.md run as written (in order, in one namespace), and what they claim holds."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SECTIONS = ("Which method and layer?", "Evaluating a folder of maps")


def blocks() -> list[str]:
    found = []
    for section in re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M):
        if section.startswith(SECTIONS):
            found += [body for info, body in FENCE.findall(section) if info.split()[:1] == ["python"]]
    return found


@pytest.mark.slow
def test_the_compare_and_evaluate_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("SimpleITK")
    pytest.importorskip("matplotlib")
    code = blocks()
    assert len(code) == 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(code):
        exec(compile(block, f"metrics.md[compare/evaluate {index}]", "exec"), namespace)  # noqa: S102
    ranking = namespace["ranking"]
    assert (ranking.best.method, ranking.best.layer) == ("hirescam", "block1")  # as the comment says
    assert ranking.rows[-1].method == "randomcam"
    assert ranking.best.maps.shape == (1, 91, 109, 91)
    with open(tmp_path / "compare.csv", newline="", encoding="utf-8") as stream:
        assert len(list(csv.DictReader(stream))) == 4
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert namespace["by_deletion"].rank_by == "deletion_auc"
    assert len(namespace["seg_ranking"].rows) == 4
    evaluation = namespace["evaluation"]
    assert evaluation.csv_path == Path("evaluation") / "evaluation.csv" and len(evaluation.rows) == 4
    medians = {g["method"]: g["scores"]["energy"]["median"] for g in evaluation.summary["groups"]}
    assert medians["gradcam"] > medians["randomcam"]
    assert np.isfinite(medians["randomcam"])
