"""Evaluate a folder of maps against a folder of ground-truth masks (``medcam3d evaluate``).

Files are paired by case name the way ``medcam3d nnunet`` names its outputs:

* maps: ``<case>_<method>_class<k><ending>`` (e.g. ``liver_003_gradcam_class1.nii.gz``); the method
  name has no underscore (every registry name), the case name may have some;
* masks: ``<case><ending>`` (nnU-Net's ``labelsTr`` naming), a binary mask or a label map: the
  mask of class ``k`` is the voxels whose label is ``k``.

``<ending>`` is any of :data:`IMAGE_ENDINGS` (NIfTI, MetaImage, NRRD); a map and its mask may use
different ones. Other files in the maps folder (the segmentations ``<case><ending>`` that
``medcam3d nnunet`` writes beside the maps, ``.npy`` copies, PNG folders) are skipped and logged.

Every map is scored with :func:`medcam3d.metrics.localisation.localisation_scores` (pointing game,
energy, IoU/Dice at a threshold, at the top per cent and at Otsu, AUROC, average precision,
centre-of-mass distance) on the mask's grid with the mask's voxel spacing. By default the map must
be on the mask's grid (same shape, spacing, origin and direction, as ``medcam3d nnunet`` writes
them); ``resample=True`` compares maps on other grids in world coordinates (linear interpolation
onto the mask's grid).

Outputs (written atomically, only after every file has been read and scored):

* ``evaluation.csv``: one row per case x method x class (empty cells where a class is absent from a
  case's mask: every score is undefined there);
* ``evaluation_summary.json``: per method and class, the number of cases and, for every score, the
  mean, median, first and third quartile, IQR, minimum and maximum (over the cases where it is
  defined);
* ``evaluation.png``: per-method box plots of the main scores (with ``figure=True``, needs
  ``medcam3d[viz]``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d.errors import ConfigurationError, GeometryError, InputFileError, OutputPathError, require_extra

__all__ = [
    "IMAGE_ENDINGS",
    "SCORE_COLUMNS",
    "CSV_NAME",
    "SUMMARY_NAME",
    "FIGURE_NAME",
    "MapFile",
    "EvaluationResult",
    "pair_files",
    "evaluate_folder",
]

logger = logging.getLogger(__name__)

#: File endings read as images (longest first, so ``.nii.gz`` wins over ``.gz``).
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Score columns of the CSV, in order (see :class:`medcam3d.metrics.localisation.LocalisationScores`).
SCORE_COLUMNS = (
    "pointing_game",
    "peak_distance_mm",
    "peaks",
    "energy",
    "energy_box",
    "iou_threshold",
    "dice_threshold",
    "iou_top_percent",
    "dice_top_percent",
    "iou_otsu",
    "dice_otsu",
    "otsu_threshold",
    "auroc",
    "average_precision",
    "centre_of_mass_distance_mm",
)
#: Output file names inside the output folder.
CSV_NAME = "evaluation.csv"
SUMMARY_NAME = "evaluation_summary.json"
FIGURE_NAME = "evaluation.png"
_FIGURE_SCORES = ("pointing_game", "energy", "dice_otsu", "auroc", "peak_distance_mm")
_MAP_NAME = re.compile(r"^(?P<case>.+)_(?P<method>[^_]+)_class(?P<category>\d+)$")


@dataclass(frozen=True)
class MapFile:
    """One map file, parsed from its name ``<case>_<method>_class<k><ending>``."""

    case: str
    method: str
    category: int
    path: Path


@dataclass
class EvaluationResult:
    """What :func:`evaluate_folder` computed and wrote.

    Attributes:
        rows: one ``dict`` per case x method x class (the CSV's rows; NaN for undefined scores).
        summary: the JSON summary (settings and per method and class statistics).
        csv_path, summary_path, figure_path: the files written (``figure_path`` ``None`` without figure).
        skipped: files of the maps folder that are not maps (not named ``<case>_<method>_class<k><ending>``).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    csv_path: Path
    summary_path: Path
    figure_path: Path | None = None
    skipped: list[Path] = field(default_factory=list)


def _split_ending(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending) :]
    return None


def _visible_files(folder: Path) -> list[Path]:
    from medcam3d._atomic import is_temporary

    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not is_temporary(p)
    )


