"""The manifest and resume on the local engine, with a real 3D CNN + GradCAM writing NIfTI maps."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import batch_helpers as helpers
import nibabel as nib
import numpy as np
import pytest
import torch

from medcam3d._atomic import TEMP_PREFIX, TEMP_SUFFIX, _host_tag
from medcam3d.batch import (
    MANIFEST_NAME,
    BatchOptions,
    SettingsMismatchError,
    format_summary,
    plan_batch,
    run_batch,
)
from medcam3d.errors import InputFileError, OutputPathError

SETTINGS = {"method": "gradcam", "layer": "conv2", "classes": (1,), "model": Path("/models/tiny.pt")}


def run(cases, out: Path, log: Path, settings=SETTINGS, **kwargs):
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in BatchOptions.__dataclass_fields__}
    factory = functools.partial(helpers.CamWorker, log=str(log), **kwargs)
    return run_batch(cases, factory, out, settings, BatchOptions(quiet=True, **options))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_gradcam(scan: Path) -> np.ndarray:
    """Grad-CAM by hand: mean gradient per channel of conv2's ReLU input, weighted sum, ReLU,
    trilinear upsampling to the scan, min-max normalisation; (z, y, x)."""
    model = helpers.make_model()
    image = nib.load(str(scan))
    volume = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)  # nibabel x,y,z -> z,y,x
    x = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    a = model.conv2(torch.relu(model.conv1(x)))
    score = model.fc(torch.relu(a).mean(dim=(2, 3, 4)))[0, 1]
    (g,) = torch.autograd.grad(score, a)
    cam = torch.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=volume.shape, mode="trilinear", align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


def read_map(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def test_first_run_writes_outputs_and_a_manifest_that_describes_them(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 4)
    out, log = tmp_path / "out", tmp_path / "log"
    summary = run(cases, out, log)
    assert summary.done == [c.identifier for c in cases] and summary.ok and summary.exit_code == 0
    assert helpers.calls(log) == summary.done and helpers.calls(log, "init") == ["-"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["settings"] == {
        "classes": [1],
        "layer": "conv2",
        "method": "gradcam",
        "model": "/models/tiny.pt",
    }
    for case in cases:
        record = manifest["cases"][case.identifier]
        scan = case.files[0]
        assert record["inputs"] == [
            {
                "path": str(scan.resolve()),
                "size": os.stat(scan).st_size,
                "mtime_ns": os.stat(scan).st_mtime_ns,
                "sha256": sha256(scan),
            }
        ]
        names = [o["path"] for o in record["outputs"]]
        assert names == [f"{case.identifier}_gradcam.nii.gz", f"{case.identifier}_scores.npy"]
        assert [o["size"] for o in record["outputs"]] == [os.stat(out / n).st_size for n in names]
        assert {"hash_s", "prepare_s", "wait_s", "process_s"} <= set(record["timings"])
        np.testing.assert_allclose(read_map(out / names[0]), reference_gradcam(scan), atol=1e-5)


def test_rerun_skips_everything_without_making_a_worker(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 3)
    out, log = tmp_path / "out", tmp_path / "log"
    run(cases, out, log)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    log.unlink()
    summary = run(cases, out, log)
    assert summary.skipped == [c.identifier for c in cases] and not summary.done and summary.ok
    assert not log.exists()  # the model was not even loaded
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST_NAME} == {
        k: v for k, v in before.items() if k != MANIFEST_NAME
    }
    assert "0 done, 3 skipped" in format_summary(summary)


def test_changed_input_missing_or_truncated_output_recompute_only_that_case(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 5)
    out, log = tmp_path / "out", tmp_path / "log"
    run(cases, out, log)
    helpers.write_scan(
        cases[1].files[0], np.random.default_rng(7).normal(size=helpers.SHAPE).astype(np.float32)
    )
    (out / "case_002_gradcam.nii.gz").unlink()
    with open(out / "case_003_scores.npy", "r+b") as stream:
        stream.truncate(10)
    os.utime(cases[4].files[0], ns=(1, 1))  # touched: same content, other time -> re-hashed, still finished
    log.unlink()
    plan = plan_batch(cases, out, SETTINGS)
    assert plan.reasons == {
        "case_001": "inputs changed",
        "case_002": "outputs missing",
        "case_003": "outputs missing",
    }
    summary = run(cases, out, log)
    assert summary.done == ["case_001", "case_002", "case_003"]
    assert summary.skipped == ["case_000", "case_004"]
    assert helpers.calls(log) == ["case_001", "case_002", "case_003"]
    for case in cases:
        np.testing.assert_allclose(
            read_map(out / f"{case.identifier}_gradcam.nii.gz"), reference_gradcam(case.files[0]), atol=1e-5
        )
    record = json.loads((out / MANIFEST_NAME).read_text())["cases"]["case_001"]
    assert record["inputs"][0]["sha256"] == sha256(cases[1].files[0])


def test_verify_hashes_rereads_inputs_whose_stat_is_unchanged(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)
    out, log = tmp_path / "out", tmp_path / "log"
    run(cases, out, log)
    scan = cases[0].files[0]
    stat = os.stat(scan)
    data = bytearray(scan.read_bytes())
    data[-5] ^= 0xFF  # same size, content changed, time put back
    scan.write_bytes(bytes(data))
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan_batch(cases, out, SETTINGS).to_run == []  # the cheap check trusts size + time
    assert [
        c.identifier for c in plan_batch(cases, out, SETTINGS, BatchOptions(verify_hashes=True)).to_run
    ] == ["case_000"]


def test_other_settings_are_refused_naming_them_and_overwrite_recomputes(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 3)
    out, log = tmp_path / "out", tmp_path / "log"
    run(cases, out, log)
    log.unlink()
    changed = {**SETTINGS, "method": "hirescam", "classes": (1, 2)}
    changed.pop("layer")
    with pytest.raises(SettingsMismatchError) as caught:
        run(cases, out, log, settings=changed)
    message = str(caught.value)
    assert 'method: "gradcam" -> "hirescam"' in message and "classes: [1] -> [1, 2]" in message
    assert 'layer: "conv2" -> (not set)' in message and "overwrite=True" in message
    assert len(caught.value.differences) == 3 and not log.exists()
    summary = run(cases, out, log, settings=changed, overwrite=True)
    assert summary.done == [c.identifier for c in cases] and helpers.calls(log) == summary.done
    assert json.loads((out / MANIFEST_NAME).read_text())["settings"]["method"] == "hirescam"
    log.unlink()
    assert run(cases, out, log, settings=changed).skipped == summary.done and not log.exists()


def test_outputs_a_recomputed_case_no_longer_writes_are_removed(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)
    out, log = tmp_path / "out", tmp_path / "log"
    run(cases, out, log)
    extra = out / "case_000_old_slice.png"
    extra.write_bytes(b"png")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["cases"]["case_000"]["outputs"].append({"path": extra.name, "size": 3})
    manifest["cases"]["case_000"]["inputs"][0]["sha256"] = "0" * 64
    manifest["cases"]["case_000"]["inputs"][0]["mtime_ns"] = 0
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert run(cases, out, log).done == ["case_000"]
    assert not extra.exists() and (out / "case_000_gradcam.nii.gz").exists()


def test_failed_cases_are_reported_the_others_done_and_retried_next_time(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 4)
    out, log = tmp_path / "out", tmp_path / "log"
    summary = run(cases, out, log, fail_prepare_on="case_001", fail_process_on="case_002")
    assert summary.done == ["case_000", "case_003"] and summary.exit_code == 1
    assert [(f.identifier, f.error) for f in summary.failures] == [
        ("case_001", f"InputFileError: {cases[1].files[0]} is damaged (on purpose)"),
        ("case_002", "RuntimeError: the network produced NaN (on purpose)"),
    ]
    text = format_summary(summary)
    assert "2 done, 0 skipped (finished before), 2 failed" in text and "case_002: RuntimeError" in text
    assert not list(out.glob("case_001*")) and not list(out.glob("case_002*"))
    log.unlink()
    again = run(cases, out, log)
    assert again.done == ["case_001", "case_002"] and again.skipped == ["case_000", "case_003"]
    assert helpers.calls(log) == ["case_001", "case_002"]


def test_continue_on_error_false_raises_the_case_error_after_recording_the_others(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 3)
    out, log = tmp_path / "out", tmp_path / "log"
    with pytest.raises(InputFileError, match="damaged"):
        run(cases, out, log, fail_prepare_on="case_001", continue_on_error=False)
    assert list(json.loads((out / MANIFEST_NAME).read_text())["cases"]) == ["case_000"]


def test_outputs_that_do_not_exist_fail_the_case(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)

    class Liar(helpers.CamWorker):
        def process(self, case, prepared, context):
            written = super().process(case, prepared, context)
            if case.identifier == "case_000":
                return [*written, context.output_dir / "never_written.nii.gz"]
            return [*written, "case_001_gradcam.nii.gz"]  # relative to the output folder, listed twice

    summary = run_batch(cases, Liar, tmp_path / "out", SETTINGS, BatchOptions(quiet=True))
    assert [f.identifier for f in summary.failures] == ["case_000"]
    assert "never_written.nii.gz" in summary.failures[0].error and "no such file" in summary.failures[0].error
    assert summary.done == ["case_001"]
    record = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["cases"]["case_001"]
    assert [o["path"] for o in record["outputs"]] == ["case_001_gradcam.nii.gz", "case_001_scores.npy"]


def test_an_output_claimed_by_a_recorded_case_is_refused(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)

    class Thief(helpers.CamWorker):
        def process(self, case, prepared, context):
            written = super().process(case, prepared, context)
            return [*written, "case_000_scores.npy"] if case.identifier == "case_001" else written

    summary = run_batch(cases, Thief, tmp_path / "out", SETTINGS, BatchOptions(quiet=True))
    assert summary.done == ["case_000"]
    assert "case_000_scores.npy, which case case_000 wrote before" in summary.failures[0].error


def test_stale_temporaries_of_killed_runs_are_cleaned_at_startup(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [out / f"{TEMP_PREFIX}{_host_tag()}-{dead_pid}-abc-x.nii.gz{TEMP_SUFFIX}", out / "sub" / "deeper"]
    stale[1] = stale[1] / f"{TEMP_PREFIX}{_host_tag()}-{dead_pid}-def-y.png{TEMP_SUFFIX}"
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"half")
    alive = out / f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-ghi-z.npy{TEMP_SUFFIX}"
    alive.mkdir()
    run(cases, out, tmp_path / "log")
    assert not stale[0].exists() and not stale[1].exists() and alive.exists()


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".medcam3d_manifest.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputPathError, match="Another medcam3d run is writing into"):
            run(cases, out, tmp_path / "log")
    assert run(cases, out, tmp_path / "log").done == ["case_000"]


def test_a_damaged_manifest_is_refused_unless_overwrite(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(OutputPathError, match="not a medcam3d batch manifest"):
        run(cases, out, tmp_path / "log")
    assert run(cases, out, tmp_path / "log", overwrite=True).done == ["case_000"]


def test_keyboard_interrupt_keeps_the_finished_cases(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 4)
    out, log = tmp_path / "out", tmp_path / "log"

    class Interrupted(helpers.CamWorker):
        def process(self, case, prepared, context):
            if case.identifier == "case_002":
                raise KeyboardInterrupt
            return super().process(case, prepared, context)

    with pytest.raises(KeyboardInterrupt):
        run_batch(
            cases, functools.partial(Interrupted, log=str(log)), out, SETTINGS, BatchOptions(quiet=True)
        )
    assert list(json.loads((out / MANIFEST_NAME).read_text())["cases"]) == ["case_000", "case_001"]
    log.unlink()
    assert run(cases, out, log).done == ["case_002", "case_003"]


def test_moving_the_output_folder_keeps_resume_working(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)
    run(cases, tmp_path / "out", tmp_path / "log")
    shutil.move(tmp_path / "out", tmp_path / "moved")
    assert run(cases, tmp_path / "moved", tmp_path / "log2").skipped == ["case_000", "case_001"]


def test_a_named_manifest_lets_runs_with_other_settings_share_a_folder(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 2)
    out, log = tmp_path / "out", tmp_path / "log"
    factory = functools.partial(helpers.CamWorker, log=str(log))
    first = run_batch(
        cases, factory, out, SETTINGS, BatchOptions(quiet=True), manifest_name="medcam3d_manifest_a.json"
    )
    assert first.manifest == out / "medcam3d_manifest_a.json" and not (out / MANIFEST_NAME).exists()
    other = {**SETTINGS, "method": "hirescam"}
    second = run_batch(
        cases, factory, out, other, BatchOptions(quiet=True), manifest_name="medcam3d_manifest_b.json"
    )
    assert sorted(second.done) == ["case_000", "case_001"]  # its own manifest: not a mismatch
    again = run_batch(
        cases, factory, out, SETTINGS, BatchOptions(quiet=True), manifest_name="medcam3d_manifest_a.json"
    )
    assert again.skipped == ["case_000", "case_001"]
    with pytest.raises(SettingsMismatchError):
        run_batch(
            cases, factory, out, other, BatchOptions(quiet=True), manifest_name="medcam3d_manifest_a.json"
        )
    for bad in ("manifest.json", "medcam3d_manifest_x.txt", "medcam3d_manifest/x.json"):
        with pytest.raises(Exception, match="manifest_name must be a file name"):
            run_batch(
                cases, factory, tmp_path / "never", SETTINGS, BatchOptions(quiet=True), manifest_name=bad
            )
    assert not (tmp_path / "never").exists()
