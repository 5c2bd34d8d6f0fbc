"""``explain_folder`` / ``explain_run``: every case of a folder through the batch layer.

::

    explain_run(inputs, output_dir, model_source, settings, options)
        ├─ check_settings, find_cases (names checked once), find_masks, channel counts  (no model)
        ├─ the results' settings + the model's fingerprint (sizes, SHA-256 of its files)
        ├─ plan_batch: which cases the output folder's manifest lists as finished        (no writes;
        │  other settings there → SettingsMismatchError naming them, unless overwrite)
        ├─ only when a case must run: load_model (once), prepare_model (probe forward, classes,
        │  layers) — every check before the first file is written
        └─ run_batch(cases, ExplainCaseWorker ...): local engine (this process, the model loaded
           above) or Ray (each worker loads the model once); manifest, resume, summary

A re-run of a finished folder loads no model and computes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcam3d.batch import (
    MANIFEST_NAME,
    BatchOptions,
    BatchSummary,
    CaseContext,
    Manifest,
    fingerprint_files,
    plan_batch,
    run_batch,
)
from medcam3d.errors import ConfigurationError, InputFileError, OutputPathError
from medcam3d.explain.cases import Case, find_cases, find_masks
from medcam3d.explain.runner import (
    CaseResult,
    ExplainModel,
    MapRecord,
    TargetSpec,
    _build_cams,
    _Prepared,
    explain_prepared,
    prepare_case,
    prepare_model,
)
from medcam3d.explain.settings import ExplainSettings, check_settings
from medcam3d.models.loaded import LoadedModel, ModelSource

__all__ = [
    "ExplainCaseWorker",
    "ExplainRun",
    "ModelFacts",
    "batch_settings",
    "explain_folder",
    "explain_run",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ the worker
@dataclass(frozen=True)
class ModelFacts:
    """What :func:`~medcam3d.explain.prepare_model` found out about the model, checked once in the
    driver and sent to Ray workers (which then build their CAMs without probing the model again)."""

    task: str
    num_classes: int
    target_layers: tuple[str, ...]
    layers_suggested: bool
    targets: tuple[TargetSpec, ...]
    patch_size: tuple[int, ...] | None
    overlap: float
    in_channels: int
    axis_order: str
    mirror: bool
    gaussian: bool

    @classmethod
    def of(cls, model: ExplainModel) -> ModelFacts:
        return cls(
            model.task,
            model.num_classes,
            model.target_layers,
            model.layers_suggested,
            model.targets,
            model.patch_size,
            model.overlap,
            model.in_channels,
            model.axis_order,
            model.mirror,
            model.gaussian,
        )

    def model(self, loaded: LoadedModel, settings: ExplainSettings) -> ExplainModel:
        """The :class:`ExplainModel` of ``loaded`` (CAM objects built here)."""
        cams = _build_cams(loaded.network, settings.methods, self.target_layers, settings.output_index)
        return ExplainModel(
            loaded=loaded,
            task=self.task,
            num_classes=self.num_classes,
            target_layers=self.target_layers,
            layers_suggested=self.layers_suggested,
            targets=self.targets,
            cams=cams,
            patch_size=self.patch_size,
            overlap=self.overlap,
            in_channels=self.in_channels,
            axis_order=self.axis_order,
            mirror=self.mirror,
            gaussian=self.gaussian,
        )


class ExplainCaseWorker:
    """The batch layer's worker for ``medcam3d explain`` (:class:`medcam3d.batch.CaseWorker`).

    ``prepare(case)`` reads and preprocesses (the batch layer runs it in a background thread while
    the previous case is computed); ``process(case, prepared, context)`` computes every map of the
    case and writes the files into ``context.output_dir`` (replacing stale files: the manifest
    decided that the case runs) and returns them. Made once per worker: with the local engine
    around the model :func:`explain_run` loaded and checked; on Ray with :meth:`load` (top-level,
    picklable through :func:`functools.partial`), which loads the model once per worker.
    """

    def __init__(self, model: ExplainModel, settings: ExplainSettings) -> None:
        self.model = model
        self.settings = settings
        #: case → its result, for the cases this worker computed (read by :func:`explain_run`)
        self.results: dict[str, CaseResult] = {}

    @classmethod
    def load(
        cls,
        source: ModelSource,
        settings: ExplainSettings,
        facts: ModelFacts,
        device: str | None = "auto",
    ) -> ExplainCaseWorker:
        """Load the model from ``source`` on ``device`` (on a Ray GPU worker ``"auto"`` is its GPU)."""
        from medcam3d.models.loading import load_model

        loaded = load_model(source, device=device)
        return cls(facts.model(loaded, settings), settings)

    def prepare(self, case: Case) -> tuple[_Prepared, float]:
        start = time.perf_counter()
        prepared = prepare_case(self.model.loaded, case, self.settings)
        return prepared, time.perf_counter() - start

    def process(self, case: Case, prepared: tuple[_Prepared, float], context: CaseContext) -> list[Path]:
        volume, read_seconds = prepared
        result = explain_prepared(
            self.model,
            case,
            volume,
            self.settings,
            context.output_dir,
            overwrite=True,
            progress=context.progress,
            read_seconds=read_seconds,
        )
        self.results[case.identifier] = result
        return list(result.files)


# ------------------------------------------------------------------------------------ settings
def _factory_file(spec: str | None) -> Path | None:
    if spec is None or ":" not in spec:
        return None
    module = spec.rpartition(":")[0]
    if module.endswith(".py") or "/" in module or "\\" in module:
        return Path(module)
    return None


def model_fingerprint(source: ModelSource | LoadedModel) -> dict[str, Any]:
    """What identifies the model in the manifest: its kind, factory and keyword arguments, and the
    name, size and SHA-256 of every file it is made from (checkpoint, bundle configs and weights, a
    ``file.py`` factory). A retrained checkpoint then refuses to resume into the old folder. For a
    loaded model, the files of its :attr:`~medcam3d.models.LoadedModel.source` (changes made to the
    network in memory are not seen)."""
    if isinstance(source, LoadedModel):
        source = source.source
    files: list[Path] = []
    if source.bundle is not None:
        kind = "bundle"
        configs = Path(source.bundle) / "configs"
        if configs.is_dir():
            files += sorted(p for p in configs.iterdir() if p.is_file() and not p.name.startswith("."))
        files.append(Path(source.bundle) / "models" / "model.pt")
    else:
        kind = "factory" if source.factory is not None else "pickle"
        code = _factory_file(source.factory)
        if code is not None:
            files.append(code)
        if source.checkpoint is not None:
            files.append(Path(source.checkpoint))
    present = [p for p in files if p.is_file()]  # a missing file is reported by load_model, later
    return {
        "kind": kind,
        "factory": source.factory,
        "model_kwargs": dict(source.model_kwargs),
        "files": fingerprint_files(present),
    }


def batch_settings(settings: ExplainSettings, source: ModelSource | LoadedModel) -> dict[str, Any]:
    """The settings the output folder's manifest keeps: :meth:`ExplainSettings.results_json` (not
    the output folder, ``overwrite`` or ``progress``) and ``model`` (:func:`model_fingerprint`).
    Not the device: a folder started on a GPU can be finished on the CPU."""
    values = settings.results_json()
    values["model"] = model_fingerprint(source)
    return values


# ------------------------------------------------------------------------------------ results
@dataclass
class ExplainRun:
    """What :func:`explain_run` did: one :class:`CaseResult` per case (input order), the batch
    layer's :class:`~medcam3d.batch.BatchSummary` (done / skipped / failed, ``exit_code``) and the
    settings kept in the output folder's manifest (:func:`batch_settings`)."""

    results: list[CaseResult]
    summary: BatchSummary
    settings: dict[str, Any] = field(default_factory=dict)


