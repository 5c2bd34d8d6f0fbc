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
