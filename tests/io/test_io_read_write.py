"""medcam3d.io: geometry round trips, written maps, DICOM series, bad input (real files, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

from medcam3d.errors import (  # noqa: E402
    GeometryError,
    InputFileError,
    MultipleSeriesError,
    NonFiniteInputError,
    OutputPathError,
)
from medcam3d.io import (  # noqa: E402
    Geometry,
    list_dicom_series,
    map_to_original,
    read_geometry,
    read_image,
    resample_to_reference,
    write_map,
)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "oblique": rotation(0.3, -0.2, 0.6),
    "flips": np.diag([-1.0, 1.0, -1.0]),
    "oblique_flipped": rotation(0.1, 0.4, -0.3) @ np.diag([1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # sagittal-like
}


def make_image(direction: np.ndarray, shape=(6, 7, 8), spacing=(0.8, 1.2, 2.5), origin=(12.5, -30.0, 47.0)):
    rng = np.random.default_rng(0)
    array = rng.random(shape, dtype=np.float32) * 100
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return array, image


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_geometry_round_trip(tmp_path: Path, ending: str, name: str) -> None:
    array, image = make_image(DIRECTIONS[name])
    path = tmp_path / f"image{ending}"
    sitk.WriteImage(image, str(path))
    read, geometry = read_image(path)
    assert read.shape == (6, 7, 8) == geometry.shape  # (z, y, x)
    np.testing.assert_allclose(read, array, rtol=1e-6)
    np.testing.assert_allclose(geometry.spacing, (0.8, 1.2, 2.5), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, (12.5, -30.0, 47.0), atol=1e-4)
    np.testing.assert_allclose(geometry.direction, DIRECTIONS[name], atol=1e-5)
    assert read_geometry(path).allclose(geometry)
    # write a map with this geometry, read it back: same grid, float32
    out = write_map(read / 100.0, path, tmp_path / f"map{ending}")
    back, back_geometry = read_image(out)
    assert back.dtype == np.float32
    assert back_geometry.allclose(geometry, atol=1e-4)
    np.testing.assert_allclose(back, read / 100.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["identity", "oblique", "flips", "permuted"])
def test_written_map_affine_agrees_with_nibabel_and_sitk(tmp_path: Path, name: str) -> None:
    _, image = make_image(DIRECTIONS[name])
    reference = tmp_path / "reference.nii.gz"
    sitk.WriteImage(image, str(reference))
    cam = np.zeros((6, 7, 8), np.float32)
    cam[1, 2, 3] = 1.0  # z=1, y=2, x=3
    out = write_map(cam, reference, tmp_path / "cam.nii.gz")
    ref_nib, out_nib = nib.load(reference), nib.load(out)
    np.testing.assert_allclose(out_nib.affine, ref_nib.affine, atol=1e-4)
    np.testing.assert_allclose(out_nib.affine, read_geometry(reference).affine, atol=1e-4)
    assert out_nib.get_data_dtype() == np.float32
    # nibabel's array is (x, y, z): the peak is at [3, 2, 1]
    assert np.unravel_index(np.argmax(out_nib.get_fdata()), out_nib.shape) == (3, 2, 1)
    out_sitk = sitk.ReadImage(str(out))
    assert out_sitk.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(out_sitk.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(out_sitk.GetOrigin(), image.GetOrigin(), atol=1e-4)
    # the peak voxel lies at the same world point for both libraries
    world_ras = out_nib.affine @ np.array([3, 2, 1, 1.0])
    world_lps = np.array(out_sitk.TransformIndexToPhysicalPoint((3, 2, 1)))
    np.testing.assert_allclose(world_ras[:3] * [-1, -1, 1], world_lps, atol=1e-4)


def test_reference_kinds_and_nibabel_input(tmp_path: Path) -> None:
    _, image = make_image(DIRECTIONS["oblique"])
    sitk.WriteImage(image, str(tmp_path / "ref.nii.gz"))
    nib_image = nib.load(tmp_path / "ref.nii.gz")
    array, geometry = read_image(nib_image)
    sitk_array, sitk_geometry = read_image(tmp_path / "ref.nii.gz")
    assert geometry.allclose(sitk_geometry, atol=1e-4)
    np.testing.assert_allclose(array, sitk_array)
    cam = np.ones((1, 1, 6, 7, 8), np.float32)  # (N, C, D, H, W) batch of one is accepted
    for i, reference in enumerate([geometry, image, nib_image, str(tmp_path / "ref.nii.gz")]):
        out = write_map(cam, reference, tmp_path / f"out{i}.mha")
        assert read_geometry(out).allclose(sitk_geometry, atol=1e-4)
    # Geometry helpers agree with SimpleITK
    np.testing.assert_allclose(
        geometry.index_to_world((1, 2, 3)),
        image.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 1.0)),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        geometry.world_to_index(geometry.index_to_world((1, 2, 3))), (1, 2, 3), atol=1e-6
    )
    assert Geometry.from_affine(geometry.affine, geometry.shape).allclose(geometry)


def test_mhd_with_detached_data_is_read(tmp_path: Path) -> None:
    array, image = make_image(DIRECTIONS["flips"])
    sitk.WriteImage(image, str(tmp_path / "image.mhd"))
    assert (tmp_path / "image.raw").exists() or (tmp_path / "image.zraw").exists()
    read, geometry = read_image(tmp_path / "image.mhd")
    np.testing.assert_allclose(read, array)
    np.testing.assert_allclose(geometry.direction, DIRECTIONS["flips"])
    with pytest.raises(OutputPathError, match=r"\.mha"):
        write_map(read, geometry, tmp_path / "map.mhd")
    assert not (tmp_path / "map.mhd").exists()


def write_dicom_series(
    folder: Path, uid: str, description: str, n_slices: int = 4, spacing_z: float = 2.0
) -> None:
    folder.mkdir(exist_ok=True)
    for k in range(n_slices):
        slice_image = sitk.GetImageFromArray(np.arange(30, dtype=np.int16).reshape(5, 6) + 100 * k)
        slice_image.SetSpacing((0.5, 0.75))
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0010|0020": "TEST",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"-10\\-20\\{k * spacing_z + 5}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series(tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.101", "T1 axial", n_slices=4, spacing_z=2.0)
    array, geometry = read_image(folder)
    assert array.shape == (4, 5, 6)
    np.testing.assert_allclose(geometry.spacing, (0.5, 0.75, 2.0), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, (-10, -20, 5), atol=1e-5)
    np.testing.assert_array_equal(array[2], np.arange(30).reshape(5, 6) + 200)
    # a second series in the same folder: the reader lists both and asks which
    write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.202", "T2 axial", n_slices=3, spacing_z=3.0)
    series = list_dicom_series(folder)
    assert sorted(s.uid for s in series) == [
        "1.2.826.0.1.3680043.2.1125.101",
        "1.2.826.0.1.3680043.2.1125.202",
    ]
    with pytest.raises(MultipleSeriesError) as info:
        read_image(folder)
    message = str(info.value)
    assert "2 DICOM series" in message and "series_uid" in message
    assert "1.2.826.0.1.3680043.2.1125.101" in message and "T2 axial" in message
    assert len(info.value.series) == 2
    chosen, chosen_geometry = read_image(folder, series_uid="1.2.826.0.1.3680043.2.1125.202")
    assert chosen.shape == (3, 5, 6)
    assert chosen_geometry.spacing[2] == pytest.approx(3.0)
    with pytest.raises(InputFileError, match="not in"):
        read_image(folder, series_uid="9.9.9")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="No DICOM series"):
        read_image(empty)


def test_unreadable_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not an image" * 50)
    with pytest.raises(InputFileError, match="garbage.nii.gz"):
        read_image(tmp_path / "garbage.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError):
        read_image(tmp_path / "notes.txt")
    # a truncated NIfTI (header fine, voxels cut off)
    _, image = make_image(np.eye(3), shape=(20, 20, 20))
    sitk.WriteImage(image, str(tmp_path / "full.nii"))
    data = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "truncated.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated"):
        read_image(tmp_path / "truncated.nii")
    # a valid gzip file of two members (as pigz may write) is not mistaken for a truncated one
    import gzip

    raw = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(
        read_image(tmp_path / "two.nii.gz")[0], read_image(tmp_path / "full.nii")[0]
    )
    for ending in (".nii.gz", ".mha", ".nrrd"):  # compressed files cut short
        sitk.WriteImage(image, str(tmp_path / f"full{ending}"), True)
        data = (tmp_path / f"full{ending}").read_bytes()
        (tmp_path / f"cut{ending}").write_bytes(data[: len(data) // 2])
        with pytest.raises(InputFileError, match=f"cut{ending}"):
            read_image(tmp_path / f"cut{ending}")
    with pytest.raises(InputFileError):
        read_image(12345)


def test_bad_maps_and_existing_outputs_leave_nothing_half_written(tmp_path: Path) -> None:
    _, image = make_image(np.eye(3))
    reference = tmp_path / "ref.nii.gz"
    sitk.WriteImage(image, str(reference))
    before = set(tmp_path.iterdir())
    with pytest.raises(GeometryError, match=r"\(6, 7, 8\)"):
        write_map(np.zeros((6, 7, 9), np.float32), reference, tmp_path / "bad.nii.gz")
    with pytest.raises(NonFiniteInputError):
        write_map(np.full((6, 7, 8), np.nan, np.float32), reference, tmp_path / "nan.nii.gz")
    with pytest.raises(GeometryError):
        write_map(np.zeros((7, 8), np.float32), reference, tmp_path / "flat.nii.gz")
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file left behind

    out = write_map(np.ones((6, 7, 8), np.float32), reference, tmp_path / "cam.nii.gz")
    content = out.read_bytes()
    with pytest.raises(OutputPathError, match="overwrite"):
        write_map(np.zeros((6, 7, 8), np.float32), reference, out)
    assert out.read_bytes() == content
    write_map(np.zeros((6, 7, 8), np.float32), reference, out, overwrite=True)
    assert read_image(out)[0].max() == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.nii.gz", "ref.nii.gz"]


def smooth_volume(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return (0.5 * z + 0.3 * y + 0.2 * x + 1).astype(np.float32)  # linear: interpolation is exact


def test_map_to_original_undoes_crop_pad_flip_and_resampling(tmp_path: Path) -> None:
    _, image = make_image(DIRECTIONS["oblique"], shape=(10, 12, 14))
    original = read_geometry(image)
    truth = smooth_volume((10, 12, 14))

    # crop and pad: the model saw truth[2:8, -2:10, 3:14] (rows -2..-1 zero padding)
    model = original.crop((2, -2, 3), (8, 10, 14))
    cam = np.zeros(model.shape, np.float32)
    cam[:, 2:, :] = truth[2:8, 0:10, 3:14]
    back = map_to_original(cam, original, model)
    np.testing.assert_allclose(back[2:8, 0:10, 3:14], truth[2:8, 0:10, 3:14], atol=1e-4)
    assert back[:2].max() == 0 and back[:, 10:].max() == 0 and back[:, :, :3].max() == 0

    # reorientation: flip z and swap the in-plane axes (a transpose), geometry updated accordingly
    flipped = np.ascontiguousarray(np.transpose(truth[::-1], (0, 2, 1)))  # (z', x, y)
    d = original.direction
    flip_dir = np.stack([d[:, 1], d[:, 0], -d[:, 2]], axis=1)
    flip_origin = original.index_to_world((9, 0, 0))
    flip_geom = Geometry(
        shape=flipped.shape,
        spacing=(original.spacing[1], original.spacing[0], original.spacing[2]),
        origin=tuple(flip_origin),
        direction=flip_dir,
    )
    back = map_to_original(flipped, image, flip_geom)
    np.testing.assert_allclose(back, truth, atol=1e-4)

    # resampling to a 2x coarser grid and back (linear function: exact inside the field of view)
    sitk_image = original.to_sitk(truth)
    coarse = sitk.Resample(
        sitk_image,
        [7, 6, 5],
        sitk.Transform(),
        sitk.sitkLinear,
        original.origin,
        tuple(2 * s for s in original.spacing),
        tuple(original.direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    coarse_cam, coarse_geom = read_image(coarse)
    back = resample_to_reference(coarse_cam, coarse_geom, original)
    np.testing.assert_allclose(back[:9, :11, :13], truth[:9, :11, :13], atol=1e-3)
    with pytest.raises(GeometryError):
        resample_to_reference(coarse_cam[:-1], coarse_geom, original)


def test_map_to_original_with_monai_inverse(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from monai.transforms import (
        CenterSpatialCrop,
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        Spacing,
        SpatialPad,
    )

    truth = np.zeros((12, 14, 16), np.float32)
    truth[4:8, 5:9, 6:10] = 1.0
    image = sitk.GetImageFromArray(truth)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((3.0, -4.0, 5.0))
    image.SetDirection(tuple(np.diag([1.0, -1.0, 1.0]).ravel()))
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(path))

    preprocess = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation("RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacing(pixdim=(1.0, 1.0, 1.0)),
            SpatialPad((18, 18, 26)),
            CenterSpatialCrop((18, 16, 24)),
        ]
    )
    seen = preprocess(str(path))  # MetaTensor (C, X, Y, Z) the model sees
    cam = seen[0].numpy().copy()  # a "map" that is the input itself, in the tensor's (X, Y, Z) axes
    via_inverse = map_to_original(cam, path, like=seen, transform=preprocess)
    via_affine = map_to_original(cam, path, like=seen)
    for back in (via_inverse, via_affine):
        assert back.shape == truth.shape
        assert np.abs(back - truth).max() < 0.51  # z was upsampled 2x and back: linear blur at edges
        assert np.corrcoef(back.ravel(), truth.ravel())[0, 1] > 0.95
    with pytest.raises(GeometryError):
        map_to_original(cam[:-1], path, like=seen)
