"""The demo itself: plant a lesion in the MNI152 template, classify, compare, explain, write, score.

:func:`run_demo` does the work and returns a :class:`DemoResult`; the ``medcam3d demo`` command
(:mod:`medcam3d.demo.cli`) prints it. The library part logs through :mod:`logging` and prints nothing.

Which method, which layer? Before writing any map, the demo runs
:func:`medcam3d.metrics.compare` on its own model and lesion: every method (the ones asked for and
the reference methods, Grad-CAM, Grad-CAM++ and the RandomCAM baseline by default) on every candidate
layer (``block1``, ``block2``, ``features``), scored by localisation against the true lesion and by
deletion/insertion curves. Each written map then uses the layer where its method localises best
(``target_layer="auto"``), unless a layer is named.

Pointing game (Zhang et al., 2016, "Top-down neural attention by excitation backprop"), as scored
here: a map *hits* when its peak voxel (``argmax`` of the map, in the template grid) lies inside the
lesion (voxels where the soft lesion weight is >= 0.5) or within ``tolerance_mm`` millimetres of its
nearest lesion voxel. ``inside`` says whether it lies in the lesion itself (distance 0).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcam3d.demo.data import (
    Lesion,
    Template,
    candidate_centres,
    lesion_weight,
    load_template,
    plant_lesion,
    random_lesion,
    voxel_to_mni,
)
from medcam3d.demo.model import LESION_CLASS, TARGET_LAYER, load_demo_model
from medcam3d.errors import ConfigurationError, OutputPathError

__all__ = [
    "AUTO_LAYER",
    "DEFAULT_CANDIDATE_LAYERS",
    "DEFAULT_METHODS",
    "DEFAULT_REFERENCE_METHODS",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "DEFAULT_TOLERANCE_MM",
    "DemoResult",
    "MethodResult",
    "run_demo",
    "pointing_game",
    "demo_methods",
]

logger = logging.getLogger(__name__)

#: Methods whose maps the demo writes when none are named.
DEFAULT_METHODS: tuple[str, ...] = ("hirescam", "layercam")
#: Methods compared alongside (in the ranking only, no files): the classics and a random baseline.
DEFAULT_REFERENCE_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "randomcam")
#: Layers the comparison tries, output side last.
DEFAULT_CANDIDATE_LAYERS: tuple[str, ...] = ("block1", "block2", TARGET_LAYER)
#: ``target_layer`` value that picks each method's best-localising candidate layer.
AUTO_LAYER = "auto"
#: Deletion/insertion steps of the comparison (0 skips the curves).
DEFAULT_STEPS = 5
#: Pointing-game tolerance in mm (one 8 mm cell of the ``features`` layer).
DEFAULT_TOLERANCE_MM = 8.0
#: Seed of the demo's lesion when none is given.
DEFAULT_SEED = 1


@dataclass
class MethodResult:
    """One method's map, scored.

    Attributes:
        method: registry name (``"hirescam"``...).
        layer: the target layer the map explains.
        peak_voxel: argmax of the map, ``(z, y, x)`` voxel index in the template grid.
        peak_mni: the same point in MNI mm, ``(x, y, z)`` RAS+.
        distance_mm: distance from the peak to the nearest lesion voxel (0 inside the lesion).
        hit: ``distance_mm <= tolerance_mm``.
        map_path: the NIfTI map (template geometry), if written.
        figure_path: the three-plane PNG, if written.
        viewer_path: the HTML viewer holding every map (one page for all methods), if written.
        seconds: time to compute the map.
    """

    method: str
    peak_voxel: tuple[int, int, int]
    peak_mni: tuple[float, float, float]
    distance_mm: float
    hit: bool
    layer: str = TARGET_LAYER
    map_path: Path | None = None
    figure_path: Path | None = None
    viewer_path: Path | None = None
    seconds: float = 0.0

    @property
    def inside(self) -> bool:
        """Whether the peak lies inside the lesion (distance 0)."""
        return self.distance_mm == 0.0


@dataclass
class DemoResult:
    """Everything the demo did.

    Attributes:
        output_dir: the folder the files went to.
        seed: the seed that placed the lesion.
        lesion: the planted lesion (centre in ``(z, y, x)`` voxels, radii in mm, contrast).
        lesion_voxel: lesion centre rounded to a voxel, ``(z, y, x)``.
        lesion_mni: lesion centre in MNI mm, ``(x, y, z)``.
        lesion_voxels: how many voxels the lesion covers (weight >= 0.5).
        probability: the network's P(lesion) for the volume with the lesion.
        probability_without_lesion: P(lesion) for the untouched template (a sanity check).
        tolerance_mm: pointing-game tolerance.
        target_layer: ``"auto"`` (each method on its best-localising layer) or the layer named.
        methods: one :class:`MethodResult` per method, in the order asked.
        comparison: the method x layer ranking (:class:`medcam3d.metrics.comparison.CompareResult`).
        image_path: the volume the network saw (template + lesion), NIfTI, template geometry.
        lesion_mask_path: the ground-truth lesion mask, NIfTI, template geometry.
        comparison_csv: ``compare.csv``, the ranking.
        comparison_figure: ``compare.png``, the ranking as a figure.
        methods_figure: ``cam_methods.png``, every written map in three planes through the lesion.
        viewer_path: ``viewer.html``, one page with a method selector and the lesion outline.
        summary_path: ``summary.json`` with all of the above.
        seconds: wall time of the whole run.
    """

    output_dir: Path
    seed: int
    lesion: Lesion
    lesion_voxel: tuple[int, int, int]
    lesion_mni: tuple[float, float, float]
    lesion_voxels: int
    probability: float
    probability_without_lesion: float
    tolerance_mm: float
    target_layer: str = AUTO_LAYER
    methods: list[MethodResult] = field(default_factory=list)
    comparison: Any = None
    image_path: Path | None = None
    lesion_mask_path: Path | None = None
    comparison_csv: Path | None = None
    comparison_figure: Path | None = None
    methods_figure: Path | None = None
    viewer_path: Path | None = None
    summary_path: Path | None = None
    seconds: float = 0.0

    @property
    def hits(self) -> int:
        """Number of methods whose peak hit the lesion (within the tolerance)."""
        return sum(m.hit for m in self.methods)

    @property
    def inside(self) -> int:
        """Number of methods whose peak lies inside the lesion."""
        return sum(m.inside for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (paths as strings; the ranking as its rows)."""

        def clean(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, float) and not np.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        comparison = self.comparison
        self.comparison = None
        try:
            out = clean(asdict(self))
        finally:
            self.comparison = comparison
        out["comparison"] = None if comparison is None else clean(comparison.to_rows())
        out["comparison_ranked_by"] = None if comparison is None else comparison.rank_by
        for entry, method in zip(out["methods"], self.methods):
            entry["inside"] = method.inside
        out["hits"] = self.hits
        out["inside"] = self.inside
        return out


