"""The demo itself: plant a lesion in the MNI152 template, classify, explain, write, score.

:func:`run_demo` does the work and returns a :class:`DemoResult`; the ``medcam3d demo`` command
(:mod:`medcam3d.demo.cli`) prints it. The library part logs through :mod:`logging` and prints nothing.

Pointing game (Zhang et al., 2016, "Top-down neural attention by excitation backprop"), as scored
here: a map *hits* when its peak voxel (``argmax`` of the map, in the template grid) lies inside the
lesion (voxels where the soft lesion weight is >= 0.5) or within ``tolerance_mm`` millimetres of its
nearest lesion voxel. The default tolerance, 8 mm, is one cell of the target layer's grid (the
network's ``features`` layer sees the brain in 8 mm cells), i.e. the resolution the CAM has.
"""

from __future__ import annotations

import json
import logging
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
    "DEFAULT_METHODS",
    "DEFAULT_SEED",
    "DEFAULT_TOLERANCE_MM",
    "DemoResult",
    "MethodResult",
    "run_demo",
    "pointing_game",
    "demo_methods",
]

logger = logging.getLogger(__name__)

#: Methods the demo runs when none are named.
DEFAULT_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "layercam")
#: Pointing-game tolerance in mm (one 8 mm cell of the target layer).
DEFAULT_TOLERANCE_MM = 8.0
#: Seed of the demo's lesion when none is given.
DEFAULT_SEED = 1