def _check_folder(folder: str | os.PathLike[str], what: str) -> Path:
    path = Path(folder)
    if not path.exists():
        raise InputFileError(f"The {what} folder {path} does not exist.")
    if not path.is_dir():
        raise InputFileError(f"The {what} {path} is not a folder: give the folder holding the files.")
    return path


def pair_files(
    maps_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str], ignore_extra_masks: bool = False
) -> tuple[list[tuple[MapFile, Path]], list[Path]]:
    """Pair every map of ``maps_dir`` with its case's mask in ``masks_dir``.

    Returns:
        ``([(map, mask path), ...] sorted by case, method, class; skipped files of maps_dir)``.

    Raises:
        InputFileError: a missing folder, no maps at all, a case with two masks (``a.nii.gz`` and
            ``a.mha``), two maps of one case, method and class, maps without a mask or (unless
            ``ignore_extra_masks``) masks without any map; each listing every offending file.
    """
    maps_folder = _check_folder(maps_dir, "maps")
    masks_folder = _check_folder(masks_dir, "masks")
    maps: list[MapFile] = []
    skipped: list[Path] = []
    for path in _visible_files(maps_folder):
        split = _split_ending(path.name)
        match = _MAP_NAME.match(split[0]) if split else None
        if match is None:
            skipped.append(path)
            continue
        maps.append(MapFile(match["case"], match["method"].lower(), int(match["category"]), path))
    if not maps:
        raise InputFileError(
            f"No maps in {maps_folder}: expected files named <case>_<method>_class<k><ending> (as "
            f"'medcam3d nnunet' writes them), <ending> one of {', '.join(IMAGE_ENDINGS)}."
        )
    masks: dict[str, list[Path]] = {}
    for path in _visible_files(masks_folder):
        split = _split_ending(path.name)
        if split is not None:
            masks.setdefault(split[0], []).append(path)
    problems: list[str] = []
    doubles = {case: paths for case, paths in masks.items() if len(paths) > 1}
    if doubles:
        problems.append(
            "cases with more than one mask: "
            + "; ".join(
                f"{case}: {', '.join(p.name for p in paths)}" for case, paths in sorted(doubles.items())
            )
        )
    keys: dict[tuple[str, str, int], list[Path]] = {}
    for m in maps:
        keys.setdefault((m.case, m.method, m.category), []).append(m.path)
    repeated = {k: v for k, v in keys.items() if len(v) > 1}
    if repeated:
        problems.append(
            "several maps of one case, method and class: "
            + "; ".join(", ".join(p.name for p in v) for _, v in sorted(repeated.items()))
        )
    unpaired = [m.path.name for m in maps if m.case not in masks]
    if unpaired:
        problems.append(
            f"maps without a mask <case><ending> in {masks_folder}: {', '.join(sorted(unpaired))}"
        )
    cases = {m.case for m in maps}
    extra = sorted(p.name for case, paths in masks.items() if case not in cases for p in paths)
    if extra and not ignore_extra_masks:
        problems.append(
            f"masks without any map in {maps_folder}: {', '.join(extra)} (pass ignore_extra_masks=True / "
            "--ignore-extra-masks to skip them)"
        )
    if problems:
        raise InputFileError("Cannot pair the maps with the masks: " + ". ".join(problems) + ".")
    if skipped:
        logger.info(
            "Skipped %d file(s) of %s that are not maps: %s",
            len(skipped),
            maps_folder,
            ", ".join(p.name for p in skipped),
        )
    maps.sort(key=lambda m: (m.case, m.method, m.category))
    return [(m, masks[m.case][0]) for m in maps], skipped


def _check_number(value: float, name: str, low: float | None = None, high: float | None = None) -> float:
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and number < low)
        or (high is not None and number > high)
    ):
        bounds = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
        raise ConfigurationError(f"{name} must be a finite number{bounds}, got {value!r}.")
    return number


def _check_outputs(output_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    from medcam3d._atomic import check_output_file

    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"The output {output_dir} exists and is not a folder; choose another -o.")
    for name in names:
        check_output_file(output_dir / name, overwrite)
    parent = (
        output_dir if output_dir.exists() else next((p for p in output_dir.parents if p.exists()), Path("."))
    )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"Cannot write into {parent} (for {output_dir}); choose a writable folder.")


