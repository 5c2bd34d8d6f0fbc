"""The self-contained HTML viewer: page content, CLI, and a real render in headless Chromium."""

from __future__ import annotations

import argparse
import base64
import gzip
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

from medcam3d.errors import GeometryError, OutputPathError  # noqa: E402
from medcam3d.io import Geometry, read_geometry  # noqa: E402
from medcam3d.viz import viewer_cli  # noqa: E402
from medcam3d.viz.viewer import bundled_niivue_version, write_viewer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
#: Headless Chromium without a GPU: WebGL2 runs on SwiftShader (ANGLE's CPU renderer).
#: --disable-gpu alone still falls back to SwiftShader but prints a deprecation warning; naming
#: it explicitly (--use-angle=swiftshader --enable-unsafe-swiftshader) keeps working after that fallback goes.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--hide-scrollbars", "--window-size=1000,700", "--virtual-time-budget=8000",
]  # fmt: skip

SHAPE = (24, 32, 40)  # (z, y, x)
PEAK = (8, 12, 28)
WEIRD_NAME = 'scan <b onmouseover="alert(1)">&amp; é.nii.gz'


def make_files(folder: Path) -> tuple[Path, Path]:
    """A gray CT-like scan (oblique-free, z spacing 2 mm) and a Gaussian map, as NIfTI files."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    scan = (np.sin(x / 4) + np.cos(y / 5)) * 200 + 40
    cam = np.exp(-(((z - PEAK[0]) / 3) ** 2 + ((y - PEAK[1]) / 4) ** 2 + ((x - PEAK[2]) / 4) ** 2))
    geometry = Geometry(shape=SHAPE, spacing=(1.0, 1.0, 2.0), origin=(-20.0, 10.0, 5.0))
    image_path, map_path = folder / WEIRD_NAME, folder / "cam.nii.gz"
    sitk.WriteImage(geometry.to_sitk(scan.astype(np.int16)), str(image_path))
    sitk.WriteImage(geometry.to_sitk(cam.astype(np.float32)), str(map_path))
    return image_path, map_path


def embedded_data(page: str) -> dict:
    match = re.search(r'<script id="medcam3d-data" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def decode(text: str) -> bytes:
    """The NIfTI bytes of an embedded volume."""
    return gzip.decompress(base64.b64decode(text))


def test_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    image_path, map_path = make_files(tmp_path)
    title = '</script><script>alert("x")</script> & <i>'
    out = write_viewer(image_path, map_path, tmp_path / "viewer.html", title=title)
    page = out.read_text(encoding="utf-8")
    # nothing to fetch: no external scripts, styles or images; a CSP forbids network access
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", page, re.I)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "'unsafe-eval'" not in page  # the bundled NiiVue needs no eval (the Chromium tests load the page)
    assert f"NiiVue {bundled_niivue_version()}" in page
    # every user-given name is escaped
    assert title not in page and 'alert("x")' not in page.replace(html.escape('alert("x")'), "")
    assert f"<title>{html.escape(title)}</title>" in page
    assert WEIRD_NAME not in page and "<b onmouseover" not in page
    data = embedded_data(page)
    assert data["imageName"] == WEIRD_NAME
    # the embedded volumes are gzipped NIfTI with the files' geometry and values
    reference = read_geometry(image_path)
    for key, source in (("image", image_path), ("map", map_path)):
        embedded = tmp_path / f"embedded_{key}.nii"
        embedded.write_bytes(decode(data["image"] if key == "image" else data["maps"][0]["data"]))
        np.testing.assert_allclose(nib.load(embedded).affine, reference.affine, atol=1e-4)
        np.testing.assert_allclose(nib.load(embedded).get_fdata(), nib.load(source).get_fdata(), atol=1e-6)
    assert data["maps"][0]["peakXYZ"] == [PEAK[2], PEAK[1], PEAK[0]]
    assert data["maps"][0]["name"] == "cam.nii.gz" and data["mask"] is None and not data["downsampled"]


def test_cli_and_bad_input(tmp_path: Path) -> None:
    image_path, map_path = make_files(tmp_path)
    parser = argparse.ArgumentParser(prog="medcam3d")
    viewer_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "v.html"
    args = parser.parse_args(
        ["view", str(image_path), str(map_path), "-o", str(out), "--title", "T", "--window=-100,300"]
    )
    assert args.func(args) == 0 and out.stat().st_size > 1_000_000
    first = out.read_bytes()
    args = parser.parse_args(["view", str(image_path), str(map_path), "-o", str(out)])
    with pytest.raises(OutputPathError, match="--overwrite"):
        args.func(args)
    assert out.read_bytes() == first
    args = parser.parse_args(
        ["view", str(image_path), str(map_path), "-o", str(out), "--overwrite", "--window", "bone"]
    )
    assert args.func(args) == 0 and out.read_bytes() != first
    # a bare map array must match the image's shape; nothing is written otherwise
    with pytest.raises(GeometryError, match="shape"):
        write_viewer(image_path, np.zeros((3, 4, 5), np.float32), tmp_path / "bad.html")
    with pytest.raises(OutputPathError, match="html"):
        write_viewer(image_path, map_path, tmp_path / "viewer.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIRD_NAME, "cam.nii.gz", "v.html"])


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium is not installed (/usr/bin/chromium; Debian: apt-get install -y chromium)",
)
def test_viewer_renders_overlay_in_headless_chromium(tmp_path: Path) -> None:
    mpl_image = pytest.importorskip("matplotlib.image")
    image_path, map_path = make_files(tmp_path)
    page = write_viewer(image_path, map_path, tmp_path / "viewer.html", title="chromium test")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    stderr = result.stderr.decode("utf-8", errors="replace")  # Chromium's log is not always valid UTF-8
    assert result.returncode == 0, stderr[-2000:]
    dom = result.stdout.decode("utf-8", errors="replace")
    errors = re.search(r'<pre id="errors">(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else dom[-2000:]
    assert re.search(r'<body[^>]*data-state="ready"', dom), re.search(r"<body[^>]*>", dom)
    assert "data-errors" not in re.search(r"<body[^>]*>", dom).group(0)  # type: ignore[union-attr]
    # the crosshair starts on the map's peak; the status line shows the voxel and both values
    status = re.search(r'<div id="status"[^>]*data-map="([^"]+)"[^>]*>(.*?)</div>', dom, re.S)
    assert status is not None, dom[-3000:]
    assert float(status.group(1)) == pytest.approx(1.0, abs=1e-3)
    assert f"[{PEAK[0]}, {PEAK[1]}, {PEAK[2]}]" in status.group(2)
    assert html.escape(WEIRD_NAME, quote=False) in dom  # shown as text, not markup

    rgb = mpl_image.imread(shot)[..., :3]
    assert rgb.shape[:2] == (700, 1000)
    width = rgb.shape[1]
    colourful = rgb.max(axis=2) - rgb.min(axis=2) > 0.3
    # NiiVue's colorbar: the rows where colour spans (nearly) the whole width, below the planes
    bar_rows = np.flatnonzero(colourful.mean(axis=1) > 0.85)
    assert bar_rows.size >= 5, "no colorbar in the screenshot"
    bar = rgb[bar_rows]
    assert ((bar[..., 0] > 0.45) & (bar[..., 1] < 0.2) & (bar[..., 2] < 0.2)).sum() > 20  # jet's red end
    top = int(re.search(r'data-canvas="\d+,(\d+),', dom).group(1))  # type: ignore[union-attr]
    slices = rgb[top : bar_rows.min()]  # the planes: below the controls, above the colorbar
    r, g, b = slices[..., 0], slices[..., 1], slices[..., 2]
    red = (r > 0.55) & (g < 0.35) & (b < 0.35)  # the map's peak in "jet"
    blue = (b > 0.55) & (r < 0.3) & (g < 0.6)  # its flanks
    assert red.sum() > 50 and blue.sum() > 50, (int(red.sum()), int(blue.sum()))
    # overlay colour in each of the three planes (side by side in the multiplanar layout)
    per_third = [int((red | blue)[:, i * width // 3 : (i + 1) * width // 3].sum()) for i in range(3)]
    assert min(per_third) > 20, per_third


def test_cli_dicom_folder_with_several_series(tmp_path: Path) -> None:
    from medcam3d.errors import MultipleSeriesError

    folder = tmp_path / "dicom"
    folder.mkdir()
    for uid, n in (("1.2.826.0.1.3680043.2.1125.7", 3), ("1.2.826.0.1.3680043.2.1125.8", 4)):
        for k in range(n):
            sl = sitk.GetImageFromArray(np.full((6, 5), 10 * k, dtype=np.int16))
            for tag, value in {"0008|0060": "MR", "0020|000e": uid, "0020|000d": "1.2.3", "0020|0013": str(k + 1),
                               "0020|0032": f"0\\0\\{k}", "0020|0037": "1\\0\\0\\0\\1\\0"}.items():  # fmt: skip
                sl.SetMetaData(tag, value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(folder / f"{uid[-1]}_{k}.dcm"))
            writer.Execute(sl)
    cam = tmp_path / "cam.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 6, 5), np.float32)), str(cam))
    parser = argparse.ArgumentParser(prog="medcam3d")
    viewer_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "v.html"
    args = parser.parse_args(["view", str(folder), str(cam), "-o", str(out)])
    with pytest.raises(MultipleSeriesError, match="--series"):
        args.func(args)
    assert not out.exists()
    args = parser.parse_args(
        ["view", str(folder), str(cam), "-o", str(out), "--series", "1.2.826.0.1.3680043.2.1125.8"]
    )
    assert args.func(args) == 0
    assert embedded_data(out.read_text(encoding="utf-8"))["grid"]["shapeXYZ"] == [5, 6, 4]


# ------------------------------------------------------------------ helpers for the newer checks
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium is not installed (/usr/bin/chromium; Debian: apt-get install -y chromium)",
)


def render(page: Path, query: str = "") -> tuple[np.ndarray, str]:
    """Screenshot (RGB floats, 700 x 1000) and DOM of ``page`` in headless Chromium; fails on page errors."""
    mpl_image = pytest.importorskip("matplotlib.image")
    shot, profile = page.parent / f"shot{abs(hash(query))}.png", page.parent / "profile"
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom",
         page.resolve().as_uri() + query],
        capture_output=True, timeout=120,
    )  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr.decode("utf-8", errors="replace")[-2000:]
    dom = result.stdout.decode("utf-8", errors="replace")
    errors = re.search(r'<pre id="errors">(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else dom[-2000:]
    assert re.search(r'<body[^>]*data-state="ready"', dom), re.search(r"<body[^>]*>", dom)
    rgb = mpl_image.imread(shot)[..., :3]
    shot.unlink()
    return rgb, dom


def planes_region(rgb: np.ndarray, dom: str) -> np.ndarray:
    """The screenshot rows of the canvas above NiiVue's colorbar."""
    top = int(re.search(r'data-canvas="\d+,(\d+),', dom).group(1))  # type: ignore[union-attr]
    colourful = rgb.max(axis=2) - rgb.min(axis=2) > 0.3
    bar_rows = np.flatnonzero(colourful.mean(axis=1) > 0.85)
    return rgb[top : bar_rows.min() if bar_rows.size else rgb.shape[0]]


