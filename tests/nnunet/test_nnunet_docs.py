"""The examples of docs/nnunet.md run as written on a real (tiny) nnU-Net model.

The page's blocks need a trained model folder, so tests/test_docs.py does not run them; here the
paths, folds, layer and device are swapped for the fixture's, and everything else runs as printed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import builder
import pytest

from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "nnunet.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [
        body for info, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if info.split()[:1] == [kind]
    ]


def substitute(text: str, model: Path, inputs: Path) -> str:
    replacements = {
        "$nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres": str(model),
        "/path/to/nnUNetTrainer__nnUNetPlans__3d_fullres": str(model),
        "$MODEL": str(model),
        "imagesTs": str(inputs),
        "-f 0 1 2 3 4": "-f 0",  # one fold: the fold ensemble has its own tests (test_nnunet_predict)
        "-f 0 1 ": "-f 0 ",
        "folds=(0, 1, 2, 3, 4)": "folds=(0,)",
        "folds=(0, 1)": "folds=(0,)",
        # the last decoder stage: the backward pass stops there (the bottleneck would cost the whole decoder)
        "encoder.stages.5": "decoder.stages.2",
        "decoder.stages.4": "decoder.stages.2",
        "cuda": "cpu",
        "--target-class 1 2": "--target-class 1",  # the fixture has one foreground class
        "target_class=[1, 2]": "target_class=[1]",
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def test_the_command_line_examples_run(nnunet_models, sphere_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = nnunet_models.model_folder(builder.SPHERE)
    commands = []
    for block in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [
            line
            for line in joined.splitlines()
            if line.strip().startswith("medcam3d nnunet")
            # the 3d_fullres examples (other configurations have their own tests)
            and ("Dataset001_X" in line or "$MODEL" in line or line.split()[2:] == ["--list-methods"])
        ]
    assert len(commands) >= 3, commands
    for command in commands:
        argv = shlex.split(substitute(command, model, sphere_inputs))[2:]
        assert cli_main(argv + ["--no-progress"] if "-i" in argv else argv) == 0, command
    assert any(p.name.endswith("_gradcam_class1.nii.gz") for p in (tmp_path / "out").iterdir())


def test_the_python_examples_run(nnunet_models, sphere_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nnunet_models.model_folder(builder.SPHERE)
    code = [substitute(b, model, sphere_inputs) for b in blocks("python")]
    assert len(code) >= 2
    namespace: dict[str, object] = {}
    for index, block in enumerate(code):
        exec(compile(block, f"docs/nnunet.md[python block {index}]", "exec"), namespace)  # noqa: S102
    assert "maps" in namespace and (tmp_path / "out").is_dir()