def _check_grids(pairs: list[tuple[MapFile, Path]], resample: bool) -> None:
    from medcam3d.io import read_geometry

    geometries: dict[Path, Any] = {}

    def geometry(path: Path) -> Any:
        if path not in geometries:
            geometries[path] = read_geometry(path)
        return geometries[path]

    mismatched = []
    for item, mask_path in pairs:
        map_grid, mask_grid = geometry(item.path), geometry(mask_path)
        if not map_grid.allclose(mask_grid):
            mismatched.append(
                f"{item.path.name} {map_grid.shape} spacing {tuple(round(s, 4) for s in map_grid.spacing)} "
                f"origin {tuple(round(o, 3) for o in map_grid.origin)} vs {mask_path.name} {mask_grid.shape} "
                f"spacing {tuple(round(s, 4) for s in mask_grid.spacing)} "
                f"origin {tuple(round(o, 3) for o in mask_grid.origin)}"
            )
    if mismatched and not resample:
        raise GeometryError(
            "Maps not on their mask's grid (shape, spacing, origin or direction differ): "
            + "; ".join(mismatched)
            + ". Pass resample=True (--resample) to compare them in world coordinates."
        )
    if mismatched:
        logger.info("Resampling %d map(s) onto their mask's grid.", len(mismatched))


def _statistics(values: list[float]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {
            "n": 0,
            "mean": None,
            "median": None,
            "q1": None,
            "q3": None,
            "iqr": None,
            "min": None,
            "max": None,
        }
    q1, median, q3 = (float(v) for v in np.percentile(finite, [25, 50, 75]))
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["class"]), []).append(row)
    return dict(sorted(groups.items()))


