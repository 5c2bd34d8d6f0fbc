"""Faults while ``medcam3d nnunet`` writes, reproduced for real on the fixture nnU-Net model.

* A file size limit (``RLIMIT_FSIZE`` in a subprocess, SIGXFSZ ignored): ITK then writes a cut-off
  ``.nii.gz`` *without* raising, which reads back zero-filled. Every output is read back before it
  takes its final name, so the case fails with :class:`~medcam3d.errors.OutputPathError` naming the
  map, and leaves no file (no damaged map, no segmentation without its map, no temporary).
* A run killed with ``SIGKILL`` while writing leaves a temporary behind; the next run removes it
  (and an old-style temporary of an earlier medcam3d) before its first case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nnunet"))

import builder  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sphere_model() -> Iterator[Path]:
    root = builder.cached_build((builder.SPHERE,))
    with builder.nnunet_environment(root):
        yield builder.SPHERE.model_folder(root / "nnUNet_results", "3d_fullres")


@pytest.fixture()
def one_case(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    channels, _ = builder.make_case(builder.SPHERE, seed=3, shape=(18, 20, 20))
    builder.write_image(channels[0], folder / "c_0000.nii.gz", builder.SPHERE.spacing)
    return folder


LIMITED_RUN = textwrap.dedent(
    """
    import json, resource, signal, sys
    from medcam3d.nnunet import load_predictor, segment_and_explain

    model, inputs, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    predictor = load_predictor(model, use_mirroring=False)  # everything imported and loaded first
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    batch = segment_and_explain(
        predictor, inputs, out, "encoder.stages.3", save_slices=False, save_numpy=True, progress=False
    )
    print(json.dumps({"done": [r.identifier for r in batch.results], "failures": [f.error for f in batch.failures]}))
    """
)


def _run(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_file_size_limit_fails_the_case_without_a_damaged_map(sphere_model, one_case, tmp_path):
    out = tmp_path / "out"
    done = _run(LIMITED_RUN, str(sphere_model), str(one_case), str(out), str(8 * 1024))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["done"] == [] and len(report["failures"]) == 1, report
    (error,) = report["failures"]
    assert error.startswith("OutputPathError: Could not write ") and "c_gradcam_class1.nii.gz" in error, error
    assert "ulimit -f" in error
    # no map, no segmentation, no temporary: only the batch layer's manifest (no case in it) and lock
    assert sorted(p.name for p in out.iterdir()) == [
        ".medcam3d_manifest.lock",
        "medcam3d_manifest_gradcam.json",
    ]
    assert json.loads((out / "medcam3d_manifest_gradcam.json").read_text(encoding="utf-8"))["cases"] == {}
    # the control: without the limit, the same run writes the files and they read back as returned
    unlimited = _run(LIMITED_RUN, str(sphere_model), str(one_case), str(out), str(2**40))
    assert json.loads(unlimited.stdout.strip().splitlines()[-1]) == {"done": ["c"], "failures": []}
    import SimpleITK as sitk

    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c_gradcam_class1.nii.gz")))
    np.testing.assert_array_equal(written, np.load(out / "c_gradcam_class1.npy"))
    assert written.max() == pytest.approx(1.0) and written.min() >= 0.0


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from medcam3d._atomic import atomic_path

    with atomic_path(os.path.join(sys.argv[1], "c.nii.gz")) as tmp:
        tmp.write_bytes(b"half a segmentation")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_run_removes_what_killed_runs_left(sphere_model, one_case, tmp_path):
    out = tmp_path / "out"
    (out / "gradcam" / "c").mkdir(parents=True)
    killed = _run(KILLED_WRITER, str(out))
    assert killed.returncode == -signal.SIGKILL
    (left,) = [p for p in out.iterdir() if p.name.startswith(".medcam3d-tmp-")]
    old_style = out / "gradcam" / "c" / ".class1_slice_000.png.k2j4x9zq.tmp.png"  # medcam3d <= 0.x
    old_style.write_bytes(b"half a PNG")
    an_hour_ago = time.time() - 7200
    os.utime(old_style, (an_hour_ago, an_hour_ago))
    unrelated = out / ".keep"
    unrelated.write_text("not ours")
    from medcam3d.nnunet import segment_and_explain

    batch = segment_and_explain(
        sphere_model,
        one_case,
        out,
        "encoder.stages.3",
        use_mirroring=False,
        save_slices=False,
        progress=False,
    )
    assert batch.ok
    assert not left.exists() and not old_style.exists() and unrelated.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        ".keep",
        ".medcam3d_manifest.lock",
        "c.nii.gz",
        "c_gradcam_class1.nii.gz",
        "gradcam",
        "medcam3d_manifest_gradcam.json",
    ]
