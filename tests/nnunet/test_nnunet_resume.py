"""``medcam3d nnunet`` on the batch layer: resume, changed inputs, other settings, SIGKILL, flags.

Real nnU-Net model folders (tests/nnunet/builder.py), real NIfTI files, the real command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import builder
import numpy as np
import pytest

from medcam3d._atomic import is_temporary
from medcam3d.batch import BatchOptions, SettingsMismatchError
from medcam3d.nnunet import run_cam_for_prediction, segment_and_explain
from medcam3d.nnunet.cli import main as cli_main

pytestmark = pytest.mark.slow

LOCK = ".medcam3d_manifest.lock"
MANIFEST = "medcam3d_manifest_gradcam.json"  # one manifest per CAM method
LAYER = "decoder.stages.2"


def read_image(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def final_files(folder: Path) -> dict[str, bytes]:
    """Every finished file below ``folder`` (no temporaries, not the manifests or their lock).
    Tolerates files that a running process renames or removes meanwhile."""
    found: dict[str, bytes] = {}
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = Path(root) / name
            relative = path.relative_to(folder)
            if any(is_temporary(part) for part in relative.parts) or name == LOCK:
                continue
            if name.startswith("medcam3d_manifest") and name.endswith(".json"):
                continue
            try:
                found[relative.as_posix()] = path.read_bytes()
            except FileNotFoundError:  # renamed or removed by the run being watched
                continue
    return dict(sorted(found.items()))


def records(out: Path, method: str = "gradcam") -> dict[str, dict]:
    return json.loads((out / f"medcam3d_manifest_{method}.json").read_text(encoding="utf-8"))["cases"]


def cli(model: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-i",
        str(inputs),
        "-o",
        str(out),
        "-m",
        str(model),
        "-f",
        "0",
        "--disable-tta",
        "--target-layer",
        LAYER,
        "-device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.fixture()
def inputs(tmp_path: Path, sphere_inputs: Path) -> Path:
    """A private copy of the two sphere cases (the tests change files in it)."""
    folder = tmp_path / "in"
    shutil.copytree(sphere_inputs, folder)
    return folder


@pytest.fixture()
def sphere_model(nnunet_models) -> Path:
    return nnunet_models.model_folder(builder.SPHERE)


def test_a_rerun_skips_finished_cases_reads_their_maps_back_and_loads_no_model(
    tmp_path: Path, inputs: Path, sphere_model: Path, capsys
) -> None:
    out = tmp_path / "out"

    def run():
        return segment_and_explain(
            sphere_model,
            inputs,
            out,
            LAYER,
            [1],
            folds=[0],
            use_mirroring=False,
            save_slices=False,
            progress=False,
        )

    first = run()
    assert first.summary is not None and sorted(first.summary.done) == ["sph0", "sph1"]
    assert first.summary.workers == 1 and first.summary.startup_s >= 0
    written = final_files(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = run()
    assert again.summary is not None
    assert again.skipped == ["sph0", "sph1"] and not again.summary.done
    assert again.summary.workers == 0  # no worker was made: no model loaded
    assert final_files(out) == written
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK} == {
        k: v for k, v in mtimes.items() if k != LOCK
    }
    # the maps and segmentations of the skipped cases are read back from their files, unchanged
    for before, after in zip(first.results, again.results):
        assert after.skipped and after.identifier == before.identifier
        assert before.maps is not None and after.maps is not None and before.segmentation is not None
        np.testing.assert_array_equal(after.maps, before.maps)
        np.testing.assert_array_equal(after.segmentation, before.segmentation)

    # nnunetv2_cam's function resumes too, returning the same maps
    maps = run_cam_for_prediction(
        sphere_model, inputs, out, LAYER, [1], save_slices=False, use_mirroring=False
    )
    np.testing.assert_array_equal(maps[0], first.results[0].maps)

    # the command: nothing to compute, the summary says so, exit code 0
    assert cli_main(cli(sphere_model, inputs, out, "--no-save-slices", "--target-class", "1")) == 0
    assert "2 case(s): 0 done, 2 skipped" in capsys.readouterr().out


def test_a_changed_input_or_mask_recomputes_only_that_case(
    tmp_path: Path, nnunet_models, multi_inputs: Path, capsys
) -> None:
    model = nnunet_models.model_folder(builder.MULTI)
    inputs, masks = tmp_path / "in", tmp_path / "masks"
    shutil.copytree(multi_inputs, inputs)
    shutil.copytree(multi_inputs.parent / "multi_masks", masks)
    out = tmp_path / "out"
    flags = ["--no-save-slices", "--target", "mask", "--masks", str(masks), "--target-class", "1"]
    assert cli_main(cli(model, inputs, out, *flags)) == 0
    first = records(out)
    kept = (out / "mc0_gradcam_class1.nii.gz").stat().st_mtime_ns
    before = (out / "mc1_gradcam_class1.nii.gz").read_bytes()

    # case mc1's mask changes: only mc1 is computed again, and its map changes
    label = read_image(masks / "mc1.nii.gz")
    label[label == 1] = 0  # class 1 gone from the mask
    label[: label.shape[0] // 2] = np.where(
        label[: label.shape[0] // 2] == 0, 1, label[: label.shape[0] // 2]
    )
    builder.write_image(label, masks / "mc1.nii.gz", (1.0, 1.2, 0.9), origin=(-10.0, 2.0, 7.0))
    capsys.readouterr()
    assert cli_main(cli(model, inputs, out, *flags)) == 0
    assert "2 case(s): 1 done, 1 skipped" in capsys.readouterr().out
    second = records(out)
    assert second["mc0"] == first["mc0"]
    assert second["mc1"]["inputs"] != first["mc1"]["inputs"]
    assert (out / "mc0_gradcam_class1.nii.gz").stat().st_mtime_ns == kept
    assert (out / "mc1_gradcam_class1.nii.gz").read_bytes() != before

    # case mc0's second channel changes: only mc0 is computed again
    image = read_image(inputs / "mc0_0001.nii.gz")
    builder.write_image(
        image * 0.5 + 1.0, inputs / "mc0_0001.nii.gz", (1.0, 1.2, 0.9), origin=(-10.0, 2.0, 7.0)
    )
    assert cli_main(cli(model, inputs, out, *flags)) == 0
    assert "2 case(s): 1 done, 1 skipped" in capsys.readouterr().out
    assert records(out)["mc1"] == second["mc1"]


def test_other_settings_are_refused_naming_them_until_overwrite(
    tmp_path: Path, inputs: Path, sphere_model: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert cli_main(cli(sphere_model, inputs, out, "--no-save-slices")) == 0
    written = final_files(out)
    capsys.readouterr()
    code = cli_main(
        cli(sphere_model, inputs, out, "--no-save-slices", "--target-class", "1", "2", "-step_size", "0.7")
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "target_classes" in err and "tile_step_size: 0.5 -> 0.7" in err and "--overwrite" in err
    assert final_files(out) == written  # nothing touched

    # the Python API raises the error, naming the differences
    with pytest.raises(SettingsMismatchError) as info:
        segment_and_explain(
            sphere_model, inputs, out, LAYER, [1], folds=[0], use_mirroring=True, save_slices=False
        )
    assert info.value.differences == ["use_mirroring: false -> true"]

    # --overwrite with a class the model lacks: refused once the model is loaded, the folder untouched
    assert (
        cli_main(cli(sphere_model, inputs, out, "--no-save-slices", "--target-class", "2", "--overwrite"))
        == 1
    )
    assert "Target class 2" in capsys.readouterr().err
    assert final_files(out) == written and sorted(records(out)) == ["sph0", "sph1"]

    # --overwrite recomputes every case with the new settings; the old maps' names are gone
    overwrite = cli(sphere_model, inputs, out, "--no-save-slices", "--target-class", "0", "--overwrite")
    assert cli_main(overwrite) == 0
    assert sorted(final_files(out)) == [
        "sph0.nii.gz",
        "sph0_gradcam_class0.nii.gz",
        "sph1.nii.gz",
        "sph1_gradcam_class0.nii.gz",
    ]
    after_overwrite = final_files(out)

    # another method shares the folder through a manifest of its own (as nnunetv2_cam users run
    # one method after the other, then compare them with medcam3d evaluate); both resume
    hirescam = cli(
        sphere_model, inputs, out, "--no-save-slices", "--target-class", "0", "--method", "hirescam"
    )
    assert cli_main(hirescam) == 0
    assert sorted(records(out, "hirescam")) == ["sph0", "sph1"]
    files = final_files(out)
    assert {k: v for k, v in files.items() if "hirescam" not in k} == after_overwrite  # same segmentations
    assert sorted(k for k in files if "hirescam" in k) == [
        "sph0_hirescam_class0.nii.gz",
        "sph1_hirescam_class0.nii.gz",
    ]
    capsys.readouterr()
    assert cli_main(hirescam) == 0 and cli_main(overwrite[:-1]) == 0
    assert capsys.readouterr().out.count("2 case(s): 0 done, 2 skipped") == 2

    # ... but not with settings that would replace the other method's segmentations
    capsys.readouterr()
    code = cli_main(
        cli(sphere_model, inputs, out, "--no-save-slices", "--method", "layercam", "-step_size", "0.7")
    )
    err = capsys.readouterr().err
    assert code == 1 and "segmentations of a" in err and "tile_step_size: 0.5 -> 0.7" in err
    assert final_files(out) == files

    # --overwrite and --continue_prediction contradict each other
    assert cli_main(cli(sphere_model, inputs, out, "--overwrite", "--continue_prediction")) == 1
    assert "contradict" in capsys.readouterr().err


def test_a_retrained_checkpoint_refuses_to_resume(
    tmp_path: Path, inputs: Path, sphere_model: Path, capsys
) -> None:
    model = tmp_path / sphere_model.name
    shutil.copytree(sphere_model, model)
    out = tmp_path / "out"
    assert cli_main(cli(model, inputs, out, "--no-save-slices", "--continue_prediction")) == 0
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    with open(checkpoint, "ab") as handle:  # another training's file: other bytes
        handle.write(b"\0")
    capsys.readouterr()
    assert cli_main(cli(model, inputs, out, "--no-save-slices")) == 1
    err = capsys.readouterr().err
    assert "model.files" in err and "other settings" in err


def test_batch_flags_are_checked_before_any_work(
    tmp_path: Path, inputs: Path, sphere_model: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert cli_main(cli(sphere_model, inputs, out, "--workers", "0")) == 1
    assert "workers must be a whole number of at least 1" in capsys.readouterr().err
    assert cli_main(cli(sphere_model, inputs, out, "--workers", "2")) == 1  # local engine: one worker
    assert "--engine ray" in capsys.readouterr().err
    assert not out.exists()
    # the Ray engine needs the model folder and an output folder (Python API)
    with pytest.raises(Exception, match="output folder"):
        segment_and_explain(sphere_model, inputs, None, LAYER, options=BatchOptions(engine="ray", workers=2))
    assert not out.exists()


KILL_SCRIPT = """
import sys
from medcam3d.nnunet.cli import main
sys.exit(main({args!r}))
"""


def test_sigkill_at_any_moment_then_rerun_completes_only_what_is_missing(
    tmp_path: Path, nnunet_models, inputs: Path, sphere_model: Path
) -> None:
    # a third case, so that the kill can land between cases and in the middle of one
    image = read_image(inputs / "sph1_0000.nii.gz")
    builder.write_image(image[::-1].copy(), inputs / "sph2_0000.nii.gz", (2.2, 0.9, 1.1))
    reference = tmp_path / "reference"
    assert cli_main(cli(sphere_model, inputs, reference)) == 0
    expected = final_files(reference)
    assert len([n for n in expected if n.endswith(".png")]) > 10

    out = tmp_path / "out"
    args = cli(sphere_model, inputs, out)
    env = {**os.environ, **nnunet_models.env}
    for delay in (0.0, 0.35):  # in the middle of the first case's PNGs, then of a later case
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT.format(args=args)], env=env, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 240
        # wait until this run has written some PNG, then let it go on for `delay` seconds and kill it
        seen = len(final_files(out)) if out.exists() else 0
        while time.monotonic() < deadline and process.poll() is None:
            now = final_files(out) if out.exists() else {}
            if any(name.endswith(".png") for name in now) and len(now) > seen:
                break
            time.sleep(0.02)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        # nothing incomplete under a final name: every finished file is one of the reference's, byte for byte
        for name, content in final_files(out).items():
            if name in expected and not name.endswith(".png"):
                assert content == expected[name], name
        done = records(out) if (out / MANIFEST).exists() else {}
        assert len(done) < 3, "the kill came too late to test anything"

    finished_before = set(records(out)) if (out / MANIFEST).exists() else set()
    assert cli_main(args) == 0
    assert set(records(out)) == {"sph0", "sph1", "sph2"}
    assert final_files(out) == expected  # complete, and the same bytes as an uninterrupted run
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]  # stale temporaries cleaned
    assert finished_before <= set(records(out))