def side_of_blob(rgb: np.ndarray) -> float:
    """Where the overlay sits across the shown slice: 0 = its left edge, 1 = its right edge."""
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    slice_cols = np.flatnonzero(((spread < 0.08) & (rgb.mean(axis=2) > 0.2)).mean(axis=0) > 0.2)
    blob_cols = np.nonzero(spread > 0.3)[1]
    assert slice_cols.size > 10 and blob_cols.size > 20, (slice_cols.size, blob_cols.size)
    return float((blob_cols.mean() - slice_cols.min()) / (slice_cols.max() - slice_cols.min()))


OFF = (12, 6, 32)  # (z, y, x): anterior (small y) and on the patient's left (large x; LPS identity)


def off_centre() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """A plain scan (brighter upwards), a blob at OFF, a second blob elsewhere, a mask around the first."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    scan = (200 + 5 * z).astype(np.float32)
    blob = np.exp(-(((z - OFF[0]) / 3) ** 2 + ((y - OFF[1]) / 3) ** 2 + ((x - OFF[2]) / 3) ** 2))
    other = np.exp(-(((z - 12) / 3) ** 2 + ((y - 24) / 3) ** 2 + ((x - 8) / 3) ** 2))
    mask = (blob > 0.3).astype(np.uint8)
    return scan, blob.astype(np.float32), other.astype(np.float32), mask, Geometry(shape=SHAPE)


# ------------------------------------------------------------------ orientation: viewer == figures
@pytest.mark.slow
@needs_chromium
def test_viewer_and_figures_show_the_same_sides(tmp_path: Path) -> None:
    from medcam3d.viz import build_three_plane_figure

    scan, blob, _, _, geometry = off_centre()
    page = write_viewer((scan, geometry), (blob, geometry), tmp_path / "v.html", window=(0, 400))
    fig = build_three_plane_figure(
        (scan, geometry), blob, window=(0, 400), cmap="autumn", alpha=1.0, crosshair=False
    )
    panels = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    for axis, view, expected in ((0, "axial", "right"), (2, "sagittal", "left")):
        # figure: the blob's column in the panel as shown (axial: patient left on the right; sagittal: anterior left)
        shown = panels[axis]
        cols = np.nonzero(np.abs(shown[..., 2] - shown[..., 0]) > 0.3)[1]
        figure_side = (cols.mean() + 0.5) / shown.shape[1]
        rgb, dom = render(page, f"?view={view}")
        viewer_side = side_of_blob(planes_region(rgb, dom))
        assert (figure_side > 0.5) == (viewer_side > 0.5) == (expected == "right"), (
            view,
            figure_side,
            viewer_side,
        )
        assert abs(figure_side - viewer_side) < 0.1, (view, figure_side, viewer_side)


# ------------------------------------------------------------------ several maps, ground truth
@pytest.mark.slow
@needs_chromium
def test_one_page_for_several_methods_with_the_ground_truth(tmp_path: Path) -> None:
    scan, blob, other, mask, geometry = off_centre()
    single = write_viewer((scan, geometry), (blob, geometry), tmp_path / "single.html", window=(0, 400))
    page = write_viewer(
        (scan, geometry),
        {"gradcam": (blob, geometry), "hirescam": other},
        tmp_path / "multi.html",
        window=(0, 400),
        mask=mask,
        mask_labels={1: "lesion"},
    )
    text = page.read_text(encoding="utf-8")
    data = embedded_data(text)
    assert [m["name"] for m in data["maps"]] == ["gradcam", "hirescam"]
    assert text.count(data["image"]) == 1  # the scan once
    assert page.stat().st_size < 1.2 * single.stat().st_size
    for entry, expected in zip(data["maps"], (blob, other)):
        embedded = tmp_path / "m.nii"
        embedded.write_bytes(decode(entry["data"]))
        np.testing.assert_allclose(
            np.transpose(nib.load(embedded).get_fdata(), (2, 1, 0)), expected, atol=1e-6
        )
    assert data["maps"][1]["peakXYZ"] == [8, 24, 12]
    assert data["mask"]["labels"] == [{"value": 1, "name": "lesion", "colour": "#ff00ff"}]
    embedded = tmp_path / "mask.nii"
    embedded.write_bytes(decode(data["mask"]["data"]))
    np.testing.assert_array_equal(np.transpose(np.asarray(nib.load(embedded).dataobj), (2, 1, 0)), mask)

    rgb, dom = render(page, "?view=axial")
    assert 'data-map="gradcam"' in dom
    status = re.search(r'<div id="status"[^>]*>', dom).group(0)  # type: ignore[union-attr]
    assert 'data-truth="lesion"' in status  # the crosshair starts on gradcam's peak, inside the lesion
    planes = planes_region(rgb, dom)
    magenta = (planes[..., 0] > 0.6) & (planes[..., 2] > 0.6) & (planes[..., 1] < 0.35)
    assert magenta.sum() > 30, int(magenta.sum())  # the outline is drawn

    rgb, dom = render(page, "?map=hirescam&view=axial")
    assert 'data-map="hirescam"' in dom
    assert "[12, 24, 8]" in re.search(r'<div id="status"[^>]*>(.*?)</div>', dom, re.S).group(1)  # type: ignore[union-attr]
    planes = planes_region(rgb, dom)
    jet_red = (planes[..., 0] > 0.55) & (planes[..., 1] < 0.35) & (planes[..., 2] < 0.35)
    slice_side = side_of_blob(planes)
    assert jet_red.sum() > 20 and slice_side < 0.4, (
        int(jet_red.sum()),
        slice_side,
    )  # x = 8: patient right, left


# ------------------------------------------------------------------ size budget
def test_downsampled_volumes_stay_in_place_in_world_space(caplog: pytest.LogCaptureFixture) -> None:
    from medcam3d.viz.viewer import downsample

    geometry = Geometry(
        shape=(30, 32, 40),
        spacing=(0.7, 0.7, 2.5),
        origin=(-12.0, 30.0, 7.0),
        direction=[[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],  # a rotated grid
    )
    index = np.stack(
        np.meshgrid(*[np.arange(s, dtype=np.float64) for s in geometry.shape], indexing="ij"), -1
    )
    world = (
        geometry.affine_lps[:3, :3] @ index[..., ::-1].reshape(-1, 3).T + np.asarray(geometry.origin)[:, None]
    )

    def field(points: np.ndarray) -> np.ndarray:  # linear in world space: block means equal centre values
        return 3.0 * points[0] - 2.0 * points[1] + 0.5 * points[2]

    volume = field(world).reshape(geometry.shape).astype(np.float32)
    out, small, factors = downsample(volume, geometry, max_voxels=4000)
    assert out.size <= 4000 and out.shape == small.shape
    assert factors[1] > 1 and factors[2] > 1  # the fine in-plane axes first
    full = [n // f for n, f in zip(volume.shape, factors)]  # blocks that lie wholly inside
    inner = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in full], indexing="ij"), -1)
    centres = small.affine_lps[:3, :3] @ inner[..., ::-1].reshape(-1, 3).T + np.asarray(small.origin)[:, None]
    np.testing.assert_allclose(
        out[: full[0], : full[1], : full[2]].ravel(), field(centres), rtol=1e-4, atol=1e-3
    )
    # labels take one voxel per block, at the world position of that voxel
    labels = (np.arange(volume.size) % 7).reshape(volume.shape).astype(np.uint8)
    picked, grid, steps = downsample(labels, geometry, max_voxels=4000, labels=True)
    assert steps == factors
    for k in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in picked.shape)]:
        source = geometry.world_to_index(grid.index_to_world(k))
        np.testing.assert_allclose(source, np.round(source), atol=1e-6)
        assert picked[k] == labels[tuple(int(v) for v in np.round(source))]
    # within budget: untouched
    same, same_grid, none = downsample(volume, geometry, max_voxels=None)
    assert same is volume and same_grid is geometry and none == (1, 1, 1)


@pytest.mark.slow
@needs_chromium
def test_over_budget_page_is_downsampled_and_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scan, blob, _, mask, geometry = off_centre()
    full = write_viewer(
        (scan, geometry), (blob, geometry), tmp_path / "full.html", window=(0, 400), max_voxels=None
    )
    with caplog.at_level("WARNING", logger="medcam3d.viz"):
        page = write_viewer(
            (scan, geometry),
            (blob, geometry),
            tmp_path / "small.html",
            window=(0, 400),
            mask=mask,
            max_voxels=3000,
        )
    assert "max_voxels=None" in caplog.text and "--max-voxels 0" in caplog.text
    data = embedded_data(page.read_text(encoding="utf-8"))
    assert data["downsampled"] and data["grid"]["shapeXYZ"] == [40, 32, 24]  # indices stay the scan's
    for text in (data["image"], data["maps"][0]["data"], data["mask"]["data"]):
        embedded = tmp_path / "e.nii"
        embedded.write_bytes(decode(text))
        loaded = nib.load(embedded)
        assert np.prod(loaded.shape) <= 3000
        # the embedded grid covers the same world box as the scan (within one coarse voxel)
        corners = [loaded.affine @ [*c, 1] for c in ([0, 0, 0], [s - 1 for s in loaded.shape])]
        ref = [geometry.affine @ [*c, 1] for c in ([0, 0, 0], [s - 1 for s in geometry.size_xyz])]
        step = np.abs(np.diag(loaded.affine)[:3])
        assert np.all(np.abs(np.asarray(corners)[:, :3] - np.asarray(ref)[:, :3]) <= step + 1e-6)
    assert page.stat().st_size < full.stat().st_size
    rgb, dom = render(page)
    assert "shown at reduced resolution" in dom
    planes = planes_region(rgb, dom)
    assert ((planes.max(axis=2) - planes.min(axis=2)) > 0.3).sum() > 50  # the overlay shows


# ------------------------------------------------------------------ refusals
def test_map_without_world_overlap_is_refused(tmp_path: Path) -> None:
    scan, blob, _, mask, geometry = off_centre()
    far = Geometry(shape=SHAPE, origin=(0.0, 0.0, 900.0))
    with pytest.raises(GeometryError, match="does not overlap the scan"):
        write_viewer((scan, geometry), (blob, far), tmp_path / "v.html")
    with pytest.raises(GeometryError, match="mask does not overlap"):
        write_viewer((scan, geometry), blob, tmp_path / "v.html", mask=(mask, far))
    with pytest.raises(GeometryError, match="'second' does not overlap"):
        write_viewer((scan, geometry), {"first": blob, "second": (blob, far)}, tmp_path / "v.html")
    assert list(tmp_path.iterdir()) == []


def test_threshold_must_be_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medcam3d.cli import main
    from medcam3d.errors import ConfigurationError

    image_path, map_path = make_files(tmp_path)
    with pytest.raises(ConfigurationError, match="finite"):
        write_viewer(image_path, map_path, tmp_path / "v.html", threshold=float("nan"))
    assert (
        main(["view", str(image_path), str(map_path), "-o", str(tmp_path / "v.html"), "--threshold", "nan"])
        == 1
    )
    assert "--threshold must be a finite" in capsys.readouterr().err
    assert not (tmp_path / "v.html").exists()


def test_cli_several_maps_and_mask(tmp_path: Path) -> None:
    image_path, map_path = make_files(tmp_path)
    second = tmp_path / "cam.mha"
    sitk.WriteImage(sitk.ReadImage(str(map_path)), str(second))
    mask_path = tmp_path / "truth.nii.gz"
    cam = sitk.GetArrayFromImage(sitk.ReadImage(str(map_path)))
    truth = sitk.GetImageFromArray((cam > 0.5).astype(np.uint8))
    truth.CopyInformation(sitk.ReadImage(str(map_path)))
    sitk.WriteImage(truth, str(mask_path))
    parser = argparse.ArgumentParser(prog="medcam3d")
    viewer_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "v.html"
    args = parser.parse_args(
        ["view", str(image_path), str(map_path), str(second), "--mask", str(mask_path), "-o", str(out),
         "--max-voxels", "0", "--mask-style", "fill"]
    )  # fmt: skip
    assert args.func(args) == 0
    data = embedded_data(out.read_text(encoding="utf-8"))
    assert [m["name"] for m in data["maps"]] == ["cam", "cam (2)"]
    assert data["mask"]["style"] == "fill" and data["mask"]["labels"][0]["name"] == "mask"


FULL_DISK = r"""
import resource, signal, sys
from pathlib import Path
import numpy as np
from medcam3d.errors import OutputPathError
from medcam3d.viz import three_plane_figure
from medcam3d.viz.viewer import write_viewer
folder = Path(sys.argv[1])
volume = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
for name, write in (("viewer", lambda: write_viewer(volume, volume, folder / "v.html")),
                    ("figure", lambda: three_plane_figure(volume, volume, folder / "f.png"))):
    try:
        write()
    except OutputPathError as exc:
        print(name, "OutputPathError", exc)
    except BaseException as exc:
        print(name, "other", type(exc).__name__, exc)
