"""``medcam3d nnunet`` on the batch layer: the per-case worker, the manifest settings, read-back.

:class:`NnUNetCaseWorker` is the :class:`medcam3d.batch.CaseWorker` of the nnU-Net integration:
``prepare`` is nnU-Net's preprocessing of a case (the batch layer runs it in a background thread
while the previous case is computed, as nnU-Net's own background workers do) and ``process`` is
the sliding window over every fold, the export to the original geometry and the verified atomic
writes. :func:`manifest_settings` is what the output folder's manifest keeps (a retrained
checkpoint, other folds, layers, classes or step size refuse to resume into a folder), and
:func:`read_back` loads the maps and the segmentation of a case from its files (cases finished
by an earlier run, or on a Ray worker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medcam3d.batch import CaseContext, fingerprint_files
from medcam3d.nnunet.files import Case
from medcam3d.nnunet.runner import CaseResult, NnUNetCAM, TargetMode

__all__ = [
    "CaseFiles",
    "LoadSpec",
    "NnUNetCaseWorker",
    "RunnerSpec",
    "SaveOptions",
    "check_shared_segmentation",
    "manifest_name",
    "manifest_settings",
    "read_back",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveOptions:
    """Which files a case writes (``save_segmentation``, ``save_maps``, ``save_slices``, ``save_numpy``)."""

    segmentation: bool = True
    maps: bool = True
    slices: bool = True
    numpy: bool = False

    def kwargs(self) -> dict[str, bool]:
        return {
            "save_segmentation": self.segmentation,
            "save_maps": self.maps,
            "save_slices": self.slices,
            "save_numpy": self.numpy,
        }


@dataclass(frozen=True)
class CaseFiles:
    """The inputs of a case besides its channel files: its mask (``target="mask"``) and its
    previous cascade stage's segmentation, by case identifier."""

    masks: Mapping[str, str] = field(default_factory=dict)
    prev_stage: Mapping[str, str] = field(default_factory=dict)

    def inputs(self, case: Case) -> list[str]:
        """Every file that shapes the case's result (what the manifest hashes)."""
        extra = [self.masks.get(case.identifier), self.prev_stage.get(case.identifier)]
        return [*case.files, *(f for f in extra if f is not None)]


@dataclass(frozen=True)
class LoadSpec:
    """How a Ray worker loads the model folder (:func:`~medcam3d.nnunet.loading.load_predictor`)."""

    model_folder: str
    folds: tuple[int | str, ...]
    checkpoint_name: str
    device: str
    tile_step_size: float
    use_mirroring: bool
    trust_checkpoint: bool = False
    verbose: bool = False

    def load(self, device: str | torch.device | None = None) -> Any:
        """The predictor on ``device`` (default: :attr:`device`, resolved here: on a Ray worker,
        ``"cuda"`` is the GPU the worker reserved; without CUDA the CPU, with a warning)."""
        from medcam3d.nnunet.loading import load_predictor, resolve_device

        return load_predictor(
            self.model_folder,
            folds=list(self.folds),
            checkpoint_name=self.checkpoint_name,
            device=resolve_device(self.device if device is None else device),
            tile_step_size=self.tile_step_size,
            use_mirroring=self.use_mirroring,
            verbose=self.verbose,
            trust_checkpoint=self.trust_checkpoint,
        )


@dataclass(frozen=True)
class RunnerSpec:
    """The arguments of :class:`NnUNetCAM` (picklable: sent to Ray workers)."""

    target_layers: tuple[str, ...]
    target_classes: tuple[int, ...]
    method: str | type = "gradcam"
    target: TargetMode = "prediction"
    cam_type: Literal["2d", "3d"] = "3d"
    tile_step_size: float | None = None
    use_mirroring: bool | None = None
    method_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def runner(self, predictor: Any, progress: bool = True) -> NnUNetCAM:
        return NnUNetCAM(
            predictor,
            list(self.target_layers),
            method=self.method,
            target_classes=list(self.target_classes),
            target=self.target,
            cam_type=self.cam_type,
            tile_step_size=self.tile_step_size,
            use_mirroring=self.use_mirroring,
            method_kwargs=dict(self.method_kwargs),
            progress=progress,
        )


Prepared = tuple[torch.Tensor, "np.ndarray | None", dict[str, Any], float]


