"""Faults while writing images and bad image input: nothing may come out silently wrong.

Real files, real file-size limits (``RLIMIT_FSIZE`` in a subprocess, SIGXFSZ ignored so writes fail
with EFBIG), real SIGKILL, real DICOM series written with SimpleITK and then damaged.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

from medcam3d.errors import InputFileError, NonFiniteInputError, OutputPathError  # noqa: E402
from medcam3d.io import Geometry, read_image, write_map  # noqa: E402

ENDINGS = [".nii.gz", ".nii", ".mha", ".nrrd"]
SHAPE = (40, 50, 60)  # (z, y, x): 480 kB of float32, far above the 20 KiB limit even compressed


def geometry() -> Geometry:
    return Geometry(shape=SHAPE, spacing=(0.8, 0.9, 2.0), origin=(1.0, 2.0, 3.0), direction=np.eye(3))


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def listings(folder: Path, pattern: str) -> dict[str, list[str]]:
    """What the usual ways of listing a folder report for ``*<pattern>`` (names only)."""
    found = {
        "pathlib.glob": sorted(p.name for p in folder.glob(f"*{pattern}")),
        "glob.glob": sorted(Path(p).name for p in glob.glob(str(folder / f"*{pattern}"))),
        "listdir.endswith": sorted(f for f in os.listdir(folder) if f.endswith(pattern)),
    }
    try:  # how nnU-Net lists a folder of cases
        from batchgenerators.utilities.file_and_folder_operations import subfiles
    except ImportError:  # pragma: no cover - nnunet extra not installed
        pass
    else:
        found["nnunet.subfiles"] = subfiles(str(folder), join=False, suffix=pattern)
    return found


# ---------------------------------------------------------------------------------------------------------
# 1. a write that fails (file size limit: EFBIG) raises OutputPathError and leaves nothing behind
# ---------------------------------------------------------------------------------------------------------

LIMITED_WRITER = """
import json, os, resource, signal, sys
import numpy as np

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
from medcam3d.io import Geometry, write_map

folder = sys.argv[1]
geometry = Geometry(shape=(40, 50, 60), spacing=(0.8, 0.9, 2.0), origin=(1.0, 2.0, 3.0), direction=np.eye(3))
cam = np.random.default_rng(1).random(geometry.shape, dtype=np.float32)
jobs = {}
for ending in (".nii.gz", ".nii", ".mha", ".nrrd"):
    for kind in ("new", "old"):  # "old" files exist already and are overwritten
        jobs[kind + ending] = lambda path: write_map(cam, geometry, path, overwrite=True)
try:
    from medcam3d._atomic import write_json_atomic, write_text_atomic
except ImportError:  # reported by the test as missing results
    pass
else:
    jobs["text.txt"] = lambda path: write_text_atomic(path, "x" * 100_000)
    jobs["payload.json"] = lambda path: write_json_atomic(path, {"values": list(range(20_000))})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
results = {}
for name, job in jobs.items():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, hard))
    try:
        job(os.path.join(folder, name))
        results[name] = ["returned", ""]
    except Exception as exc:
        results[name] = [type(exc).__name__, str(exc)]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_writes_past_a_file_size_limit_raise_and_leave_old_files_intact(tmp_path: Path) -> None:
    old_map = np.linspace(0, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    for ending in ENDINGS:
        write_map(old_map, geometry(), tmp_path / f"old{ending}")
    old_bytes = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    child = run_python(LIMITED_WRITER, str(tmp_path))
    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout.split("RESULTS ", 1)[1])

    for ending in ENDINGS:
        for kind in ("new", "old"):
            name = f"{kind}{ending}"
            error, message = results[name]
            assert error == "OutputPathError", f"{name}: {error} {message}"
            assert name in message  # the message names the file ...
            assert "ulimit" in message or "File too large" in message  # ... and the cause / what to check
        assert not (tmp_path / f"new{ending}").exists()
        # the file that was to be replaced is untouched, and still reads as the old map
        assert (tmp_path / f"old{ending}").read_bytes() == old_bytes[f"old{ending}"]
        np.testing.assert_array_equal(read_image(tmp_path / f"old{ending}")[0], old_map)
    for name in ("text.txt", "payload.json"):
        error, message = results.get(name, ["not run", "write_text_atomic/write_json_atomic missing"])
        assert error == "OutputPathError" and name in message and "EFBIG" in message, message
        assert not (tmp_path / name).exists()
    # no temporary survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old_bytes)


