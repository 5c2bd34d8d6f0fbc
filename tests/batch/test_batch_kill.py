"""SIGKILL at any moment leaves no incomplete file under a final name; a re-run computes only what
is missing, and the outputs are the same bytes as an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import batch_helpers as helpers
import pytest

from medcam3d._atomic import is_temporary
from medcam3d.batch import MANIFEST_NAME, BatchOptions, run_batch

HERE = Path(__file__).resolve().parent
SCRIPT = """
import functools, sys
sys.path.insert(0, {here!r})
import batch_helpers as helpers
from medcam3d.batch import BatchOptions, run_batch
cases = helpers.make_cases(__import__("pathlib").Path({inputs!r}), {count})
factory = functools.partial(helpers.CamWorker, log={log!r}, sigkill_on={sigkill_on!r}, sleep_s={sleep_s})
run_batch(cases, factory, {out!r}, {{"method": "gradcam"}}, BatchOptions(quiet=True))
"""


def start(
    tmp_path: Path, out: Path, log: Path, count: int, sigkill_on: str | None = None, sleep_s: float = 0.0
):
    code = SCRIPT.format(
        here=str(HERE),
        inputs=str(tmp_path / "in"),
        count=count,
        log=str(log),
        sigkill_on=sigkill_on,
        sleep_s=sleep_s,
        out=str(out),
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def final_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
        and not any(is_temporary(part) for part in p.relative_to(folder).parts)
        and p.name not in (MANIFEST_NAME, ".medcam3d_manifest.lock")
    }


def reference(tmp_path: Path, count: int) -> dict[str, bytes]:
    cases = helpers.make_cases(tmp_path / "in", count)
    run_batch(
        cases, helpers.CamWorker, tmp_path / "reference", {"method": "gradcam"}, BatchOptions(quiet=True)
    )
    return final_files(tmp_path / "reference")


def records(out: Path) -> list[str]:
    return list(json.loads((out / MANIFEST_NAME).read_text())["cases"])


pytestmark = pytest.mark.slow  # a fresh Python process each (torch import)


def test_sigkill_in_the_middle_of_a_write_then_rerun(tmp_path: Path) -> None:
    count = 6
    expected = reference(tmp_path, count)
    out, log = tmp_path / "out", tmp_path / "log"
    process = start(tmp_path, out, log, count, sigkill_on="case_003")
    _, err = process.communicate(timeout=240)
    assert process.returncode == -signal.SIGKILL, err.decode()
    assert records(out) == ["case_000", "case_001", "case_002"]
    assert any(is_temporary(p) for p in os.listdir(out))  # the half-written .npy stays in its temporary
    partial = final_files(out)
    assert all(partial[name] == expected[name] for name in partial)  # nothing incomplete under a final name
    assert "case_003_scores.npy" not in partial
    log.unlink()
    cases = helpers.make_cases(tmp_path / "in", count)  # same inputs, same bytes (same seed)
    summary = run_batch(
        cases, lambda: helpers.CamWorker(log=str(log)), out, {"method": "gradcam"}, BatchOptions(quiet=True)
    )
    assert summary.skipped == ["case_000", "case_001", "case_002"]
    assert helpers.calls(log) == ["case_003", "case_004", "case_005"]
    assert not any(is_temporary(p) for p in os.listdir(out))
    assert final_files(out) == expected


def test_sigkill_from_outside_at_a_random_moment_then_rerun(tmp_path: Path) -> None:
    count = 8
    expected = reference(tmp_path, count)
    out, log = tmp_path / "out", tmp_path / "log"
    process = start(tmp_path, out, log, count, sleep_s=0.25)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if len(records(out)) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    finished = records(out)  # the manifest always parses: it is replaced atomically
    assert 2 <= len(finished) < count
    partial = final_files(out)
    assert all(partial[name] == expected[name] for name in partial)
    log.unlink()
    cases = helpers.make_cases(tmp_path / "in", count)
    summary = run_batch(
        cases, lambda: helpers.CamWorker(log=str(log)), out, {"method": "gradcam"}, BatchOptions(quiet=True)
    )
    missing = [c.identifier for c in cases if c.identifier not in finished]
    assert helpers.calls(log) == missing and summary.done == missing and summary.skipped == finished
    assert final_files(out) == expected
