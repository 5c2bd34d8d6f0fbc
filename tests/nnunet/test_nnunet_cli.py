"""The command line: nnunetv2_cam's flags, listing, bad input, failing cases."""

from __future__ import annotations

import ast
import inspect
import json
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest

from medcam3d.nnunet import run_cam_for_prediction
from medcam3d.nnunet.cli import build_parser
from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow


# The interface of nnunetv2_cam 0.1.6.1 (names only): checked on every machine, and compared with
# the installed package's own source where it is installed.
NNUNETV2_CAM_FLAGS = [
    "-i",
    "-o",
    "-m",
    "-f",
    "-chk",
    "--target-layer",
    "--target-class",
    "--method",
    "--cam-type",
    "--disable-tta",
    "-step_size",
    "-device",
    "--list-layers",
    "--list-methods",
    "--verbose",
    "--no-save-slices",
    "--save-numpy",
    "--pool-size",
    "--pool-mode",
]
NNUNETV2_CAM_PARAMETERS = [
    "predictor",
    "input_files",
    "output_folder",
    "target_layer",
    "target_class",
    "method",
    "cam_type",
    "device",
    "save_slices",
    "verbose",
    "pool_size",
    "pool_mode",
]


def _peer_source(name: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("nnunetv2_cam")
    if spec is None or spec.origin is None:
        return None
    return (Path(spec.origin).parent / name).read_text(encoding="utf-8")


def _peer_flags() -> list[str]:
    source = _peer_source("cli.py")
    if source is None:
        return NNUNETV2_CAM_FLAGS
    flags = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags += [
                a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")
            ]
    return flags


def _peer_parameters() -> list[str]:
    source = _peer_source("api.py")
    if source is None:
        return NNUNETV2_CAM_PARAMETERS
    fn = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "run_cam_for_prediction"
    )
    return [a.arg for a in fn.args.args]


def test_every_nnunetv2_cam_flag_is_accepted():
    flags = _peer_flags()
    assert "--target-layer" in flags and "-step_size" in flags
    ours = {s for action in build_parser()._actions for s in action.option_strings}
    assert set(flags) <= ours, set(flags) - ours
    assert set(NNUNETV2_CAM_FLAGS) <= ours


def test_every_nnunetv2_cam_parameter_is_accepted():
    theirs = _peer_parameters()
    ours = list(inspect.signature(run_cam_for_prediction).parameters)
    assert ours[: len(theirs)] == theirs
    assert ours[: len(NNUNETV2_CAM_PARAMETERS)] == NNUNETV2_CAM_PARAMETERS


def test_list_methods_needs_nothing_else(capsys):
    assert cli_main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "gradcam" in out and "hirescam" in out


def test_list_layers_needs_only_the_model(nnunet_models, capsys):
    assert (
        cli_main(
            [
                "--list-layers",
                "-m",
                str(nnunet_models.model_folder(builder.SPHERE)),
                "-f",
                "0",
                "-device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "encoder.stages.3" in out and "bottleneck" in out and "last decoder stage" in out
    bottleneck = next(line for line in out.splitlines() if "bottleneck" in line)
    assert "4x2x2" in bottleneck  # strides (1,1,1), (1,2,2), (2,2,2), (2,2,2) on the 16^3 patch


def test_compiled_prefix_and_module_cli(nnunet_models, sphere_inputs, tmp_path):
    """``_orig_mod.`` prefixes (compiled models) are accepted in layer names; the sub-command runs
    through ``medcam3d nnunet``."""
    from medcam3d.cli import main as top_main

    out = tmp_path / "out"
    code = top_main(
        [
            "nnunet",
            "-i",
            str(sphere_inputs / "sph1_0000.nii.gz"),
            "-o",
            str(out),
            "-m",
            str(nnunet_models.model_folder(builder.SPHERE)),
            "-f",
            "0",
            "--disable-tta",
            "--target-layer",
            "_orig_mod.encoder.stages.2",
            "--method",
            "segxrescam",
            "--pool-size",
            "2",
            "--pool-mode",
            "mean",
            "-device",
            "cpu",
            "--no-save-slices",
            "--no-progress",
            "-step_size",
            "0.7",
        ]
    )
    assert code == 0
    assert (out / "sph1_segxrescam_class1.nii.gz").is_file()


def _run(args: list[str]) -> int:
    return cli_main([*args, "-device", "cpu", "--no-progress"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_model", "does not exist"),
        ("no_fold", "Fold 3 does not exist"),
        ("no_checkpoint", "Checkpoint nope.pth not found"),
        ("bad_layer", "Did you mean"),
        ("bad_class", "Target class 5"),
        ("missing_channel", "lacks channel file"),
        ("unreadable", "Cannot read image"),
        ("unwritable", "output folder"),
    ],
)
def test_bad_input_fails_early_without_output(nnunet_models, multi_inputs, tmp_path, capsys, case, message):
    model = nnunet_models.model_folder(builder.MULTI)
    inputs = tmp_path / "in"
    shutil.copytree(multi_inputs, inputs)
    out = tmp_path / "out"
    args = [
        "-i",
        str(inputs),
        "-o",
        str(out),
        "-m",
        str(model),
        "-f",
        "0",
        "--target-layer",
        "encoder.stages.3",
    ]
    if case == "no_model":
        args[5] = str(tmp_path / "nowhere")
    elif case == "no_fold":
        args[7] = "3"
    elif case == "no_checkpoint":
        args += ["-chk", "nope.pth"]
    elif case == "bad_layer":
        args[-1] = "encoder.stage.3"
    elif case == "bad_class":
        args += ["--target-class", "1", "5"]
    elif case == "missing_channel":
        (inputs / "mc1_0001.nii.gz").unlink()
    elif case == "unreadable":
        (inputs / "mc1_0001.nii.gz").write_bytes(b"this is not an image")
    elif case == "unwritable":
        (tmp_path / "afile").write_text("x")
        args[3] = str(tmp_path / "afile" / "out")
    assert _run(args) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_failing_case_is_reported_and_others_continue(nnunet_models, multi_inputs, tmp_path, capsys):
    """A case that fails while running (its mask has the wrong shape) is reported; the other case's
    outputs are complete; the exit code is 1; the failed case leaves no files."""
    model = nnunet_models.model_folder(builder.MULTI)
    masks = tmp_path / "masks"
    shutil.copytree(multi_inputs.parent / "multi_masks", masks)
    builder.write_image(np.zeros((5, 6, 7), np.uint8), masks / "mc1.nii.gz", (1.0, 1.0, 1.0))
    out = tmp_path / "out"
    code = _run(
        [
            "-i",
            str(multi_inputs),
            "-o",
            str(out),
            "-m",
            str(model),
            "-f",
            "0",
            "--disable-tta",
            "--target-layer",
            "encoder.stages.3",
            "--target",
            "mask",
            "--masks",
            str(masks),
            "--no-save-slices",
        ]
    )
    assert code == 1
    assert "mc1" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    # the batch layer's manifest (the finished case) and its lock file, and the one case's files
    assert names == [
        ".medcam3d_manifest.lock",
        "mc0.nii.gz",
        "mc0_gradcam_class1.nii.gz",
        "medcam3d_manifest_gradcam.json",
    ]
    manifest = json.loads((out / "medcam3d_manifest_gradcam.json").read_text(encoding="utf-8"))
    assert sorted(manifest["cases"]) == ["mc0"]  # the failed case is not recorded: a re-run retries it
