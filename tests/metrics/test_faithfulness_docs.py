"""The examples of the "Faithfulness" sections of docs/metrics.md run as written (in order, in one
namespace), and what they print or compute holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def faithfulness_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    blocks = []
    for section in sections:
        if section.startswith("Faithfulness"):
            blocks += [body for info, body in FENCE.findall(section) if info.split()[:1] == ["python"]]
    return blocks


def test_the_faithfulness_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = faithfulness_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"metrics.md[faithfulness {index}]", "exec"), namespace)  # noqa: S102
    assert namespace["scores"].shape == (2,)
    assert np.all(np.isfinite(namespace["combined"]))
    deletion, insertion = namespace["deletion"], namespace["insertion"]
    assert deletion.scores.shape == (2, 21) and insertion.scores.shape == (2, 21)
    # the two curves share their end points: the input itself and the all-zero input
    np.testing.assert_allclose(deletion.scores[:, 0], insertion.scores[:, -1])
    np.testing.assert_allclose(deletion.scores[:, -1], insertion.scores[:, 0])
    assert namespace["seg_deletion"].scores.shape == (2, 11)
