"""medcam3d._atomic (verified atomic writes, text/JSON helpers) and medcam3d.io.as_volume, on real files."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from medcam3d._atomic import (
    atomic_path,
    check_output_file,
    is_temporary,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from medcam3d.errors import GeometryError, NonFiniteInputError, OutputPathError, ValueRangeError


def test_atomic_path_keeps_its_signature_and_the_final_name(tmp_path: Path) -> None:
    out = tmp_path / "figure.png"
    with atomic_path(out, True) as tmp:  # positional overwrite, as callers use it today
        assert tmp.name == "figure.png" and tmp.parent != tmp_path and is_temporary(tmp.parent)
        assert not tmp.exists()  # the writer creates it
        tmp.write_bytes(b"\x89PNG fake")
    assert out.read_bytes() == b"\x89PNG fake"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # like a plain open()
    with pytest.raises(OutputPathError, match="exists"):
        with atomic_path(out, overwrite=False) as tmp:
            pytest.fail("not reached")
    assert os.listdir(tmp_path) == ["figure.png"]


def test_verify_runs_before_the_rename(tmp_path: Path) -> None:
    out = tmp_path / "data.bin"
    out.write_bytes(b"old")
    seen: list[bytes] = []

    def reject(path: Path) -> bool:
        seen.append(path.read_bytes())
        return False

    with pytest.raises(OutputPathError, match="does not read back as written"):
        with atomic_path(out, verify=reject) as tmp:
            tmp.write_bytes(b"new")
    assert seen == [b"new"] and out.read_bytes() == b"old"

    def broken(path: Path) -> None:
        raise ValueError("checksum mismatch")

    with pytest.raises(OutputPathError, match="checksum mismatch") as info:
        with atomic_path(out, verify=broken) as tmp:
            tmp.write_bytes(b"new")
    assert isinstance(info.value.__cause__, ValueError) and out.read_bytes() == b"old"
    # default check: an empty file is a failed write; verify=None accepts it
    with pytest.raises(OutputPathError, match="empty"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"")
    assert out.read_bytes() == b"old"
    with atomic_path(out, verify=None) as tmp:
        tmp.write_bytes(b"")
    assert out.read_bytes() == b""
    with pytest.raises(OutputPathError, match="did not create"):
        with atomic_path(tmp_path / "never.bin", verify=None):
            pass
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_os_errors_become_output_path_errors_other_errors_pass(tmp_path: Path) -> None:
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(OutputPathError, match=r"seg\.nii\.gz.*ENOENT") as info:
        with atomic_path(out) as tmp:
            open(tmp.parent / "no" / "such" / "folder", "wb").close()
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(KeyError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise KeyError("the writer's own bug")
    assert os.listdir(tmp_path) == []
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path / "folder", overwrite=True)


def test_text_and_json_helpers(tmp_path: Path) -> None:
    text = "résumé ✓\nline two\n"
    path = write_text_atomic(tmp_path / "notes.txt", text)
    assert path.read_text(encoding="utf-8") == text
    with pytest.raises(OutputPathError, match="exists"):
        write_text_atomic(path, "other", False)
    assert path.read_text(encoding="utf-8") == text
    write_text_atomic(path, "other", True)
    assert path.read_text(encoding="utf-8") == "other"

    payload = {"method": "GradCAM", "scores": [0.25, 1.5], "nested": {"layer": "encoder.3"}}
    out = write_json_atomic(tmp_path / "run.json", payload)
    assert json.loads(out.read_text(encoding="utf-8")) == payload
    assert out.read_text(encoding="utf-8").endswith("}\n")
    with pytest.raises(NonFiniteInputError, match="allow_nan=True"):
        write_json_atomic(tmp_path / "nan.json", {"score": math.nan})
    assert not (tmp_path / "nan.json").exists()
    write_json_atomic(tmp_path / "nan.json", {"score": math.nan}, allow_nan=True)
    assert math.isnan(json.loads((tmp_path / "nan.json").read_text())["score"])
    write_bytes_atomic(tmp_path / "raw.bin", b"\x00\x01", fsync=True)
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["nan.json", "notes.txt", "raw.bin", "run.json"]


def test_as_volume_is_the_one_coercion() -> None:
    from medcam3d.io import as_volume

    reference = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    tensor = torch.tensor(reference, requires_grad=True)[None, None]  # (1, 1, D, H, W)
    np.testing.assert_array_equal(as_volume(tensor), reference)
    half = as_volume(torch.tensor(reference, dtype=torch.bfloat16))
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, reference)  # small integers are exact in bfloat16
    np.testing.assert_array_equal(as_volume(reference.tolist()), reference)
    assert np.shares_memory(as_volume(reference[None]), reference)  # numpy in: no copy
    with pytest.raises(GeometryError, match=r"\(z, y, x\)"):
        as_volume(reference[0])
    with pytest.raises(GeometryError):
        as_volume(np.zeros((2, 2, 3, 4)))  # a leading axis of 2 is not a batch of one
    with pytest.raises(ValueRangeError, match="numbers"):
        as_volume(np.array([[["a"]]]))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_image_verification_accepts_every_pixel_type(tmp_path: Path, ending: str) -> None:
    sitk = pytest.importorskip("SimpleITK")
    from medcam3d.io import Geometry, write_image

    geometry = Geometry(
        shape=(3, 4, 5), spacing=(0.7, 0.7, 3.0), origin=(-100.5, 20.25, 1e3), direction=np.eye(3)
    )
    values = np.random.default_rng(0).integers(0, 200, size=(3, 4, 5))
    for dtype in (np.float32, np.float64, np.int16, np.uint8, np.int32, np.bool_):
        out = write_image(values, geometry, tmp_path / f"{np.dtype(dtype).name}{ending}", dtype=dtype)
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        expected = values.astype(dtype).astype(np.uint8) if dtype is np.bool_ else values.astype(dtype)
        np.testing.assert_array_equal(back, expected)
    assert not any(is_temporary(p) for p in tmp_path.iterdir())