def _can_mount_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or not Path("/bin/mount").exists():
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    return done.returncode == 0


def test_a_full_disk_raises_output_path_error(tmp_path: Path) -> None:
    disk = tmp_path / "small_disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root to mount a 256 KiB tmpfs (a real full disk)")
    try:
        cam = np.random.default_rng(2).random(SHAPE, dtype=np.float32)
        for ending in ENDINGS:
            with pytest.raises(OutputPathError, match=re.escape(f"cam{ending}")) as info:
                write_map(cam, geometry(), disk / f"cam{ending}")
            message = str(info.value)
            assert "disk" in message or "ENOSPC" in message
        from medcam3d._atomic import write_text_atomic

        with pytest.raises(OutputPathError, match="ENOSPC"):
            write_text_atomic(disk / "notes.txt", "y" * 400_000)
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------------------
# 13. a folder in the way: OutputPathError, not IsADirectoryError
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [True, False])
def test_writing_onto_a_folder_is_a_clear_output_path_error(tmp_path: Path, overwrite: bool) -> None:
    for name in ("cam.nii.gz", "notes.txt", "data.json"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("keep")
    cam = np.zeros(SHAPE, np.float32)
    with pytest.raises(OutputPathError, match="is a folder"):
        write_map(cam, geometry(), tmp_path / "cam.nii.gz", overwrite=overwrite)
    from medcam3d._atomic import write_json_atomic, write_text_atomic

    with pytest.raises(OutputPathError, match="is a folder"):
        write_text_atomic(tmp_path / "notes.txt", "hello", overwrite)
    with pytest.raises(OutputPathError, match="is a folder"):
        write_json_atomic(tmp_path / "data.json", {"a": 1}, overwrite)
    for name in ("cam.nii.gz", "notes.txt", "data.json"):
        assert (tmp_path / name / "keep.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["cam.nii.gz", "data.json", "notes.txt"]


def test_a_nifti_that_cannot_hold_the_geometry_is_refused(tmp_path: Path) -> None:
    # a sheared direction: ITK's NIfTI writer "coerces" it to an orthogonal one, with only a warning
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    shear /= np.linalg.norm(shear, axis=0)
    sheared = Geometry(shape=(4, 5, 6), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=shear)
    cam = np.ones((4, 5, 6), np.float32)
    with pytest.raises(OutputPathError, match=r"different geometry.*\.mha"):
        write_map(cam, sheared, tmp_path / "cam.nii.gz")
    assert os.listdir(tmp_path) == []
    out = write_map(cam, sheared, tmp_path / "cam.mha")  # MetaImage keeps any direction
    np.testing.assert_allclose(np.reshape(sitk.ReadImage(str(out)).GetDirection(), (3, 3)), shear, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# 16. temporaries: invisible to folder listings, cleaned after a SIGKILL
# ---------------------------------------------------------------------------------------------------------


def test_no_listing_sees_a_temporary_while_a_map_is_written(tmp_path: Path) -> None:
    from medcam3d._atomic import atomic_path, is_temporary

    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    with atomic_path(tmp_path / "case_0001.nii.gz") as tmp:
        sitk.WriteImage(image, str(tmp), True)
        assert tmp.name == "case_0001.nii.gz" and tmp.stat().st_size > 0  # format kept for ITK/nibabel
        for how, names in listings(tmp_path, ".nii.gz").items():
            assert names == [], f"{how} sees the temporary {names}"
        assert all(is_temporary(p) for p in tmp_path.iterdir())
    for how, names in listings(tmp_path, ".nii.gz").items():
        assert names == ["case_0001.nii.gz"], how
    assert os.listdir(tmp_path) == ["case_0001.nii.gz"]


KILLED_WRITER = """
import os, signal, sys
import numpy as np
import SimpleITK as sitk
from medcam3d._atomic import atomic_path

image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
with atomic_path(os.path.join(sys.argv[1], "case_0002.nii.gz")) as tmp:
    sitk.WriteImage(image, str(tmp), True)
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_leaves_an_invisible_temporary_that_the_next_run_removes(tmp_path: Path) -> None:
    from medcam3d._atomic import clean_stale_temporaries, is_temporary

    (tmp_path / "case_0001.nii.gz").write_bytes(b"a finished case")
    (tmp_path / ".hidden_user_file.nii.gz").write_bytes(b"not ours")
    child = run_python(KILLED_WRITER, str(tmp_path))
    assert child.returncode == -signal.SIGKILL and "written" in child.stdout, child.stderr
    leftovers = [p for p in tmp_path.iterdir() if is_temporary(p)]
    assert (
        len(leftovers) == 1 and leftovers[0].is_dir() and (leftovers[0] / "case_0002.nii.gz").stat().st_size
    )
    for how, names in listings(tmp_path, ".nii.gz").items():
        assert "case_0002.nii.gz" not in names and not any(is_temporary(n) for n in names), how

    removed = clean_stale_temporaries(tmp_path)  # the writer's process is gone: stale
    assert removed == leftovers
    assert sorted(os.listdir(tmp_path)) == [".hidden_user_file.nii.gz", "case_0001.nii.gz"]
    assert clean_stale_temporaries(tmp_path) == []
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_clean_stale_temporaries_keeps_those_of_running_processes(tmp_path: Path) -> None:
    from medcam3d._atomic import TEMP_PREFIX, TEMP_SUFFIX, _host_tag, atomic_path, clean_stale_temporaries

    finished = subprocess.Popen([sys.executable, "-c", "pass"])  # its process id is gone afterwards
    finished.wait()
    dead_pid = finished.pid
    host = _host_tag()
    live_other = tmp_path / f"{TEMP_PREFIX}{host}-{os.getppid()}-abcdefgh-a.nii.gz{TEMP_SUFFIX}"
    gone = tmp_path / f"{TEMP_PREFIX}{host}-{dead_pid}-abcdefgh-b.nii.gz{TEMP_SUFFIX}"
    other_host = tmp_path / f"{TEMP_PREFIX}000000-{dead_pid}-abcdefgh-c.nii.gz{TEMP_SUFFIX}"
    legacy = tmp_path / ".d.nii.gz.k3j_x9a1.tmp.nii.gz"  # what medcam3d wrote before
    for folder in (live_other, gone, other_host):
        folder.mkdir()
        (folder / "x.nii.gz").write_bytes(b"partial")
    legacy.write_bytes(b"partial")
    user_files = ["cam.nii.gz", ".config", "notes.part", ".medcam3d-notes.txt"]
    for name in user_files:
        (tmp_path / name).write_bytes(b"user data")
    with atomic_path(tmp_path / "e.nii.gz") as tmp:
        tmp.write_bytes(b"in progress")
        removed = clean_stale_temporaries(tmp_path)
        assert removed == [gone]  # own write in progress, a live process, another host, young legacy: kept
        assert tmp.exists()
    # by age: another host's and the legacy temporary once they are old
    old = 2 * 3600
    for path in (other_host, legacy):
        os.utime(path, (os.stat(path).st_atime - old, os.stat(path).st_mtime - old))
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted([other_host, legacy])
    assert live_other.exists()
    assert clean_stale_temporaries(tmp_path, everything=True) == [live_other]
    assert sorted(os.listdir(tmp_path)) == sorted([*user_files, "e.nii.gz"])


# ---------------------------------------------------------------------------------------------------------
# 3. DICOM series with a damaged or missing slice
# ---------------------------------------------------------------------------------------------------------

UID = "1.2.826.0.1.3680043.2.1125.301"
OTHER_UID = "1.2.826.0.1.3680043.2.1125.302"


def write_series(folder: Path, positions: list[float], uid: str = UID, prefix: str = "slice") -> list[Path]:
    """One DICOM file per slice, written by SimpleITK/GDCM; slice k has values 100 * k + arange."""
    folder.mkdir(exist_ok=True)
    files = []
    for k, z in enumerate(positions):
        image = sitk.GetImageFromArray((np.arange(30).reshape(5, 6) + 100 * k).astype(np.int16))
        image.SetSpacing((0.5, 0.75))
        tags = {
            "0008|0060": "CT",
            "0008|103e": "axial",
            "0010|0020": "TEST",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.3",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"-10\\-20\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        path = folder / f"{prefix}_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    return files


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20] if keep is None else data[:keep])


def test_intact_series_reads_whole(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", [5.0, 7.0, 9.0, 11.0])
    (tmp_path / "ct" / "README.txt").write_text("not DICOM, ignored")
    array, geom = read_image(tmp_path / "ct")
    assert array.shape == (4, 5, 6)
    np.testing.assert_allclose(geom.spacing, (0.5, 0.75, 2.0), atol=1e-6)
    np.testing.assert_array_equal(array[:, 0, 0], [0, 100, 200, 300])


@pytest.mark.parametrize("which", [1, 0, 3], ids=["middle", "first", "last"])
@pytest.mark.parametrize("keep", [None, 300], ids=["pixels_cut", "header_cut"])
def test_a_truncated_slice_is_an_error_naming_the_file(tmp_path: Path, which: int, keep: int | None) -> None:
    files = write_series(tmp_path / "ct", [5.0, 7.0, 9.0, 11.0])
    truncate(files[which], keep)
    with pytest.raises(InputFileError) as info:
        read_image(tmp_path / "ct")
    message = str(info.value)
    assert files[which].name in message and "truncated or corrupt" in message
    assert all(f.name not in message for i, f in enumerate(files) if i != which)


def test_a_missing_middle_slice_is_an_error_naming_the_gap(tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", [5.0, 7.0, 9.0, 11.0, 13.0])
    files[2].unlink()
    with pytest.raises(InputFileError) as info:
        read_image(tmp_path / "ct")
    message = str(info.value)
    assert "slice_001.dcm" in message and "slice_003.dcm" in message
    assert "4.000 mm apart" in message and "median gap is 2.000 mm" in message and "missing" in message


def test_uneven_and_duplicate_slices_are_errors_small_jitter_is_not(tmp_path: Path) -> None:
    # spacing changes from 2.0 to 2.5 mm halfway: ITK would spread the slices evenly (up to 1 mm off)
    write_series(tmp_path / "mixed", [0.0, 2.0, 4.0, 6.0, 8.5, 11.0, 13.5, 16.0])
    with pytest.raises(InputFileError, match="mixes slice spacings"):
        read_image(tmp_path / "mixed")
    write_series(tmp_path / "duplicate", [5.0, 7.0, 7.0, 9.0])
    with pytest.raises(InputFileError, match="same position"):
        read_image(tmp_path / "duplicate")
    # rounding-level jitter (2.5 % of the spacing) is within the documented 10 % tolerance
    jitter = [5.0, 7.05, 8.97, 11.02, 13.0]
    write_series(tmp_path / "jitter", jitter)
    array, geom = read_image(tmp_path / "jitter")
    assert array.shape == (5, 5, 6)
    assert geom.spacing[2] == pytest.approx((jitter[-1] - jitter[0]) / 4)


def test_a_damaged_file_of_another_series_does_not_block_the_chosen_one(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_series(folder, [5.0, 7.0, 9.0, 11.0])
    others = write_series(folder, [0.0, 3.0, 6.0], uid=OTHER_UID, prefix="other")
    truncate(others[1])  # header intact: it is recognisably of the other series
    array, geom = read_image(folder, series_uid=UID)
    assert array.shape == (4, 5, 6) and geom.spacing[2] == pytest.approx(2.0)
    with pytest.raises(InputFileError, match="other_001.dcm"):
        read_image(folder, series_uid=OTHER_UID)


def _element(group: int, elem: int, value: bytes, vr: bytes | None = None, undefined: bool = False) -> bytes:
    """Little-endian DICOM element; implicit VR when ``vr`` is None (independent of the reader under test)."""
    import struct

    if len(value) % 2:
        value += b"\x00"
    length = 0xFFFFFFFF if undefined else len(value)
    if vr is None:
        return struct.pack("<HHI", group, elem, length) + value
    if vr in (b"SQ", b"OB", b"OW", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\x00\x00" + struct.pack("<I", length) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", length) + value


def test_series_uid_is_read_from_the_top_level_not_from_a_reference(tmp_path: Path) -> None:
    import struct

    from medcam3d.io.series_checks import dicom_series_uid

    # implicit VR, no preamble; an undefined-length Referenced Series Sequence names another series first
    item = _element(0x0020, 0x000E, b"1.2.3.999") + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = (
        _element(0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.481.3")
        + _element(0x0008, 0x1115, sequence, undefined=True)
        + _element(0x0020, 0x000D, b"1.2.3")
        + _element(0x0020, 0x000E, b"1.2.3.4")
        + _element(0x7FE0, 0x0010, b"\x00" * 64)
    )
    (tmp_path / "implicit.dcm").write_bytes(body)
    assert dicom_series_uid(tmp_path / "implicit.dcm") == "1.2.3.4"
    (tmp_path / "cut.dcm").write_bytes(body[:40])
    assert dicom_series_uid(tmp_path / "cut.dcm") is None
    # explicit VR little endian with preamble and file meta; a defined-length sequence this time
    syntax = _element(0x0002, 0x0010, b"1.2.840.10008.1.2.1", b"UI")
    meta = _element(0x0002, 0x0000, struct.pack("<I", len(syntax)), b"UL") + syntax
    nested = _element(0x0020, 0x000E, b"1.2.3.998", b"UI")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(nested)) + nested
    explicit = (
        b"\x00" * 128
        + b"DICM"
        + meta
        + _element(0x0008, 0x1115, item, b"SQ")
        + _element(0x0020, 0x000E, b"1.2.3.5", b"UI")
    )
    (tmp_path / "explicit.dcm").write_bytes(explicit)
    assert dicom_series_uid(tmp_path / "explicit.dcm") == "1.2.3.5"
    # and on files written by GDCM, it agrees with what SimpleITK reads
    for path in write_series(tmp_path / "ct", [1.0, 2.0]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert dicom_series_uid(path) == reader.GetMetaData("0020|000e").strip() == UID
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(5000))
    assert dicom_series_uid(tmp_path / "random.dcm") is None


# ---------------------------------------------------------------------------------------------------------
# 4. NaN/Inf voxels: refused in every format (ITK reads them as 0 from NIfTI), or read as they are on request
# ---------------------------------------------------------------------------------------------------------


def nonfinite_volume() -> np.ndarray:
    volume = np.random.default_rng(3).random((4, 5, 6)).astype(np.float32)
    volume[1, 2, 3] = np.nan
    volume[2, 0, 5] = np.inf
    volume[3, 4, 0] = -np.inf
    return volume


@pytest.mark.parametrize("ending", ENDINGS)
def test_nonfinite_voxels_are_refused_or_kept_never_zeroed(tmp_path: Path, ending: str) -> None:
    volume = nonfinite_volume()
    path = tmp_path / f"scan{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    with pytest.raises(NonFiniteInputError) as info:
        read_image(path)
    message = str(info.value)
    assert "3 NaN/Inf" in message and "(1, 2, 3)" in message and "nan_to_num" in message
    assert "allow_nonfinite=True" in message
    array, _ = read_image(path, allow_nonfinite=True)
    np.testing.assert_array_equal(array, volume)  # NaN where NaN, ±Inf where ±Inf, the rest unchanged


def test_nonfinite_nifti_written_by_nibabel_and_in_memory_images(tmp_path: Path) -> None:
    volume = nonfinite_volume()  # (z, y, x)
    xyz = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))
    nib.save(nib.Nifti1Image(xyz, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "nib.nii.gz")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nib.nii.gz")))[1, 2, 3] == 0.0  # ITK's zero
    with pytest.raises(NonFiniteInputError, match="silently read them as 0"):
        read_image(tmp_path / "nib.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "nib.nii.gz", allow_nonfinite=True)[0], volume)
    with pytest.raises(NonFiniteInputError):
        read_image(nib.load(tmp_path / "nib.nii.gz"))
    with pytest.raises(NonFiniteInputError):
        read_image(sitk.GetImageFromArray(volume))
    with pytest.raises(NonFiniteInputError, match="dtype=int16"):
        read_image(tmp_path / "nib.nii.gz", dtype=np.int16, allow_nonfinite=True)
    finite = np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)  # the advice in the message works
    nib.save(nib.Nifti1Image(np.transpose(finite, (2, 1, 0)), np.eye(4)), tmp_path / "clean.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "clean.nii.gz")[0], finite)