def _summary(rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    groups = []
    for (method, category), members in _groups(rows).items():
        groups.append(
            {
                "method": method,
                "class": category,
                "cases": len(members),
                "cases_without_class": sum(1 for r in members if r["mask_voxels"] == 0),
                "scores": {name: _statistics([float(r[name]) for r in members]) for name in SCORE_COLUMNS},
            }
        )
    return {"settings": settings, "cases": len({r["case"] for r in rows}), "groups": groups}


def _figure(rows: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    groups = _groups(rows)
    labels = [f"{method}\nclass {category}" for method, category in groups]
    figure = Figure(
        figsize=(max(3.2 * len(_FIGURE_SCORES), 1.2 * len(labels) * len(_FIGURE_SCORES) / 2), 4.0)
    )
    axes = figure.subplots(1, len(_FIGURE_SCORES), squeeze=False)[0]
    for ax, name in zip(axes, _FIGURE_SCORES):
        data = [
            [float(r[name]) for r in members if math.isfinite(float(r[name]))] for members in groups.values()
        ]
        ax.boxplot([d if d else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize="small")
        ax.set_title(name.replace("_", " "))
        if name != "peak_distance_mm":
            ax.set_ylim(-0.05, 1.05)
    figure.suptitle(f"{len({r['case'] for r in rows})} case(s): one box per method and class")
    figure.set_layout_engine("constrained")
    return figure


def evaluate_folder(
    maps_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    tolerance_mm: float = 0.0,
    threshold: float = 0.5,
    top_percent: float = 5.0,
    resample: bool = False,
    ignore_extra_masks: bool = False,
    figure: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> EvaluationResult:
    """Score every map of ``maps_dir`` against its case's mask in ``masks_dir`` (see the module docstring).

    Args:
        maps_dir: folder of maps ``<case>_<method>_class<k><ending>`` (e.g. a ``medcam3d nnunet``
            output folder).
        masks_dir: folder of masks / label maps ``<case><ending>``.
        output_dir: where ``evaluation.csv``, ``evaluation_summary.json`` and ``evaluation.png`` go
            (created if missing).
        tolerance_mm: pointing-game tolerance (mm; 0: the peak must lie in the mask).
        threshold: map value for ``iou_threshold`` / ``dice_threshold`` (``map >= threshold``).
        top_percent: share of voxels for ``iou_top_percent`` / ``dice_top_percent``.
        resample: compare maps on other grids than their mask's in world coordinates (default: refuse).
        ignore_extra_masks: skip masks that no map refers to (default: refuse).
        figure: write the box plots (needs ``medcam3d[viz]``).
        overwrite: replace existing output files (default: refuse).
        progress: tqdm bar over the maps.

    Every argument, the pairing and the grids are checked before any file is written; the outputs
    are written only after every map has been scored, so a failure leaves no partial output.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        InputFileError: missing folders, no maps, unpaired or doubled files (all listed), unreadable images.
        GeometryError: maps off their mask's grid without ``resample`` (all listed).
        ConfigurationError: a number out of range.
        OutputPathError: an output file exists (without ``overwrite``) or the folder is not writable.
    """
    from tqdm.auto import tqdm

    from medcam3d._atomic import check_writable_dir, write_json_atomic, write_text_atomic
    from medcam3d.io import read_image
    from medcam3d.metrics.localisation import localisation_scores

    tolerance = _check_number(tolerance_mm, "tolerance_mm", 0.0)
    value_threshold = _check_number(threshold, "threshold")
    percent = _check_number(top_percent, "top_percent", 0.0, 100.0)
    if percent <= 0:
        raise ConfigurationError(f"top_percent must be in (0, 100], got {top_percent!r}.")
    if figure:
        require_extra(
            "matplotlib", "viz", "the box plots of medcam3d evaluate (or figure=False / --no-figure)"
        )
    out_dir = Path(output_dir)
    names = [CSV_NAME, SUMMARY_NAME] + ([FIGURE_NAME] if figure else [])
    _check_outputs(out_dir, names, overwrite)
    pairs, skipped = pair_files(maps_dir, masks_dir, ignore_extra_masks)
    _check_grids(pairs, resample)

    rows: list[dict[str, Any]] = []
    masks: dict[Path, tuple[np.ndarray, Any]] = {}
    for item, mask_path in tqdm(pairs, desc="evaluate", unit="map", disable=not progress):
        if mask_path not in masks:
            masks = {mask_path: read_image(mask_path)}  # maps are sorted by case: keep one mask
        labels, mask_geometry = masks[mask_path]
        cam, cam_geometry = read_image(item.path)
        target = labels == item.category
        row: dict[str, Any] = {
            "case": item.case,
            "method": item.method,
            "class": item.category,
            "map_file": item.path.name,
            "mask_file": mask_path.name,
            "mask_voxels": int(np.count_nonzero(target)),
        }
        if not target.any():
            logger.warning(
                "Class %d is absent from %s: the scores of %s are undefined (empty cells).",
                item.category,
                mask_path.name,
                item.path.name,
            )
            row.update({name: math.nan for name in SCORE_COLUMNS})
            row["peak_index"] = ""
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # undefined scores are NaN
                scores = localisation_scores(
                    (cam, cam_geometry),
                    (target, mask_geometry),
                    tolerance_mm=tolerance,
                    threshold=value_threshold,
                    top_percent=percent,
                )
            assert not isinstance(scores, list)
            values = scores.to_dict()
            row.update({name: values[name] for name in SCORE_COLUMNS})
            row["peak_index"] = " ".join(str(v) for v in scores.peak_index)
        rows.append(row)

    settings = {
        "maps_dir": str(Path(maps_dir)),
        "masks_dir": str(Path(masks_dir)),
        "tolerance_mm": tolerance,
        "threshold": value_threshold,
        "top_percent": percent,
        "resample": bool(resample),
        "peak_index_order": "array index (z, y, x) of the mask's grid",
    }
    summary = _summary(rows, settings)
    drawn = _figure(rows) if figure else None

    out_dir = check_writable_dir(out_dir)
    buffer = io.StringIO()
    columns = [
        "case",
        "method",
        "class",
        "map_file",
        "mask_file",
        "mask_voxels",
        *SCORE_COLUMNS,
        "peak_index",
    ]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        )
    csv_path = write_text_atomic(out_dir / CSV_NAME, buffer.getvalue(), overwrite)
    summary_path = write_json_atomic(out_dir / SUMMARY_NAME, summary, overwrite)
    figure_path = None
    if drawn is not None:
        from medcam3d._atomic import atomic_path

        figure_path = out_dir / FIGURE_NAME
        with atomic_path(figure_path, overwrite=overwrite) as tmp:
            drawn.savefig(tmp, dpi=120, format="png")
    logger.info("Wrote %s, %s%s", csv_path, summary_path, f", {figure_path}" if figure_path else "")
    return EvaluationResult(rows, summary, csv_path, summary_path, figure_path, skipped)
