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
    before = paths[PEAK[0]].read_bytes()
    with pytest.raises(OutputPathError, match="overwrite"):
        save_slice_pngs(image, np.zeros_like(cam), tmp_path / "slices")
    assert paths[PEAK[0]].read_bytes() == before
    save_slice_pngs(image, np.zeros_like(cam), tmp_path / "slices", overwrite=True)  # a zero map: image only
    assert hot(read_png(paths[PEAK[0]])).sum() == 0
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
    from medcam3d.viz.planes import take_plane

    shape = (6, 7, 8)  # (z, y, x)
    d = np.asarray(direction)
    # index of the R, A, S ends along x, y, z: LPS direction column sign > 0 means "grows to L/P/S"
    x_r = 0 if d[0, 0] > 0 else shape[2] - 1
    y_a = 0 if d[1, 1] > 0 else shape[1] - 1
    z_s = shape[0] - 1 if d[2, 2] > 0 else 0
    vol = np.zeros(shape, np.float32)
    vol[z_s, y_a, x_r] = 1.0
    expected_letters = {0: ("R", "L", "A", "P"), 1: ("R", "L", "S", "I"), 2: ("A", "P", "S", "I")}
    for axis, index in ((0, z_s), (1, y_a), (2, x_r)):
        plane = take_plane(vol, None, None, axis, index, (1.0, 1.0, 1.0), d)
        assert plane.image[0, 0] == 1.0, f"{plane.name}: marker not top-left for direction {d.tolist()}"
        assert plane.image.sum() == 1.0
        assert plane.letters == expected_letters[axis], plane.letters


# ------------------------------------------------------------------ ground truth, titles, threshold, comparison
def two_label_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:8, 8:13, 21:28] = 1  # around the peak (5, 10, 24)
    mask[4:7, 16:20, 4:9] = 2  # elsewhere
    return mask


def contour_extent(collection: object) -> tuple[float, float, float, float]:
    """(x min, x max, y min, y max) of a contour's vertices in data (pixel) coordinates."""
    vertices = np.concatenate([p.vertices for p in collection.get_paths()])  # type: ignore[attr-defined]
    return vertices[:, 0].min(), vertices[:, 0].max(), vertices[:, 1].min(), vertices[:, 1].max()


def test_mask_is_drawn_as_contours_with_a_legend(tmp_path: Path) -> None:
    from matplotlib.colors import to_hex
    from matplotlib.contour import ContourSet

    from medcam3d.viz import LABEL_COLOURS, build_three_plane_figure

    image, cam = volumes()
    mask = two_label_mask()
    fig = build_three_plane_figure(
        image, cam, voxel=(5, 10, 24), mask=mask, mask_labels={1: "lesion", 2: "cyst"}, crosshair=False
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lesion", "cyst"]
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    contours = [[c for c in ax.collections if isinstance(c, ContourSet)] for ax in panels]
    # axial z=5 cuts both labels; coronal y=10 and sagittal x=24 only label 1
    assert [len(c) for c in contours] == [2, 1, 1]
    colours = [to_hex(c.get_edgecolor()[0]) for c in contours[0]]
    assert colours == [LABEL_COLOURS[0], LABEL_COLOURS[1]]
    # the contour runs along the label's voxel edges (half a pixel outside the voxel centres)
    # axial: shown as stored (rows y, columns x); label 1 covers y 8..12, x 21..27
    np.testing.assert_allclose(contour_extent(contours[0][0]), (20.5, 27.5, 7.5, 12.5), atol=1e-6)
    np.testing.assert_allclose(contour_extent(contours[0][1]), (3.5, 8.5, 15.5, 19.5), atol=1e-6)
    # coronal: rows z shown superior-up (row = 15 - z), columns x; label 1 covers z 3..7
    np.testing.assert_allclose(contour_extent(contours[1][0]), (20.5, 27.5, 15 - 7.5, 15 - 2.5), atol=1e-6)
    # sagittal: rows z (superior up), columns y (anterior left); label 1 covers y 8..12
    np.testing.assert_allclose(contour_extent(contours[2][0]), (7.5, 12.5, 15 - 7.5, 15 - 2.5), atol=1e-6)
    # the image limits are untouched by the contours
    assert panels[0].get_xlim() == (-0.5, SHAPE[2] - 0.5) and panels[0].get_ylim() == (SHAPE[1] - 0.5, -0.5)

    # in the written file the contour colours appear in the axial panel
    out = three_plane_figure(
        image, cam, tmp_path / "gt.png", mask=mask, dpi=120, colorbar=False, voxel=(5, 10, 24)
    )
    rgb = read_png(out)
    lime = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.4) & (rgb[..., 2] < 0.4)
    magenta = (rgb[..., 0] > 0.8) & (rgb[..., 2] > 0.8) & (rgb[..., 1] < 0.4)
    third = round((12 - 0.9) / 3 * 120)  # panel width: the legend takes 0.9 inch on the right
    assert lime[:, :third].sum() > 20 and magenta[:, :third].sum() > 20
    assert lime[:, third : 3 * third].sum() == 0  # label 2 is not in the coronal and sagittal planes
    assert lime[:, 3 * third :].sum() > 5  # its legend entry


