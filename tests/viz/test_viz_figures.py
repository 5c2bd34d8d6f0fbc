"""medcam3d.viz figures: real files, right size, the peak in the right panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

from medcam3d.errors import ConfigurationError, InputShapeError, OutputPathError  # noqa: E402
from medcam3d.viz import (  # noqa: E402
    CT_WINDOWS,
    colorbar_figure,
    mip_figure,
    montage,
    orientation_labels,
    overlay,
    save_slice_pngs,
    three_plane_figure,
    window_image,
)

SHAPE = (16, 24, 32)  # (z, y, x)
PEAK = (5, 10, 24)
# "autumn" maps v to (1, v, 0): overlay pixels are pure red/orange/yellow, never gray
STYLE = {"cmap": "autumn", "alpha": 1.0, "threshold": 0.5}


def volumes() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    image = (np.sin(x / 3) + np.cos(y / 4) + z / 8) * 100
    cam = np.exp(-(((z - PEAK[0]) / 1.5) ** 2 + ((y - PEAK[1]) / 2.0) ** 2 + ((x - PEAK[2]) / 2.0) ** 2))
    return image.astype(np.float32), cam.astype(np.float32)


def read_png(path: Path) -> np.ndarray:
    rgb = matplotlib.image.imread(path)[..., :3]
    assert rgb.dtype == np.float32
    return rgb


def hot(rgb: np.ndarray) -> np.ndarray:
    """Pixels coloured by the overlay (autumn at >= 0.5: red 1, green >= 0.5, blue 0)."""
    return (rgb[..., 0] > 0.95) & (rgb[..., 1] > 0.4) & (rgb[..., 2] < 0.05)


def test_three_plane_figure_size_and_peak_panels(tmp_path: Path) -> None:
    image, cam = volumes()
    out = three_plane_figure(
        image,
        cam,
        tmp_path / "planes.png",
        spacing=(2.0, 1.0, 1.0),
        dpi=50,
        colorbar=False,
        crosshair=False,
        title="peak",
        **STYLE,
    )
    rgb = read_png(out)
    assert rgb.shape[:2] == (round(4.4 * 50), 12 * 50)
    mask = hot(rgb)
    width = rgb.shape[1]
    thirds = [mask[:, i * width // 3 : (i + 1) * width // 3] for i in range(3)]
    assert all(t.sum() > 10 for t in thirds), [int(t.sum()) for t in thirds]
    # axial panel: x = 24 of 32 -> the blob sits right of the panel centre, y = 10 of 24 -> above it
    rows, cols = np.nonzero(thirds[0])
    panel = rgb[:, : width // 3]
    image_rows = np.nonzero((panel.min(axis=2) < 0.99).mean(axis=1) > 0.5)[0]  # rows of the slice image
    image_cols = np.nonzero((panel.min(axis=2) < 0.99).mean(axis=0) > 0.5)[0]
    rel_x = (cols.mean() - image_cols.min()) / (image_cols.max() - image_cols.min())
    rel_y = (rows.mean() - image_rows.min()) / (image_rows.max() - image_rows.min())
    assert abs(rel_x - (PEAK[2] + 0.5) / SHAPE[2]) < 0.05, rel_x
    assert abs(rel_y - (PEAK[1] + 0.5) / SHAPE[1]) < 0.05, rel_y  # row 0 (anterior) at the top
    # through a voxel far from the blob in z, the axial panel shows no map, the others still do
    out2 = three_plane_figure(
        image, cam, tmp_path / "off.png", voxel=(14, 10, 24), dpi=50, colorbar=False, crosshair=False, **STYLE
    )
    mask2 = hot(read_png(out2))
    assert mask2[:, : width // 3].sum() == 0
    assert mask2[:, width // 3 : 2 * width // 3].sum() > 10 and mask2[:, 2 * width // 3 :].sum() > 10
    # with a colorbar, coloured pixels appear at the far right
    out3 = three_plane_figure(image, cam, tmp_path / "bar.png", dpi=50, **STYLE)
    assert hot(read_png(out3))[:, int(0.9 * width) :].sum() > 10


@pytest.mark.parametrize("ending, magic", [(".pdf", b"%PDF"), (".svg", b"<svg")])
def test_vector_formats(tmp_path: Path, ending: str, magic: bytes) -> None:
    image, cam = volumes()
    out = three_plane_figure(image, cam, tmp_path / f"figure{ending}", title="a <b> & c")
    data = out.read_bytes()
    assert magic in data[:400]
    assert len(data) > 5000


def test_montage_peak_in_its_panel(tmp_path: Path) -> None:
    image, cam = volumes()
    out = montage(
        image,
        cam,
        tmp_path / "montage.png",
        slices=[1, 5, 9, 13],
        ncols=4,
        dpi=50,
        colorbar=False,
        panel_size=2.0,
        **STYLE,
    )
    rgb = read_png(out)
    assert rgb.shape[:2] == (100, 400)
    mask = hot(rgb)
    per_panel = [int(mask[:, i * 100 : (i + 1) * 100].sum()) for i in range(4)]
    assert per_panel[1] > 10 and per_panel[0] == per_panel[2] == per_panel[3] == 0, per_panel
    # along x (sagittal) the default slices cover the blob
    out_x = montage(image, cam, tmp_path / "sagittal.png", axis=2, dpi=40, title="x", **STYLE)
    assert hot(read_png(out_x)).sum() > 10
    with pytest.raises(ConfigurationError):
        montage(image, cam, tmp_path / "bad.png", slices=[99])


def test_mip_and_colorbar(tmp_path: Path) -> None:
    image, cam = volumes()
    out = mip_figure(image, cam, tmp_path / "mip.png", dpi=50, panel_size=2.0, colorbar=False, **STYLE)
    rgb = read_png(out)
    assert rgb.shape[:2] == (100, 300)
    mask = hot(rgb)
    assert all(mask[:, i * 100 : (i + 1) * 100].sum() > 10 for i in range(3))
    bar = read_png(colorbar_figure(tmp_path / "bar.png", cmap="autumn", dpi=100))
    assert bar.shape[:2] == (300, 100)
    assert hot(bar).sum() > 50


def test_save_slice_pngs(tmp_path: Path) -> None:
    image, cam = volumes()
    paths = save_slice_pngs(image, cam, tmp_path / "slices", **STYLE)
    assert [p.name for p in paths] == [f"slice_{i:03d}.png" for i in range(16)]
    counts = []
    for p in paths:
        rgb = read_png(p)
        assert rgb.shape == (24, 32, 3)  # one pixel per voxel
        counts.append(int(hot(rgb).sum()))
    assert int(np.argmax(counts)) == PEAK[0]
    sagittal = save_slice_pngs(image, cam, tmp_path / "sag", axis=2, prefix="x")
    assert len(sagittal) == 32 and read_png(sagittal[0]).shape == (16, 24, 3)
    # existing files: refused, nothing touched
    before = paths[3].read_bytes()
    with pytest.raises(OutputPathError, match="overwrite"):
        save_slice_pngs(image, np.zeros_like(cam), tmp_path / "slices")
    assert paths[3].read_bytes() == before
    save_slice_pngs(image, np.zeros_like(cam), tmp_path / "slices", overwrite=True)
    assert paths[3].read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "slices").iterdir()) == [p.name for p in paths]


def test_cam_is_clipped_not_wrapped() -> None:
    gray = np.full((4, 4), 0.5, np.float32)
    high = overlay(gray, np.full((4, 4), 1.7, np.float32), window=(0, 1), cmap="jet", alpha=0.7)
    one = overlay(gray, np.ones((4, 4), np.float32), window=(0, 1), cmap="jet", alpha=0.7)
    np.testing.assert_allclose(high, one)
    low = overlay(gray, np.full((4, 4), -3.0, np.float32), window=(0, 1), cmap="jet", alpha=0.7)
    zero = overlay(gray, np.zeros((4, 4), np.float32), window=(0, 1), cmap="jet", alpha=0.7)
    np.testing.assert_allclose(low, zero)
    below = overlay(gray, np.full((4, 4), 0.2, np.float32), window=(0, 1), threshold=0.3)
    np.testing.assert_allclose(below, 0.5)  # under the threshold only the image shows


def test_windows_and_labels() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0], np.float32)
    np.testing.assert_allclose(window_image(hu, "brain"), [0, 0, 0.5, 1, 1])
    level, width = CT_WINDOWS["lung"]
    np.testing.assert_allclose(window_image(np.array([level], np.float32), "lung"), [0.5])
    for preset in ("abdomen", "bone", "lung", "brain"):
        assert window_image(hu, preset).max() <= 1.0
    mri = np.linspace(0, 1000, 1001, dtype=np.float32)
    shown = window_image(mri)  # percentiles 1..99
    assert shown[5] == 0.0 and shown[995] == 1.0 and 0.45 < shown[500] < 0.55
    np.testing.assert_allclose(window_image(mri, (0, 500))[[0, 250, 1000]], [0, 0.5, 1])
    with pytest.raises(ConfigurationError, match="brain"):
        window_image(hu, "kidney-stone")
    assert orientation_labels(np.eye(3), 2) == ("R", "L")
    assert orientation_labels(np.eye(3), 1) == ("A", "P")
    assert orientation_labels(np.eye(3), 0) == ("I", "S")
    assert orientation_labels(np.diag([-1.0, -1.0, 1.0]), 2) == ("L", "R")  # RAS-stored image


def test_bad_input(tmp_path: Path) -> None:
    image, cam = volumes()
    with pytest.raises(InputShapeError, match="same shape"):
        three_plane_figure(image, cam[:-1], tmp_path / "x.png")
    with pytest.raises(OutputPathError, match="png"):
        three_plane_figure(image, cam, tmp_path / "x.bmp")
    (tmp_path / "exists.png").write_bytes(b"keep")
    with pytest.raises(OutputPathError, match="overwrite"):
        three_plane_figure(image, cam, tmp_path / "exists.png")
    assert (tmp_path / "exists.png").read_bytes() == b"keep"
    three_plane_figure(image, cam, tmp_path / "exists.png", overwrite=True, dpi=30)
    assert (tmp_path / "exists.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigurationError, match="outside"):
        three_plane_figure(image, cam, tmp_path / "v.png", voxel=(16, 0, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.png"]


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])])
def test_panels_are_shown_in_radiological_orientation(direction: np.ndarray) -> None:
    # A marker at the patient's anterior-right-superior corner lands top-left in every panel:
    # axial (A up, R left), coronal (S up, R left), sagittal (S up, A left), whatever the storage order.
    from matplotlib.figure import Figure

    from medcam3d.viz.figures import _PLANE, _panel

    shape = (6, 7, 8)  # (z, y, x)
    d = np.asarray(direction)
    # index of the R, A, S ends along x, y, z: LPS direction column sign > 0 means "grows to L/P/S"
    x_r = 0 if d[0, 0] > 0 else shape[2] - 1
    y_a = 0 if d[1, 1] > 0 else shape[1] - 1
    z_s = shape[0] - 1 if d[2, 2] > 0 else 0
    vol = np.zeros(shape, np.float32)
    vol[z_s, y_a, x_r] = 1.0
    for axis, index in ((0, z_s), (1, y_a), (2, x_r)):
        name, row_axis, col_axis, flip = _PLANE[axis]
        slab = np.take(vol, index, axis=axis)
        rgb = np.repeat(slab[..., None], 3, axis=-1)
        ax = Figure().add_subplot()
        _panel(ax, rgb, 1.0, row_axis, col_axis, d, flip, name)
        shown = np.asarray(ax.images[0].get_array())[..., 0]
        assert shown[0, 0] == 1.0, f"{name}: marker not top-left for direction {d.tolist()}"
