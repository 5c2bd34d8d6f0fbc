"""docs/explain.md runs as written: its Python blocks (which make the scans, checkpoints and the
bundle) and then every ``medcam3d explain`` command of its bash blocks, in one temporary folder.

(tests/test_docs.py runs the Python blocks alone too.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcam3d.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")]

DOC = Path(__file__).resolve().parents[2] / "docs" / "explain.md"
FENCE = re.compile(r"^\s*```([^\n]*)\n(.*?)^\s*```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    found = []
    for info, body in FENCE.findall(DOC.read_text(encoding="utf-8")):
        words = info.split()
        if words[:1] == [kind] and "skip" not in words[1:]:
            found.append(body)
    return found


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(blocks("python")):
        exec(compile(block, f"docs/explain.md[python block {index}]", "exec"), namespace)  # noqa: S102
    commands = []
    for block in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [
            line.strip() for line in joined.splitlines() if line.strip().startswith("medcam3d explain")
        ]
    assert len(commands) == 5, commands
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main([*argv, "--no-progress"]) == 0, command
    assert "features" in capsys.readouterr().out  # --list-layers marks the suggestion
    for folder in ("maps", "maps_py", "seg_maps", "bundle_maps", "pickle_maps"):
        written = sorted((tmp_path / folder).glob("*.nii.gz"))
        assert written, folder
        for path in written:
            case = path.name.split("_gradcam")[0].split("_hirescam")[0].split("_segmentation")[0]
            source = nib.load(str(tmp_path / "scans" / f"{case}.nii.gz"))
            image = nib.load(str(path))
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
            assert image.shape == source.shape
    assert (tmp_path / "seg_maps" / "case_a_segmentation.nii.gz").exists()
    assert nib.load(str(tmp_path / "seg_maps" / "case_a_segmentation.nii.gz")).get_data_dtype() == np.uint8
