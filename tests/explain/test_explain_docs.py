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


def blocks(kind: str, with_info: bool = False) -> list:
    """The bodies of the ``kind`` blocks (not ``skip``); with ``with_info``: (info words, body)."""
    found = []
    for info, body in FENCE.findall(DOC.read_text(encoding="utf-8")):
        words = info.split()
        if words[:1] == [kind] and "skip" not in words[1:]:
            found.append((words, body) if with_info else body)
    return found


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, block in enumerate(blocks("python")):
        exec(compile(block, f"docs/explain.md[python block {index}]", "exec"), namespace)  # noqa: S102
    commands = []  # (command, expected exit code): a "bash fails" block's commands exit with 1
    for words, block in blocks("bash", with_info=True):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [
            (line.strip(), 1 if "fails" in words else 0)
            for line in joined.splitlines()
            if line.strip().startswith("medcam3d explain")
        ]
    assert len(commands) == 8 and [code for _, code in commands].count(1) == 1, commands
    for command, code in commands:
        argv = shlex.split(command)[1:]
        assert main([*argv, "--no-progress"]) == code, command
    captured = capsys.readouterr()
    assert "features" in captured.out  # --list-layers marks the suggestion
    assert "2 case(s): 0 done, 2 skipped (finished before), 0 failed" in captured.out  # the re-run
    assert 'methods: ["gradcam", "hirescam"] -> ["layercam"]' in captured.err  # the refusal
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.nii.gz")) == [
        f"case_{c}_layercam_{k}.nii.gz" for c in "ab" for k in ("class1", "predicted")
    ]  # --overwrite: the new maps, the old ones removed
    for folder in ("maps", "maps_py", "seg_maps", "bundle_maps", "pickle_maps"):
        written = sorted((tmp_path / folder).glob("*.nii.gz"))
        assert written, folder
        for path in written:
            case = re.match(r"(case_[ab])_", path.name).group(1)  # type: ignore[union-attr]
            source = nib.load(str(tmp_path / "scans" / f"{case}.nii.gz"))
            image = nib.load(str(path))
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
            assert image.shape == source.shape
    assert (tmp_path / "seg_maps" / "case_a_segmentation.nii.gz").exists()
    assert nib.load(str(tmp_path / "seg_maps" / "case_a_segmentation.nii.gz")).get_data_dtype() == np.uint8