def test_montage_and_mip_outline_the_mask() -> None:
    from matplotlib.contour import ContourSet

    from medcam3d.viz import build_mip_figure, build_montage_figure

    image, cam = volumes()
    mask = two_label_mask()
    fig = build_montage_figure(image, cam, slices=[1, 5], ncols=2, mask=mask, mask_labels={1: "a", 2: "b"})
    per_panel = [sum(isinstance(c, ContourSet) for c in ax.collections) for ax in fig.axes if ax.images]
    assert per_panel == [0, 2]  # slice 1 misses both labels, slice 5 cuts both
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    mip = build_mip_figure(image, cam, mask=mask > 0)
    per_panel = [sum(isinstance(c, ContourSet) for c in ax.collections) for ax in mip.axes if ax.images]
    assert per_panel == [1, 1, 1]
    assert [t.get_text() for t in mip.legends[0].get_texts()] == ["mask"]


def test_panel_titles_give_voxel_and_world_position() -> None:
    from medcam3d.io import Geometry
    from medcam3d.viz import build_montage_figure, build_three_plane_figure

    image, cam = volumes()
    geometry = Geometry(shape=SHAPE, spacing=(0.5, 0.75, 2.0), origin=(-10.0, 20.0, -30.0))  # (x, y, z)
    fig = build_three_plane_figure(image, cam, geometry=geometry, voxel=(5, 10, 24))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    # identity direction: x -> L, y -> P, z -> S; world = origin + spacing * index (x, y, z)
    x_mm, y_mm, z_mm = -10.0 + 0.5 * 24, 20.0 + 0.75 * 10, -30.0 + 2.0 * 5
    assert titles == [
        f"axial z=5 (I {abs(z_mm):.1f} mm)",
        f"coronal y=10 (P {y_mm:.1f} mm)",
        f"sagittal x=24 (L {x_mm:.1f} mm)",
    ]
    # without a geometry: voxel indices only; with (array, Geometry) the geometry comes along
    assert [
        ax.get_title() for ax in build_three_plane_figure(image, cam, voxel=(5, 10, 24)).axes if ax.images
    ] == [
        "axial z=5",
        "coronal y=10",
        "sagittal x=24",
    ]
    fig = build_three_plane_figure((image, geometry), cam, voxel=(5, 10, 24))
    assert [ax.get_title() for ax in fig.axes if ax.images][0] == titles[0]
    flipped = Geometry(shape=SHAPE, spacing=(1.0, 1.0, 1.0), direction=np.diag([-1.0, -1.0, 1.0]))
    montage_fig = build_montage_figure(image, cam, axis=2, slices=[3], geometry=flipped)
    texts = [t.get_text() for ax in montage_fig.axes for t in ax.texts]
    assert "x=3\nR 3.0 mm" in texts  # x grows to the patient's right in this grid


def test_default_threshold_is_a_fifth_of_the_map_range(caplog: pytest.LogCaptureFixture) -> None:
    from medcam3d.viz import DEFAULT_THRESHOLD, build_three_plane_figure

    image, cam = volumes()
    cam = 0.1 + 0.8 * cam  # range 0.1 .. 0.9
    fig = build_three_plane_figure(image, cam, voxel=PEAK, cmap="autumn", alpha=1.0, crosshair=False)
    shown = np.asarray(fig.axes[0].images[0].get_array())  # axial, shown as stored
    gray = window_image(image)[PEAK[0]]
    coloured = np.any(np.abs(shown - gray[..., None]) > 1e-6, axis=-1)
    level = cam.min() + DEFAULT_THRESHOLD * (cam.max() - cam.min())
    np.testing.assert_array_equal(coloured, cam[PEAK[0]] >= level)
    assert 0 < coloured.sum() < coloured.size
    # a constant map colours nothing, and says so
    with caplog.at_level("WARNING", logger="medcam3d.viz"):
        flat = build_three_plane_figure(image, np.full(SHAPE, 0.3, np.float32), voxel=PEAK, crosshair=False)
    np.testing.assert_allclose(
        np.asarray(flat.axes[0].images[0].get_array())[..., 0], window_image(image)[PEAK[0]]
    )
    assert "constant" in caplog.text