def demo_methods() -> dict[str, type]:
    """Method registry: lower-case name -> CAM class (:func:`medcam3d.available_methods`)."""
    from medcam3d import available_methods

    return {str(name).lower(): cls for name, cls in available_methods().items()}


def pointing_game(
    cam: np.ndarray,
    lesion_mask: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> tuple[tuple[int, int, int], float, bool]:
    """Score one map.

    Args:
        cam: the map, ``(D, H, W)``.
        lesion_mask: bool ``(D, H, W)``, the lesion.
        spacing: voxel size in mm, ``(z, y, x)``.
        tolerance_mm: how far from the lesion a peak may be and still hit.

    Returns:
        ``(peak_voxel (z, y, x), distance_mm to the nearest lesion voxel, hit)``. The peak is the first
        maximum in C order (``np.argmax``).
    """
    if cam.shape != lesion_mask.shape:
        raise ConfigurationError(f"map shape {cam.shape} differs from the lesion mask's {lesion_mask.shape}.")
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    peak_voxel = (int(peak[0]), int(peak[1]), int(peak[2]))
    lesion_idx = np.argwhere(lesion_mask)
    if len(lesion_idx) == 0:
        return peak_voxel, float("inf"), False
    offsets = (lesion_idx - np.asarray(peak_voxel)) * np.asarray(spacing, dtype=float)
    distance = float(np.sqrt((offsets**2).sum(axis=1)).min())
    return peak_voxel, distance, distance <= tolerance_mm


def _check_output(output_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be used, without creating anything."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"{output_dir} exists and is not a folder. Choose another --output.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputPathError(
            f"Output folder {output_dir} exists and is not empty. Pass overwrite=True (--overwrite) to "
            "write into it anyway, or choose another folder."
        )
    parent = (
        output_dir if output_dir.exists() else next((p for p in output_dir.parents if p.exists()), Path("."))
    )
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"Cannot write into {parent} (for {output_dir}). Choose a writable --output.")


def _optional(module: str, what: str) -> Any:
    """Import an optional medcam3d module; None (with a warning) when it or its extra is missing."""
    import importlib

    from medcam3d.errors import MissingExtraError

    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("medcam3d"):
            logger.warning("Skipping the %s: %s is not available in this build of medcam3d.", what, module)
            return None
        raise
    if module == "medcam3d.viz":
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the installation
            logger.warning("Skipping the %s: %s", what, MissingExtraError(f"matplotlib is missing ({exc})"))
            return None
    return loaded


def _names(values: Sequence[str], what: str, registry: dict[str, type]) -> list[str]:
    names = list(dict.fromkeys(m.strip().lower() for m in values if m.strip()))
    unknown = [m for m in names if m not in registry]
    if unknown:
        raise ConfigurationError(
            f"Unknown {what} {', '.join(unknown)}. Available: {', '.join(sorted(registry))}."
        )
    return names


def run_demo(
    output_dir: str | Path = "medcam3d_demo",
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = DEFAULT_SEED,
    *,
    overwrite: bool = False,
    figures: bool = True,
    viewer: bool = True,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    target_layer: str = AUTO_LAYER,
    candidate_layers: Sequence[str] = DEFAULT_CANDIDATE_LAYERS,
    reference_methods: Sequence[str] = DEFAULT_REFERENCE_METHODS,
    steps: int = DEFAULT_STEPS,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DemoResult:
    """Plant a lesion in the MNI152 T1 template, classify it, rank methods x layers, write and score maps.

    Args:
        output_dir: folder for the outputs (created; refused when it exists and is not empty, unless
            ``overwrite``).
        methods: registry names (see :func:`demo_methods`) of the maps to write, e.g.
            ``("hirescam", "layercam")``.
        seed: places the lesion (centre, radii, bright or dark); same seed, same lesion.
        overwrite: write into a non-empty folder, replacing files of the same names.
        figures: write the figures (needs ``medcam3d[viz]``): a three-plane PNG per method, every
            method in one figure, and the ranking; the true lesion is drawn as a contour.
        viewer: write ONE self-contained HTML viewer with a method selector and the lesion outline.
        tolerance_mm: pointing-game tolerance (see the module docstring).
        target_layer: ``"auto"`` (default): each method on the candidate layer where it localises
            best (ranked by :func:`medcam3d.metrics.compare`); or a layer name for every method, e.g.
            ``"features"`` (8 mm cells), ``"block2"`` (8 mm) or ``"block1"`` (4 mm), which is then the
            only layer compared.
        candidate_layers: the layers compared with ``target_layer="auto"``.
        reference_methods: methods compared too, whose maps are not written (``()`` for none).
        steps: deletion/insertion steps of the comparison; 0 ranks by localisation only, faster.
        weights: a ``state_dict`` other than the shipped one.
        device: where to run the network.

    Every argument (methods, layers, numbers, the output folder) is checked before the first file
    is written. Writes, all NIfTI files on the template's grid (91 x 109 x 91 voxels, 2 mm, MNI152
    space): ``input.nii.gz`` (template + lesion, the network's input, normalised intensities),
    ``lesion_mask.nii.gz``, ``cam_<method>.nii.gz``, ``cam_<method>.png``, ``cam_methods.png``,
    ``compare.csv``, ``compare.png``, ``viewer.html`` and ``summary.json``.

    Returns:
        :class:`DemoResult`. The maps are ``(D, H, W)`` = ``(z, y, x)``, in [0, 1].
    """
    from medcam3d.core.layers import resolve_layers
    from medcam3d.core.targets import ClassifierOutputTarget
    from medcam3d.io import write_image, write_map
    from medcam3d.metrics.comparison import compare

    start = time.perf_counter()
    # ---- every check before the first file
    registry = demo_methods()
    names = _names(methods, "method(s)", registry)
    if not names:
        raise ConfigurationError("No methods given. Name at least one, e.g. methods=('hirescam',).")
    references = [m for m in _names(reference_methods, "reference method(s)", registry) if m not in names]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigurationError(
            f"steps must be an integer >= 0 (0: no deletion/insertion curves), got {steps!r}."
        )
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ConfigurationError(f"tolerance_mm must be a finite distance >= 0, got {tolerance_mm}.")
    model = load_demo_model(weights, device=device)
    layer_request = str(target_layer).strip()
    layers = list(candidate_layers) if layer_request.lower() == AUTO_LAYER else [layer_request]
    if not layers:
        raise ConfigurationError("candidate_layers is empty: name at least one layer, e.g. ('block1',).")
    layers = [name for name, _ in resolve_layers(model, layers)]  # LayerNotFoundError lists close names
    out_dir = Path(output_dir)
    _check_output(out_dir, overwrite)

    # ---- the data and the network's verdict
    template: Template = load_template()
    rng = np.random.default_rng(seed)
    lesion = random_lesion(rng, candidate_centres(template))
    weight = lesion_weight(template.image.shape, template.spacing, lesion)
    volume = plant_lesion(template.image, weight, lesion.contrast)
    mask = weight >= 0.5
    lesion_voxel = (int(round(lesion.centre[0])), int(round(lesion.centre[1])), int(round(lesion.centre[2])))
    logger.info(
        "Planted a %s lesion (%d voxels) at voxel (z, y, x) %s.",
        "bright" if lesion.contrast > 0 else "dark",
        int(mask.sum()),
        lesion_voxel,
    )
    x = torch.from_numpy(np.stack([volume, template.image])[:, None]).to(device)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[:, LESION_CLASS].cpu().numpy()
    probability, probability_clean = float(probabilities[0]), float(probabilities[1])
    logger.info("P(lesion) = %.3f with the lesion, %.3f without.", probability, probability_clean)

    # ---- which method, which layer?
    input_tensor = x[:1]
    comparison = compare(
        model,
        input_tensor,
        [ClassifierOutputTarget(LESION_CLASS)],
        names + references,
        layers,
        masks=mask,
        spacing=template.spacing,
        tolerance_mm=0.0,
        faithfulness=steps > 0,
        steps=max(steps, 1),
        progress=False,
    )
    logger.info("Method x layer ranking:\n%s", comparison.table())

    # ---- the files
    out_dir = _prepare_output(out_dir, overwrite)
    image_path = write_image(volume, template.geometry, out_dir / "input.nii.gz", overwrite=True)
    mask_path = write_image(
        mask.astype(np.uint8), template.geometry, out_dir / "lesion_mask.nii.gz", overwrite=True
    )
    result = DemoResult(
        output_dir=out_dir,
        seed=seed,
        lesion=lesion,
        lesion_voxel=lesion_voxel,
        lesion_mni=voxel_to_mni(template, lesion.centre),
        lesion_voxels=int(mask.sum()),
        probability=probability,
        probability_without_lesion=probability_clean,
        tolerance_mm=tolerance_mm,
        target_layer=AUTO_LAYER if layer_request.lower() == AUTO_LAYER else layers[0],
        comparison=comparison,
        image_path=image_path,
        lesion_mask_path=mask_path,
    )
    result.comparison_csv = comparison.to_csv(out_dir / "compare.csv")
    viz = _optional("medcam3d.viz", "figures") if figures else None
    viewer_module = _optional("medcam3d.viz.viewer", "HTML viewer") if viewer else None
    window = (0.0, float(np.percentile(volume[template.mask], 99.5)))
    lesion_labels = {1: "true lesion"}
    maps: dict[str, np.ndarray] = {}
    for name in names:
        row = comparison.best_for(name)
        assert row.maps is not None
        cam_map = np.asarray(row.maps[0], dtype=np.float32)
        maps[name] = cam_map
        peak, distance, hit = pointing_game(cam_map, mask, template.spacing, tolerance_mm)
        method_result = MethodResult(
            method=name,
            layer=row.layer,
            peak_voxel=peak,
            peak_mni=voxel_to_mni(template, peak),
            distance_mm=distance,
            hit=hit,
            seconds=row.seconds_cam,
        )
        stem = "cam_" + name.replace("+", "p")
        method_result.map_path = write_map(
            cam_map, template.geometry, out_dir / f"{stem}.nii.gz", overwrite=True
        )
        if viz is not None:
            where = "inside the lesion" if distance == 0 else f"{distance:.0f} mm from the lesion"
            method_result.figure_path = viz.three_plane_figure(
                volume,
                cam_map,
                out_dir / f"{stem}.png",
                voxel=peak,
                window=window,
                title=f"{name} on {row.layer}: P(lesion) {probability:.2f}; planes through the map's peak, {where}",
                threshold=0.2,
                geometry=template.geometry,
                mask=mask.astype(np.uint8),
                mask_labels=lesion_labels,
                overwrite=True,
            )
        logger.info(
            "%s on %s: peak at voxel %s, %.1f mm from the lesion (%s).",
            name,
            row.layer,
            peak,
            distance,
            "inside" if distance == 0 else ("hit" if hit else "miss"),
        )
        result.methods.append(method_result)

    labels = {f"{m.method} @ {m.layer}": maps[m.method] for m in result.methods}
    if viz is not None:
        result.methods_figure = viz.compare_methods_figure(
            volume,
            labels,
            out_dir / "cam_methods.png",
            mask=mask.astype(np.uint8),
            mask_labels=lesion_labels,
            window=window,
            threshold=0.2,
            geometry=template.geometry,
            title=f"seed {seed}: planes through the true lesion (contour)",
            overwrite=True,
        )
        result.comparison_figure = comparison.save_figure(out_dir / "compare.png")
    if viewer_module is not None:
        result.viewer_path = viewer_module.write_viewer(
            (volume, template.geometry),
            {label: (cam_map, template.geometry) for label, cam_map in labels.items()},
            out_dir / "viewer.html",
            title="medcam3d demo",
            overwrite=True,
            window=window,
            image_name="input.nii.gz",
            mask=(mask.astype(np.uint8), template.geometry),
            mask_labels=lesion_labels,
        )
        for m in result.methods:
            m.viewer_path = result.viewer_path

    result.seconds = time.perf_counter() - start
    result.summary_path = out_dir / "summary.json"
    payload = result.to_dict()
    payload["template"] = str(template.path.name)
    payload["axis_order"] = {
        "voxel": "array index (z, y, x), as medcam3d.io.read_image / SimpleITK",
        "mni": "MNI millimetres (x, y, z), RAS+, as nibabel / FSL / SPM",
        "radii_mm": "(z, y, x)",
    }
    from medcam3d._atomic import write_json_atomic

    write_json_atomic(result.summary_path, payload)
    return result


def _prepare_output(output_dir: Path, overwrite: bool) -> Path:
    from medcam3d._atomic import check_writable_dir

    _check_output(output_dir, overwrite)
    return check_writable_dir(output_dir)
