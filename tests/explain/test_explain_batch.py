"""``medcam3d explain`` through the batch layer: resume, changed inputs, changed settings, failures,
SIGKILL then re-run, and the Ray engine (same bytes as the local one)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import explain_nets
import nibabel as nib
import numpy as np
import pytest
import torch
from explain_helpers import blob_volume, load_classifier, write_nifti

import medcam3d
from helpers_docs import section_commands
from medcam3d.batch import MANIFEST_NAME, BatchOptions, SettingsMismatchError
from medcam3d.cli import main
from medcam3d.explain import ExplainSettings, explain_folder, explain_run
from medcam3d.models import model_source
from medcam3d.utils.model_targets import ClassifierOutputTarget

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

LOCK = ".medcam3d_manifest.lock"
NETS = '''
import torch.nn as nn


class Net(nn.Module):
    """A small 3D classifier: two convolutions, global average pooling, a linear head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 3, padding=1, stride=2), nn.ReLU()
        )
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


def build(classes: int = 3) -> nn.Module:
    return Net(classes)
'''


@contextlib.contextmanager
def counting_forwards() -> Iterator[list[str]]:
    """Every module forward in this process while the block runs (a real global forward hook)."""
    calls: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: calls.append(type(module).__name__)
    )
    try:
        yield calls
    finally:
        handle.remove()


def zyx(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asanyarray(nib.load(str(path)).dataobj).transpose(2, 1, 0))


def final_files(folder: Path) -> dict[str, bytes]:
    """Every output (not the manifest or its lock), by name."""
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and p.name not in (MANIFEST_NAME, LOCK)
    }


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name not in (MANIFEST_NAME, LOCK)}


def records(folder: Path) -> dict[str, dict]:
    return json.loads((folder / MANIFEST_NAME).read_text())["cases"]


def classifier_source(checkpoint: Path):
    return model_source(
        factory="explain_nets:classifier", model_kwargs={"num_classes": 3}, checkpoint=checkpoint
    )


SETTINGS = ExplainSettings(target_classes=(1,), progress=False)


# ---------------------------------------------------------------------------------- resume
def test_a_rerun_of_a_finished_folder_loads_nothing_and_computes_nothing(
    scans, classifier_checkpoint, tmp_path
):
    out = tmp_path / "out"
    source = classifier_source(classifier_checkpoint)
    with counting_forwards() as forwards:
        first = explain_folder(scans, out, source, SETTINGS, device="cpu")
    assert forwards, "the hook sees the forward passes"
    assert [r.ok and not r.skipped for r in first] == [True] * 3
    before, loads = mtimes(out), explain_nets.CALLS["classifier"]
    with counting_forwards() as forwards:
        start = time.perf_counter()
        again = explain_folder(scans, out, source, SETTINGS, device="cpu")
        elapsed = time.perf_counter() - start
    assert forwards == [] and explain_nets.CALLS["classifier"] == loads  # no forward, no model built
    assert elapsed < 0.5, elapsed
    assert mtimes(out) == before  # nothing rewritten
    assert [r.identifier for r in again] == [r.identifier for r in first]
    for old, new in zip(first, again):
        assert new.ok and new.skipped
        assert [(m.method, m.target_class, m.map_file.name, m.score) for m in new.maps] == [
            (m.method, m.target_class, m.map_file.name, m.score) for m in old.maps
        ]
        assert new.prediction == old.prediction and sorted(f.name for f in new.files) == sorted(
            f.name for f in old.files
        )
    # a re-run of the command says so
    argv = ["explain", "-i", str(scans), "-o", str(out), "--model", "explain_nets:classifier"]
    argv += ["--model-kwargs", '{"num_classes": 3}', "--checkpoint", str(classifier_checkpoint)]
    assert main([*argv, "--target-class", "1", "-device", "cpu", "--quiet"]) == 0


def test_a_changed_input_is_recomputed_alone(scans, classifier_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    source = classifier_source(classifier_checkpoint)
    explain_folder(scans, out, source, SETTINGS, device="cpu")
    before = mtimes(out)
    plain = scans / "plain.nii"
    write_nifti(plain, blob_volume((16, 16, 16), 7), np.eye(4))  # new content, same name
    results = {r.identifier: r for r in explain_folder(scans, out, source, SETTINGS, device="cpu")}
    assert not results["plain"].skipped and results["lps"].skipped and results["oblique"].skipped
    after = mtimes(out)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"plain_gradcam_class1.nii.gz", "plain_gradcam_class1.json"}
    # the new map is the Grad-CAM of the new scan (no preprocessing: the scan's grid is the model's)
    x = torch.from_numpy(zyx(plain))[None, None]
    expected = medcam3d.GradCAM(load_classifier(classifier_checkpoint), ["layer4"])(
        x, [ClassifierOutputTarget(1)]
    )
    np.testing.assert_allclose(zyx(out / "plain_gradcam_class1.nii.gz"), expected[0], atol=1e-5)
    assert records(out)["plain"]["inputs"][0]["size"] == plain.stat().st_size


def test_a_changed_mask_recomputes_its_case(scans, segmenter_checkpoint, tmp_path):
    scan, masks, out = scans / "lps.nii.gz", tmp_path / "masks", tmp_path / "out"
    masks.mkdir()
    image = nib.load(str(scan))
    mask_file = masks / "lps.nii.gz"
    nib.save(
        nib.Nifti1Image((zyx(scan) > 100).astype(np.uint8).transpose(2, 1, 0), image.affine), str(mask_file)
    )
    source = model_source(
        factory="explain_nets:segmenter", model_kwargs={"num_classes": 3}, checkpoint=segmenter_checkpoint
    )
    settings = ExplainSettings(target_classes=(2,), target_layers=("down",), progress=False)
    (first,) = explain_folder(scan, out, source, settings, masks=masks, device="cpu")
    assert first.ok and not first.skipped
    (same,) = explain_folder(scan, out, source, settings, masks=masks, device="cpu")
    assert same.skipped
    half = (zyx(scan) > 100).astype(np.uint8)
    half[: half.shape[0] // 2] = 0  # another mask: only the upper half of the blob
    nib.save(nib.Nifti1Image(half.transpose(2, 1, 0), image.affine), str(mask_file))
    (again,) = explain_folder(scan, out, source, settings, masks=masks, device="cpu")
    assert again.ok and not again.skipped  # the mask is an input of the case


def test_changed_settings_are_refused_naming_them_and_accepted_with_overwrite(
    scans, classifier_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scans), "-o", str(out), "--model", "explain_nets:classifier"]
    argv += ["--model-kwargs", '{"num_classes": 3}', "--checkpoint", str(classifier_checkpoint)]
    argv += ["-device", "cpu", "--quiet"]
    assert main([*argv, "--target-class", "1"]) == 0
    before, loads = final_files(out), explain_nets.CALLS["classifier"]
    capsys.readouterr()
    assert main([*argv, "--method", "hirescam", "--target-class", "2"]) == 1
    err = capsys.readouterr().err
    assert 'methods: ["gradcam"] -> ["hirescam"]' in err and "target_classes: [1] -> [2]" in err
    assert "--overwrite" in err
    assert explain_nets.CALLS["classifier"] == loads and final_files(out) == before  # refused before any work
    # a retrained checkpoint is another model
    torch.manual_seed(5)
    retrained = tmp_path / "retrained.pt"
    torch.save(explain_nets.classifier(num_classes=3).state_dict(), retrained)
    with pytest.raises(SettingsMismatchError) as refused:
        explain_folder(scans, out, classifier_source(retrained), SETTINGS, device="cpu")
    assert any(d.startswith("model.files") for d in refused.value.differences), refused.value.differences
    # --overwrite recomputes with the new settings and removes the files the old ones wrote
    assert main([*argv, "--method", "hirescam", "--target-class", "2", "--overwrite"]) == 0
    assert "3 done, 0 skipped" in capsys.readouterr().out
    names = sorted(final_files(out))
    assert names == sorted(
        f"{c}_hirescam_class2.{e}" for c in ("lps", "oblique", "plain") for e in ("json", "nii.gz")
    )
    settings = json.loads((out / MANIFEST_NAME).read_text())["settings"]
    assert settings["methods"] == ["hirescam"] and settings["target_classes"] == [2]


def test_a_case_that_fails_is_reported_the_others_are_done(scans, classifier_checkpoint, tmp_path, capsys):
    (scans / "broken.nii.gz").write_bytes((scans / "lps.nii.gz").read_bytes()[:300])
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scans), "-o", str(out), "--model", "explain_nets:classifier"]
    argv += ["--model-kwargs", '{"num_classes": 3}', "--checkpoint", str(classifier_checkpoint)]
    argv += ["--target-class", "1", "-device", "cpu", "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "4 case(s): 3 done, 0 skipped (finished before), 1 failed" in captured.out
    assert re.search(r"broken: \w+Error: .*broken\.nii\.gz", captured.err), captured.err
    assert sorted(records(out)) == ["lps", "oblique", "plain"]
    results = {
        r.identifier: r
        for r in explain_folder(scans, out, classifier_source(classifier_checkpoint), SETTINGS, device="cpu")
    }
    assert not results["broken"].ok and "broken.nii.gz" in (results["broken"].error or "")
    assert all(results[c].skipped for c in ("lps", "oblique", "plain"))
    write_nifti(scans / "broken.nii.gz", blob_volume((16, 16, 16), 9), np.eye(4))  # repaired
    assert main(argv) == 0
    assert "4 case(s): 1 done, 3 skipped (finished before), 0 failed" in capsys.readouterr().out


def test_a_stale_file_no_manifest_lists_is_replaced(scans, classifier_checkpoint, tmp_path):
    """The manifest decides what runs: a file of a case's name that no record lists is stale."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "plain_gradcam_class1.nii.gz").write_bytes(b"left over")
    results = explain_folder(scans, out, classifier_source(classifier_checkpoint), SETTINGS, device="cpu")
    assert all(r.ok and not r.skipped for r in results)
    assert zyx(out / "plain_gradcam_class1.nii.gz").shape == (16, 16, 16)


def test_batch_flags_are_checked_before_any_work(scans, classifier_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", "-i", str(scans), "-o", str(out), "--model", "explain_nets:classifier"]
    argv += ["--model-kwargs", '{"num_classes": 3}', "--checkpoint", str(classifier_checkpoint)]
    assert main([*argv, "--overwrite", "--continue_prediction"]) == 1
    assert "contradict each other" in capsys.readouterr().err
    assert main([*argv, "--workers", "2"]) == 1
    assert "engine='ray'" in capsys.readouterr().err
    assert not out.exists()
    loaded = medcam3d.models.load_model(classifier_source(classifier_checkpoint), device="cpu")
    with pytest.raises(medcam3d.errors.ConfigurationError, match="give a ModelSource"):
        explain_run(scans, out, loaded, SETTINGS, options=BatchOptions(engine="ray", workers=2))
    assert not out.exists()


# ---------------------------------------------------------------------------------- SIGKILL
@pytest.fixture
def file_model(tmp_path: Path) -> tuple[Path, Path]:
    """A factory in a plain file (importable in any process) and its checkpoint."""
    code = tmp_path / "nets.py"
    code.write_text(NETS)
    namespace: dict[str, object] = {}
    exec(compile(NETS, str(code), "exec"), namespace)  # noqa: S102 - our own test network
    torch.manual_seed(0)
    checkpoint = tmp_path / "net.pt"
    torch.save(namespace["build"]().state_dict(), checkpoint)  # type: ignore[operator]
    return code, checkpoint


def make_scans(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        volume = rng.normal(0, 10, (32, 32, 24)).astype(np.float32)
        volume[8:20, 10:22, 6:16] += 100.0
        write_nifti(folder / f"case_{i}.nii.gz", volume, np.diag([0.9, 0.9, 2.0, 1.0]))
    return folder


def command(scans: Path, out: Path, file_model: tuple[Path, Path]) -> list[str]:
    code, checkpoint = file_model
    return [
        sys.executable, "-m", "medcam3d.cli", "explain", "-i", str(scans), "-o", str(out),
        "--model", f"{code}:build", "--checkpoint", str(checkpoint), "--patch-size", "8", "8", "8",
        "--overlap", "0.5", "--target-class", "1", "-device", "cpu", "--torch-threads", "1", "--quiet",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_run_then_a_rerun_completes_only_the_missing_cases(tmp_path, file_model):
    count = 8
    scans = make_scans(tmp_path / "scans", count)
    reference = subprocess.run(
        command(scans, tmp_path / "reference", file_model), capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    expected = final_files(tmp_path / "reference")
    assert len(expected) == 2 * count
    out = tmp_path / "out"
    run = subprocess.Popen(command(scans, out, file_model), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished: dict[str, dict] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        try:
            finished = records(out)
        except (OSError, ValueError, KeyError):
            finished = {}
        if len(finished) >= 2:
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    run.wait()
    run.stdout.close()  # type: ignore[union-attr]
    run.stderr.close()  # type: ignore[union-attr]
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = records(out)
    assert 2 <= len(done) < count
    kept = {name: t for name, t in mtimes(out).items() if name.split("_gradcam")[0] in done}
    for name in os.listdir(out):  # nothing half-written under a final name
        if not name.startswith("."):
            assert name == MANIFEST_NAME or name in expected, name
    rerun = subprocess.run(command(scans, out, file_model), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{count} case(s): {count - len(done)} done, {len(done)} skipped" in rerun.stdout
    assert {n: t for n, t in mtimes(out).items() if n in kept} == kept  # finished cases untouched
    assert final_files(out) == expected  # the same bytes as the uninterrupted run
    assert not [n for n in os.listdir(out) if n.startswith(".") and n != LOCK]  # temporaries removed


# ---------------------------------------------------------------------------------- Ray
def scale_commands() -> list[str]:
    """The ``medcam3d explain`` commands of the "## medcam3d explain" section of docs/scale.md."""
    return section_commands("scale.md", "medcam3d explain", "medcam3d explain")


def explain_doc_setup(folder: Path) -> None:
    """docs/explain.md's first Python block (two scans and densenet.pt) in ``folder``."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "explain.md").read_text(encoding="utf-8")
    first = re.findall(r"^```python\n(.*?)^```", doc, re.S | re.M)[0]
    exec(compile(first, "docs/explain.md[python block 0]", "exec"), {"__name__": "__doc_example__"})  # noqa: S102


@pytest.mark.slow
def test_the_ray_engine_writes_the_same_bytes_as_the_local_engine(tmp_path, monkeypatch, capsys):
    """docs/scale.md's explain examples: the local engine, then --engine ray --workers 2 on a local
    Ray that the run starts (os.cpu_count() = 2 CPUs here) and stops."""
    pytest.importorskip("ray")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two Ray workers of one CPU each need two cores")
    monkeypatch.chdir(tmp_path)
    explain_doc_setup(tmp_path)
    commands = scale_commands()
    assert len(commands) == 2 and "--engine ray --workers 2" in commands[1], commands
    import shlex

    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line
    local, on_ray = tmp_path / "maps_local", tmp_path / "maps_ray"
    assert final_files(on_ray) == final_files(local) and len(final_files(local)) == 4
    ray_records = records(on_ray)
    assert {r["engine"] for r in ray_records.values()} == {"ray"}
    assert len({r["worker"] for r in ray_records.values()}) == 2  # each worker took a case
    assert {r["engine"] for r in records(local).values()} == {"local"}
    import ray

    assert not ray.is_initialized()  # the run stopped the Ray it started


def test_a_file_factory_gets_the_same_module_name_in_every_process(file_model):
    code, _ = file_model
    script = (
        "from medcam3d.models.factory import build_from_factory; "
        f"print(type(build_from_factory({str(code) + ':build'!r})).__module__)"
    )
    names = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(names) == 1, names
