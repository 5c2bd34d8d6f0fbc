"""Every ```python block in README.md and docs/*.md runs as written.

A block whose info string is ``python skip`` (or ``python notest``) is shown to users but not run
(for instance, one that needs a trained nnU-Net model folder). Blocks of one file run in order in one
namespace, in a fresh temporary working folder, so a later block may use names from an earlier one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    blocks = []
    for info, body in FENCE.findall(path.read_text(encoding="utf-8")):
        words = info.strip().split()
        if words and words[0] == "python" and not ({"skip", "notest"} & set(words[1:])):
            blocks.append(body)
    return blocks


@pytest.mark.parametrize("doc", [p for p in DOC_FILES if p.exists()], ids=lambda p: p.name)
def test_doc_examples_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(doc)
    if not blocks:
        pytest.skip(f"{doc.name} has no runnable python example")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(blocks):
        code = compile(block, f"{doc.name}[block {index}]", "exec")
        exec(code, namespace)  # noqa: S102 - running our own documentation
    assert os.getcwd() == str(tmp_path)