def _relocate(path: Path, absolute: Path, shown: Path) -> Path:
    try:
        return shown / Path(path).relative_to(absolute)
    except ValueError:
        return Path(path)


def _from_files(
    case: Case, files: Sequence[Path], absolute: Path, shown: Path, skipped: bool, seconds: float
) -> CaseResult:
    """A case's result read back from its sidecars (cases finished before, or on Ray workers)."""
    names = {Path(f).name for f in files}
    maps: list[MapRecord] = []
    prediction: dict[str, Any] | None = None
    for f in files:
        path = Path(f)
        if path.suffix != ".json":
            continue
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("case") != case.identifier or "map" not in payload:
                continue
            stem = path.name[: -len(".json")]
            maps.append(
                MapRecord(
                    str(payload["method"]),
                    int(payload["target"]["class"]),
                    str(payload["target"]["kind"]),
                    _relocate(path.parent / payload["map"]["file"], absolute, shown),
                    _relocate(path, absolute, shown),
                    _relocate(path.parent / f"{stem}.png", absolute, shown)
                    if f"{stem}.png" in names
                    else None,
                    payload.get("target_score"),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutputPathError(
                f"Cannot read back the sidecar {path} of case {case.identifier}: {exc}. Run again with "
                "--overwrite to recompute the folder."
            ) from exc
        prediction = prediction or payload.get("prediction")
    return CaseResult(
        case.identifier,
        case.files,
        True,
        tuple(maps),
        tuple(_relocate(Path(f), absolute, shown) for f in files),
        prediction,
        None,
        seconds,
        {},
        skipped,
    )


def _relocated(result: CaseResult, absolute: Path, shown: Path) -> CaseResult:
    maps = tuple(
        dataclasses.replace(
            m,
            map_file=_relocate(m.map_file, absolute, shown),
            sidecar_file=_relocate(m.sidecar_file, absolute, shown),
            figure_file=_relocate(m.figure_file, absolute, shown) if m.figure_file is not None else None,
        )
        for m in result.maps
    )
    files = tuple(_relocate(f, absolute, shown) for f in result.files)
    return dataclasses.replace(result, maps=maps, files=files)


def _collect(
    cases: Sequence[Case], summary: BatchSummary, computed: dict[str, CaseResult], shown: Path
) -> list[CaseResult]:
    absolute = Path(summary.output_dir)
    manifest = Manifest.read(absolute / MANIFEST_NAME)
    records = manifest.records if manifest is not None else {}
    failures = {f.identifier: f for f in summary.failures}
    done, skipped = set(summary.done), set(summary.skipped)
    results = []
    for case in cases:
        name = case.identifier
        record = records.get(name, {})
        files = [manifest.output_path(o["path"]) for o in record.get("outputs", [])] if manifest else []
        if name in failures:
            results.append(CaseResult(name, case.files, False, error=failures[name].error, skipped=False))
        elif name in done and name in computed:
            results.append(_relocated(computed[name], absolute, shown))
        elif name in done or name in skipped:
            timings = record.get("timings", {}) if name in done else {}
            seconds = float(timings.get("prepare_s", 0.0)) + float(timings.get("process_s", 0.0))
            results.append(_from_files(case, files, absolute, shown, name in skipped, seconds))
    return results


# ------------------------------------------------------------------------------------ the run
def _case_channels(cases: Sequence[Case]) -> int:
    counts = {len(c.files) for c in cases}
    if len(counts) > 1:
        raise InputFileError(
            "The cases have different numbers of channel files: "
            + ", ".join(f"{c.identifier}: {len(c.files)}" for c in cases[:10])
        )
    return counts.pop()


def _check_bundle_flags(settings: ExplainSettings) -> None:
    used = [
        flag
        for flag, on in (
            ("--orientation", settings.orientation is not None),
            ("--spacing", settings.spacing is not None),
            ("--window", settings.window is not None),
            ("--zscore", settings.zscore),
            ("--percentiles", settings.percentiles is not None),
            ("--input-size", settings.input_size is not None),
            ("--axis-order", settings.axis_order != "zyx"),
        )
        if on
    ]
    if used:
        raise ConfigurationError(
            f"{', '.join(used)}: a MONAI bundle brings its own preprocessing (configs/inference.json 'preprocessing'); "
            "leave these flags out (--patch-size / --overlap still choose the sliding window)."
        )


def _checked_model(
    model_source: ModelSource | LoadedModel,
    settings: ExplainSettings,
    cases: Sequence[Case],
    channels: int,
    device: str | torch.device | None,
) -> ExplainModel:
    """Load (unless loaded already) and check the model against the run: every check of
    :func:`~medcam3d.explain.prepare_model` (a probe forward pass, classes, layers)."""
    from medcam3d.models.loading import load_model

    loaded = (
        model_source if isinstance(model_source, LoadedModel) else load_model(model_source, device=device)
    )
    if loaded.bundle is not None:
        _check_bundle_flags(settings)
        from medcam3d.models.bundle import bundle_input_channels

        declared = bundle_input_channels(loaded.bundle)
        if declared is not None and loaded.in_channels is None:
            loaded.in_channels = declared
    return prepare_model(loaded, settings, cases, channels)


def _options(settings: ExplainSettings, options: BatchOptions | None) -> BatchOptions:
    if options is None:
        return BatchOptions(overwrite=settings.overwrite, quiet=not settings.progress)
    if not isinstance(options, BatchOptions):
        raise ConfigurationError(
            f"options must be a medcam3d.batch.BatchOptions, got {type(options).__name__}."
        )
    return dataclasses.replace(
        options,
        overwrite=options.overwrite or settings.overwrite,
        quiet=options.quiet or not settings.progress,
    )


def explain_run(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    model_source: ModelSource | LoadedModel,
    settings: ExplainSettings | None = None,
    *,
    masks: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    options: BatchOptions | None = None,
) -> ExplainRun:
    """:func:`explain_folder`, returning the batch summary too (what ``medcam3d explain`` calls)."""
    settings = settings or ExplainSettings()
    settings = dataclasses.replace(
        settings, output_dir=Path(output_dir), extra={**settings.extra, "has_masks": masks is not None}
    )
    settings = check_settings(settings)
    batch = _options(settings, options)
    cases = find_cases(inputs)
    if masks is not None:
        cases = find_masks(cases, masks)
    channels = _case_channels(cases)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"Output folder {out} is a file; give a folder.")
    if isinstance(model_source, LoadedModel) and batch.engine == "ray":
        raise ConfigurationError(
            "The Ray engine loads the model in every worker: give a ModelSource (medcam3d.models.model_source"
            "(...)), not a model loaded already."
        )
    if model_source.bundle is not None and masks is not None:
        raise ConfigurationError(
            "--target-mask is not supported with MONAI bundles yet; use --model with flags."
        )
    manifest_settings = batch_settings(settings, model_source)
    plan = plan_batch(cases, out, manifest_settings, batch)  # other settings: refused here, nothing written
    due = {c.identifier for c in plan.to_run}
    # without a fixed input size the model is probed on the first case that reads: a due one if any
    # reads, else a finished one (a broken case then fails alone instead of stopping the run)
    probe_order = [*plan.to_run, *(c for c in cases if c.identifier not in due)]
    worker_factory: Callable[[], Any]
    local: dict[str, ExplainCaseWorker] = {}
    if batch.engine == "ray":
        assert isinstance(model_source, ModelSource)
        if plan.to_run:
            # checked here on the CPU (the GPUs are the workers'); each worker loads its own copy
            checked = _checked_model(model_source, settings, probe_order, channels, "cpu")
            facts = ModelFacts.of(checked)
            del checked
            worker_device = device if isinstance(device, str) or device is None else str(device)
            worker_factory = functools.partial(
                ExplainCaseWorker.load, model_source, settings, facts, worker_device
            )
        else:
            worker_factory = _nothing_to_do
    else:
        checked_model = (
            _checked_model(model_source, settings, probe_order, channels, device) if plan.to_run else None
        )

        def worker_factory() -> ExplainCaseWorker:
            model = checked_model
            if model is None:  # a case became due after the plan above (its inputs changed meanwhile)
                model = _checked_model(model_source, settings, cases, channels, device)
            local["worker"] = ExplainCaseWorker(model, settings)
            return local["worker"]

    if not plan.to_run:
        logger.info("Every case of %s was finished before; nothing to compute (no model loaded).", out)
    summary = run_batch(cases, worker_factory, out, manifest_settings, batch)
    computed = local["worker"].results if "worker" in local else {}
    results = _collect(cases, summary, computed, out)
    failed = [r for r in results if not r.ok]
    logger.debug(  # the batch summary (format_summary) says the same to the user
        "%d of %d case(s) explained (%d finished before)%s.",
        len(results) - len(failed),
        len(results),
        len(summary.skipped),
        f"; failed: {', '.join(r.identifier for r in failed)}" if failed else "",
    )
    return ExplainRun(results, summary, manifest_settings)


def _nothing_to_do() -> Any:  # pragma: no cover - run_batch makes no worker when every case is finished
    raise ConfigurationError(
        "A case became due after the run was planned (its inputs changed meanwhile); run the command again."
    )


def explain_folder(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    model_source: ModelSource | LoadedModel,
    settings: ExplainSettings | None = None,
    *,
    masks: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    options: BatchOptions | None = None,
) -> list[CaseResult]:
    """Explain every case of ``inputs`` with one model, loaded once; one result per case.

    Runs through the batch layer (:func:`medcam3d.batch.run_batch`): the output folder's manifest
    (``medcam3d_manifest.json``) records each finished case, so a re-run skips the finished cases
    (and loads no model when all are), recomputes those whose inputs (scans, masks) changed, and
    refuses a folder made with other settings or another model, naming the differences, unless
    ``overwrite``. A case that fails is reported and the others go on.

    Args:
        inputs: a folder of scans (NIfTI, MHA/MHD, NRRD; nnU-Net ``_0000`` channel naming groups
            channels), scan files, a DICOM series folder, or a list of those.
        output_dir: created if missing; maps ``<case>_<method>_<class>.nii.gz`` (float32, the scan's
            geometry), sidecars ``.json``, label maps ``<case>_segmentation.nii.gz`` (segmenters),
            figures ``.png`` and viewer pages ``<case>_viewer.html`` when asked, the manifest.
        model_source: a :class:`~medcam3d.models.ModelSource` (loaded here, once; once per worker
            with the Ray engine) or a model loaded already (:func:`medcam3d.models.load_model`;
            local engine only).
        settings: see :class:`ExplainSettings` (``output_dir`` is set from the argument;
            ``overwrite=True`` or ``progress=False`` also switch those on in ``options``).
        masks: target masks for ``target="mask"``: one file, or a folder with ``<case>.nii.gz``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (ignored for a model loaded already; Ray
            workers use it each, after the driver checked the model on the CPU).
        options: :class:`~medcam3d.batch.BatchOptions`: engine (``"local"``, ``"ray"``), workers,
            overwrite, quiet ... (default: resume on the local engine).

    Returns:
        One :class:`CaseResult` per case, in input order: successes (``skipped=True`` for cases
        finished before, read back from their sidecars) and failures.

    Raises (before any file is written):
        ConfigurationError (:class:`~medcam3d.batch.SettingsMismatchError` for a folder made with
        other settings), InputFileError, OutputPathError, BundleError, ModelFactoryError,
        CheckpointError, InputShapeError, TargetError, LayerNotFoundError, LayerOutputError.
    """
    return explain_run(
        inputs, output_dir, model_source, settings, masks=masks, device=device, options=options
    ).results