def test_compare_methods_figure(tmp_path: Path) -> None:
    from matplotlib.contour import ContourSet

    from medcam3d.viz import build_compare_methods_figure, compare_methods_figure

    image, cam = volumes()
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    other = np.exp(-(((z - PEAK[0]) / 1.5) ** 2 + ((y - 10) / 2.0) ** 2 + ((x - 6) / 2.0) ** 2)).astype(
        np.float32
    )
    mask = two_label_mask()
    maps = {"gradcam": cam, "layercam": other}
    out = compare_methods_figure(
        image, maps, tmp_path / "compare.png", mask=mask == 1, dpi=50, panel_size=2.0, colorbar=False, **STYLE
    )
    rgb = read_png(out)
    # 0.3 inch of row labels + 3 panels of 2 inch (+0.9 for the legend); 2 rows of 2 + 0.3 inch
    assert rgb.shape[:2] == (round(2 * 2.3 * 50), round((0.3 + 6 + 0.9) * 50))
    mask_hot = hot(rgb)
    left, panel = round(0.3 * 50), 100
    row_height = rgb.shape[0] // 2
    axial = [mask_hot[r * row_height : (r + 1) * row_height, left : left + panel] for r in range(2)]
    cols = [np.nonzero(a)[1].mean() / panel for a in axial]
    # gradcam's blob is at x = 24 of 32 (right of centre), layercam's at x = 6 (left)
    assert cols[0] > 0.6 and cols[1] < 0.35, cols
    fig = build_compare_methods_figure(image, maps, mask=mask == 1)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    assert all(any(isinstance(c, ContourSet) for c in ax.collections) for ax in panels)
    assert {"gradcam", "layercam"} <= {t.get_text() for t in fig.texts}
    # the planes pass through the mask (its centre), the same for every row
    assert [ax.get_title() for ax in panels[:3]] == ["axial z=5", "coronal y=10", "sagittal x=24"]
    assert [ax.get_title() for ax in panels[3:]] == ["", "", ""]
    with pytest.raises(ConfigurationError, match="empty"):
        build_compare_methods_figure(image, {})


def test_map_on_another_grid_is_refused_and_no_overlap_is_named(tmp_path: Path) -> None:
    from medcam3d.errors import GeometryError
    from medcam3d.io import Geometry

    image, cam = volumes()
    grid = Geometry(shape=SHAPE)
    far = Geometry(shape=SHAPE, origin=(500.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="does not overlap"):
        three_plane_figure((image, grid), (cam, far), tmp_path / "far.png")
    shifted = Geometry(shape=SHAPE, origin=(5.0, 0.0, 0.0))
    with pytest.raises(InputShapeError, match="map_to_original"):
        three_plane_figure((image, grid), (cam, shifted), tmp_path / "shifted.png")
    with pytest.raises(GeometryError, match="does not overlap"):
        three_plane_figure((image, grid), cam, tmp_path / "mask.png", mask=(cam > 0.5, far))
    assert list(tmp_path.iterdir()) == []


def test_slice_pngs_outline_the_mask(tmp_path) -> None:
    import matplotlib.image

    from medcam3d.viz import save_slice_pngs
    from medcam3d.viz.figures import label_outline

    image = np.zeros((3, 12, 14), np.float32)
    cam = np.zeros_like(image)
    mask = np.zeros((3, 12, 14), np.uint8)
    mask[1, 3:8, 4:10] = 2
    paths = save_slice_pngs(image, cam, tmp_path, axis=0, mask=mask, overwrite=True)
    pixels = matplotlib.image.imread(paths[1])[..., :3]
    magenta = np.all(np.isclose(pixels, (1.0, 0.0, 1.0), atol=1 / 255), axis=-1)
    expected = np.zeros((12, 14), bool)
    expected[3:8, 4:10] = True
    expected[4:7, 5:9] = False  # the interior stays unpainted: a one-pixel outline
    assert np.array_equal(magenta, expected)
    assert np.array_equal(label_outline(mask[1]), expected)
    assert not np.any(np.all(np.isclose(matplotlib.image.imread(paths[0])[..., :3], (1, 0, 1)), axis=-1))