class NnUNetCaseWorker:
    """The batch layer's worker for ``medcam3d nnunet`` (:class:`medcam3d.batch.CaseWorker`).

    Made once per worker around one :class:`NnUNetCAM` (one loaded model): with the local engine
    around the runner :func:`~medcam3d.nnunet.segment_and_explain` checked; on Ray by :meth:`load`
    (a top-level classmethod, picklable through :func:`functools.partial`), once per actor.

    Args:
        runner: the loaded, checked runner.
        files: masks and previous-stage segmentations by case.
        save: which files each case writes.
        keep_maps: keep each computed case's maps and segmentation in :attr:`results` (``False``:
            only its files, so that memory stays bounded over any number of cases).
    """

    def __init__(
        self, runner: NnUNetCAM, files: CaseFiles, save: SaveOptions, keep_maps: bool = False
    ) -> None:
        self.runner = runner
        self.files = files
        self.save = save
        self.keep_maps = keep_maps
        #: case → its result, for the cases this worker computed
        self.results: dict[str, CaseResult] = {}

    @classmethod
    def load(
        cls, spec: LoadSpec, runner: RunnerSpec, files: CaseFiles, save: SaveOptions
    ) -> NnUNetCaseWorker:
        """Load the model folder on ``spec.device`` (on a Ray GPU worker ``"cuda"`` is its own GPU)."""
        return cls(runner.runner(spec.load(), progress=False), files, save, keep_maps=False)

    def prepare(self, case: Case) -> Prepared:
        """nnU-Net's preprocessing of ``case`` (and of its mask): runs in the background thread."""
        start = time.perf_counter()
        data, mask, properties = self.runner.preprocess(
            case.files,
            self.files.masks.get(case.identifier),
            self.files.prev_stage.get(case.identifier),
        )
        return data, mask, properties, time.perf_counter() - start

    def process(self, case: Case, prepared: Prepared, context: CaseContext) -> list[Path]:
        """Predict with CAM and write the case's files into ``context.output_dir``."""
        data, mask, properties, _ = prepared
        if self.runner.target == "mask" and mask is None:
            from medcam3d.errors import ConfigurationError

            raise ConfigurationError(f"target='mask' needs a mask file for case {case.identifier!r}.")
        self.runner.progress = context.progress
        result = self.runner.finish_case(
            case,
            data,
            mask,
            properties,
            context.output_dir,
            mask_file=self.files.masks.get(case.identifier),
            **self.save.kwargs(),
        )
        if not self.keep_maps:
            result.maps = None
            result.segmentation = None
        self.results[case.identifier] = result
        return list(result.files)


# ------------------------------------------------------------------------------------ settings
def _plain(value: Any) -> Any:
    """``value`` as a JSON value; anything else by its ``repr`` (it still has to match on a re-run)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        if isinstance(value, Mapping):
            return {str(k): _plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_plain(v) for v in value]
        if isinstance(value, type):
            return f"{value.__module__}.{value.__qualname__}"
        return repr(value)


def folder_fingerprint(
    model_folder: str | os.PathLike[str], folds: Sequence[int | str], checkpoint_name: str
) -> dict[str, Any]:
    """Name, size and SHA-256 of ``plans.json``, ``dataset.json`` and each fold's checkpoint."""
    folder = Path(model_folder)
    paths = [folder / "plans.json", folder / "dataset.json"]
    paths += [folder / f"fold_{f}" / checkpoint_name for f in folds]
    records = fingerprint_files([p for p in paths if p.is_file()])
    for record, path in zip(records, [p for p in paths if p.is_file()]):
        record["name"] = path.relative_to(folder).as_posix()
    return {"kind": "folder", "configuration": folder.name, "files": records}


def predictor_fingerprint(predictor: Any) -> dict[str, Any]:
    """SHA-256 of an initialised predictor's fold weights, plans and dataset (no files to hash)."""
    weights = hashlib.sha256()
    for parameters in predictor.list_of_parameters:
        for name in sorted(parameters):
            tensor = parameters[name]
            weights.update(name.encode())
            if isinstance(tensor, torch.Tensor):
                weights.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
                weights.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    plans = json.dumps(_plain(predictor.plans_manager.plans), sort_keys=True)
    dataset = json.dumps(_plain(predictor.dataset_json), sort_keys=True)
    configuration = getattr(predictor.configuration_manager, "configuration_name", None)
    return {
        "kind": "predictor",
        "configuration": configuration,
        "folds": len(predictor.list_of_parameters),
        "weights_sha256": weights.hexdigest(),
        "plans_sha256": hashlib.sha256(plans.encode()).hexdigest(),
        "dataset_sha256": hashlib.sha256(dataset.encode()).hexdigest(),
    }


