"""docs/pytorch-grad-cam.md: every python block runs as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "pytorch-grad-cam.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def test_pytorch_grad_cam_doc_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [
        body for info, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if info.strip() == "python"
    ]
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {index}]", "exec"), namespace)  # noqa: S102