"""


def test_full_disk_is_an_output_path_error(tmp_path: Path) -> None:
    import sys

    folder = tmp_path / "out"
    folder.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(folder)], capture_output=True, text=True, timeout=300
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout + result.stderr[-2000:]
    for line, name in zip(lines, ("viewer", "figure")):
        assert line.startswith(f"{name} OutputPathError"), line
        assert "Could not write" in line and "EFBIG" in line
    assert list(folder.iterdir()) == []  # no partial file, no temporary left behind


def test_the_command_line_examples_of_the_docs_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from medcam3d.cli import main

    doc = (Path(__file__).resolve().parents[2] / "docs" / "viewer.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", doc, re.S).group(1)  # type: ignore[union-attr]
    commands = [
        line.split("#")[0]
        for line in re.sub(r"\\\n\s*", " ", block).splitlines()
        if line.startswith("medcam3d view") and "dicom_folder" not in line  # DICOM: test_cli_dicom_folder...
    ]
    assert len(commands) >= 4
    monkeypatch.chdir(tmp_path)
    image_path, map_path = make_files(tmp_path)
    for name in ("scan.nii.gz", "ct.nii.gz"):
        shutil.copy(image_path, name)
    for name in ("cam.nii.gz", "gradcam.nii.gz", "hirescam.nii.gz", "layercam.nii.gz"):
        if name != "cam.nii.gz":
            shutil.copy(map_path, name)
    cam = sitk.ReadImage(str(map_path))
    truth = sitk.GetImageFromArray((sitk.GetArrayFromImage(cam) > 0.5).astype(np.uint8))
    truth.CopyInformation(cam)
    sitk.WriteImage(truth, "lesion_mask.nii.gz")
    for command in commands:
        words = shlex.split(command)
        assert main(words[1:]) == 0, command
        out = Path(words[words.index("-o") + 1])
        data = embedded_data(out.read_text(encoding="utf-8"))
        maps = [w for w in words[3 : words.index("-o")] if w.endswith(".nii.gz")]
        assert [m["name"] for m in data["maps"]] == (
            [Path(m).name[:-7] for m in maps] if len(maps) > 1 else ["cam.nii.gz"]
        )
        assert (data["mask"] is not None) == ("--mask" in words)