def manifest_settings(
    model: dict[str, Any],
    runner: RunnerSpec,
    save: SaveOptions,
    *,
    folds: Sequence[int | str] | None,
    checkpoint_name: str | None,
    tile_step_size: float,
    use_mirroring: bool,
    has_masks: bool,
    cascade: bool,
) -> dict[str, Any]:
    """What the output folder's manifest keeps: everything that shapes a case's files (not the
    device, the engine or the progress switches: a folder started on a GPU can be finished on the
    CPU or on a Ray cluster)."""
    return {
        "command": "medcam3d nnunet",
        "model": model,
        "folds": None if folds is None else [str(f) for f in folds],
        "checkpoint": checkpoint_name,
        "method": _plain(runner.method),
        "method_kwargs": _plain(dict(runner.method_kwargs)),
        "target_layers": list(runner.target_layers),
        "target_classes": list(runner.target_classes),
        "target": runner.target,
        "masks": has_masks,
        "cascade_previous_stage": cascade,
        "cam_type": runner.cam_type,
        "tile_step_size": float(tile_step_size),
        "use_mirroring": bool(use_mirroring),
        "outputs": {
            "segmentation": save.segmentation,
            "maps": save.maps,
            "slices": save.slices,
            "numpy": save.numpy,
        },
    }


def manifest_name(method_name: str) -> str:
    """The manifest of one CAM method in an output folder: ``medcam3d_manifest_<method>.json``, so
    that several methods (run one after the other, as ``nnunetv2_cam`` users do) share a folder and
    each resumes on its own; ``medcam3d evaluate`` then compares them."""
    return f"medcam3d_manifest_{method_name}.json"


#: the settings that shape the segmentation ``<case><ending>``, which every method's run writes
SEGMENTATION_SETTINGS = (
    "model",
    "folds",
    "checkpoint",
    "tile_step_size",
    "use_mirroring",
    "cascade_previous_stage",
)


def check_shared_segmentation(folder: Path, name: str, settings: Mapping[str, Any]) -> None:
    """Refuse a run whose segmentations would replace those of another method's run in the same
    folder made with another model, folds, checkpoint, step size or mirroring: the maps of that
    run would then sit beside a segmentation they were not computed with.

    Raises:
        ConfigurationError: naming the other manifest and each difference.
    """
    from medcam3d.batch import Manifest, normalize_settings, settings_differences
    from medcam3d.errors import ConfigurationError

    ours = normalize_settings(settings)
    if not ours.get("outputs", {}).get("segmentation") or not folder.is_dir():
        return
    for other in sorted(folder.glob("medcam3d_manifest_*.json")):
        if other.name == name:
            continue
        manifest = Manifest.read(other)
        theirs = manifest.settings if manifest is not None else {}
        if theirs.get("command") != ours.get("command") or not manifest or not manifest.records:
            continue
        if not theirs.get("outputs", {}).get("segmentation"):
            continue
        differences = settings_differences(
            {k: theirs.get(k) for k in SEGMENTATION_SETTINGS}, {k: ours.get(k) for k in SEGMENTATION_SETTINGS}
        )
        if differences:
            raise ConfigurationError(
                f"The output folder {folder} holds the segmentations of a {theirs.get('method')!r} run ({other.name}) "
                f"made with other settings: {'; '.join(differences)}. This run would replace them. Choose another "
                "output folder, or run with the same model, folds, checkpoint, step size and mirroring."
            )


# ------------------------------------------------------------------------------------ read-back
def read_back(
    identifier: str,
    files: Sequence[Path],
    reader_writer_class: type,
    file_ending: str,
    method_name: str,
    target_classes: Sequence[int],
    keep_maps: bool,
    skipped: bool,
) -> CaseResult:
    """A case's result from its written files: the maps from the float maps (or the ``.npy``), the
    segmentation from ``<case><ending>``; ``None`` for what was not written (or ``keep_maps=False``)."""
    by_name = {Path(f).name: Path(f) for f in files}
    maps: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    if keep_maps:
        rw = reader_writer_class()
        found: list[np.ndarray] = []
        for k in target_classes:
            image = by_name.get(f"{identifier}_{method_name}_class{k}{file_ending}")
            npy = by_name.get(f"{identifier}_{method_name}_class{k}.npy")
            if image is not None:
                data, _ = rw.read_images([str(image)])
                found.append(np.asarray(data[0], dtype=np.float32))
            elif npy is not None:
                found.append(np.load(npy, allow_pickle=False).astype(np.float32, copy=False))
            else:
                break
        if len(found) == len(target_classes):
            maps = np.stack(found)
        else:
            logger.debug("Case %s: its maps were not written, so they cannot be read back", identifier)
        seg = by_name.get(f"{identifier}{file_ending}")
        if seg is not None:
            seg_data, _ = rw.read_seg(str(seg))
            labels = np.asarray(seg_data[0])
            segmentation = labels.astype(np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16)
    return CaseResult(identifier, maps, segmentation, list(target_classes), list(files), skipped=skipped)