@dataclass
class MethodResult:
    """One method's map, scored.

    Attributes:
        method: registry name (``"gradcam"``...).
        peak_voxel: argmax of the map, ``(z, y, x)`` voxel index in the template grid.
        peak_mni: the same point in MNI mm, ``(x, y, z)`` RAS+.
        distance_mm: distance from the peak to the nearest lesion voxel (0 inside the lesion).
        hit: ``distance_mm <= tolerance_mm``.
        map_path: the NIfTI map (template geometry), if written.
        figure_path: the three-plane PNG, if written.
        viewer_path: the HTML viewer, if written.
        seconds: time to compute the map.
    """

    method: str
    peak_voxel: tuple[int, int, int]
    peak_mni: tuple[float, float, float]
    distance_mm: float
    hit: bool
    map_path: Path | None = None
    figure_path: Path | None = None
    viewer_path: Path | None = None
    seconds: float = 0.0


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
        target_layer: the layer the maps explain.
        methods: one :class:`MethodResult` per method, in the order asked.
        image_path: the volume the network saw (template + lesion), NIfTI, template geometry.
        lesion_mask_path: the ground-truth lesion mask, NIfTI, template geometry.
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
    target_layer: str = TARGET_LAYER
    methods: list[MethodResult] = field(default_factory=list)
    image_path: Path | None = None
    lesion_mask_path: Path | None = None
    summary_path: Path | None = None
    seconds: float = 0.0

    @property
    def hits(self) -> int:
        """Number of methods whose peak hit the lesion."""
        return sum(m.hit for m in self.methods)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (paths as strings)."""

        def clean(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        out = clean(asdict(self))
        out["hits"] = self.hits
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


def _prepare_output(output_dir: Path, overwrite: bool) -> Path:
    from medcam3d._atomic import check_writable_dir

    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"{output_dir} exists and is not a folder. Choose another --output.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputPathError(
            f"Output folder {output_dir} exists and is not empty. Pass overwrite=True (--overwrite) to "
            "write into it anyway, or choose another folder."
        )
    return check_writable_dir(output_dir)


def _optional(module: str, what: str) -> Any:
    """Import an optional medcam3d module; None (with a warning) when it is not part of this build."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("medcam3d"):
            logger.warning("Skipping the %s: %s is not available in this build of medcam3d.", what, module)
            return None
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from medcam3d._atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def run_demo(
    output_dir: str | Path = "medcam3d_demo",
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = DEFAULT_SEED,
    *,
    overwrite: bool = False,
    figures: bool = True,
    viewer: bool = True,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    target_layer: str = TARGET_LAYER,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DemoResult:
    """Plant a lesion in the MNI152 T1 template, classify the volume, compute CAMs, write and score them.

    Args:
        output_dir: folder for the outputs (created; refused when it exists and is not empty, unless
            ``overwrite``).
        methods: registry names (see :func:`demo_methods`), e.g. ``("gradcam", "hirescam")``.
        seed: places the lesion (centre, radii, bright or dark); same seed, same lesion.
        overwrite: write into a non-empty folder, replacing files of the same names.
        figures: write a three-plane PNG per method (needs ``medcam3d[viz]``).
        viewer: write one self-contained HTML viewer per method.
        tolerance_mm: pointing-game tolerance (see the module docstring).
        target_layer: dotted name of the layer to explain: ``"features"`` (default, 8 mm cells, the
            last layer with a spatial grid), ``"block2"`` (8 mm) or ``"block1"`` (4 mm).
        weights: a ``state_dict`` other than the shipped one.
        device: where to run the network.

    Writes, all NIfTI files on the template's grid (91 x 109 x 91 voxels, 2 mm, MNI152 space):
    ``input.nii.gz`` (template + lesion, the network's input, normalised intensities),
    ``lesion_mask.nii.gz``, ``cam_<method>.nii.gz``, ``cam_<method>.png``, ``viewer_<method>.html``
    and ``summary.json``.

    Returns:
        :class:`DemoResult`. The maps are ``(D, H, W)`` = ``(z, y, x)``, in [0, 1].
    """
    from medcam3d.core.targets import ClassifierOutputTarget
    from medcam3d.io import write_image, write_map

    start = time.perf_counter()
    registry = demo_methods()
    names = [m.strip().lower() for m in methods if m.strip()]
    if not names:
        raise ConfigurationError("No methods given. Name at least one, e.g. methods=('gradcam',).")
    unknown = [m for m in names if m not in registry]
    if unknown:
        raise ConfigurationError(
            f"Unknown method(s) {', '.join(unknown)}. Available: {', '.join(sorted(registry))}."
        )
    if tolerance_mm < 0:
        raise ConfigurationError(f"tolerance_mm must be >= 0, got {tolerance_mm}.")
    out_dir = _prepare_output(Path(output_dir), overwrite)

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

    model = load_demo_model(weights, device=device)
    x = torch.from_numpy(np.stack([volume, template.image])[:, None]).to(device)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[:, LESION_CLASS].cpu().numpy()
    probability, probability_clean = float(probabilities[0]), float(probabilities[1])
    logger.info("P(lesion) = %.3f with the lesion, %.3f without.", probability, probability_clean)

    image_path = write_image(volume, template.geometry, out_dir / "input.nii.gz", overwrite=True)
    mask_path = write_image(
        mask.astype(np.uint8), template.geometry, out_dir / "lesion_mask.nii.gz", overwrite=True
    )

    viz = _optional("medcam3d.viz", "three-plane figures") if figures else None
    viewer_module = _optional("medcam3d.viz.viewer", "HTML viewer") if viewer else None

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
        target_layer=target_layer,
        image_path=image_path,
        lesion_mask_path=mask_path,
    )
    input_tensor = x[:1]
    window = (0.0, float(np.percentile(volume[template.mask], 99.5)))
    for name in names:
        tic = time.perf_counter()
        with registry[name](model=model, target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=input_tensor, targets=[ClassifierOutputTarget(LESION_CLASS)])
        cam_map = np.asarray(maps)[0].astype(np.float32)
        seconds = time.perf_counter() - tic
        peak, distance, hit = pointing_game(cam_map, mask, template.spacing, tolerance_mm)
        method_result = MethodResult(
            method=name,
            peak_voxel=peak,
            peak_mni=voxel_to_mni(template, peak),
            distance_mm=distance,
            hit=hit,
            seconds=seconds,
        )
        stem = "cam_" + name.replace("+", "p")
        method_result.map_path = write_map(
            cam_map, template.geometry, out_dir / f"{stem}.nii.gz", overwrite=True
        )
        if viz is not None:
            method_result.figure_path = viz.three_plane_figure(
                volume,
                cam_map,
                out_dir / f"{stem}.png",
                voxel=peak,
                window=window,
                title=(
                    f"{name}: P(lesion) {probability:.2f}; planes through the map's peak, "
                    f"{distance:.0f} mm from the lesion ({'hit' if hit else 'miss'})"
                ),
                threshold=0.2,
                geometry=template.geometry,
                overwrite=True,
            )
        if viewer_module is not None:
            method_result.viewer_path = viewer_module.write_viewer(
                (volume, template.geometry),
                (cam_map, template.geometry),
                out_dir / f"viewer_{stem[4:]}.html",
                title=f"medcam3d demo: {name}",
                overwrite=True,
                window=window,
                image_name="input.nii.gz",
                map_name=f"{stem}.nii.gz",
            )
        logger.info(
            "%s: peak at voxel %s, %.1f mm from the lesion (%s).",
            name,
            peak,
            distance,
            "hit" if hit else "miss",
        )
        result.methods.append(method_result)

    result.seconds = time.perf_counter() - start
    result.summary_path = out_dir / "summary.json"
    payload = result.to_dict()
    payload["template"] = str(template.path.name)
    payload["target_layer"] = target_layer
    payload["axis_order"] = {
        "voxel": "array index (z, y, x), as medcam3d.io.read_image / SimpleITK",
        "mni": "MNI millimetres (x, y, z), RAS+, as nibabel / FSL / SPM",
        "radii_mm": "(z, y, x)",
    }
    _write_json(result.summary_path, payload)
    return result
