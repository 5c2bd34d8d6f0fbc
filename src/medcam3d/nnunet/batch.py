"""The front door: segment and explain a set of cases, every check once, before any heavy work.

:func:`segment_and_explain` is the one function behind ``medcam3d nnunet`` and
:func:`run_cam_for_prediction` (``nnunetv2_cam``'s Python function): it takes a trained model
folder (loaded only after the cheap checks) or an initialised ``nnUNetPredictor``, checks the
inputs, options and output folder, and runs the cases through the batch layer
(:func:`medcam3d.batch.run_batch`): a manifest in the output folder records each finished case,
a re-run skips them (loading no model when every case is finished), recomputes the cases whose
inputs changed and refuses a folder made with other settings, naming them; the local engine
prepares the next case in a background thread, the Ray engine spreads the cases over workers.
It returns a :class:`BatchResult` with the results of the cases that are done and the errors of
those that failed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from medcam3d.batch import BatchOptions, BatchSummary, Manifest, plan_batch, run_batch
from medcam3d.errors import ConfigurationError, OutputPathError, require_extra
from medcam3d.nnunet.files import (
    Case,
    check_map_writer,
    check_readable,
    group_input_files,
    match_masks,
    match_prev_stage,
)
from medcam3d.nnunet.loading import (
    ModelInfo,
    cascade_error,
    check_model_folder,
    import_nnunet,
    resolve_device,
)
from medcam3d.nnunet.runner import CaseResult, NnUNetCAM, TargetMode, method_file_name
from medcam3d.nnunet.worker import (
    CaseFiles,
    LoadSpec,
    NnUNetCaseWorker,
    RunnerSpec,
    SaveOptions,
    check_shared_segmentation,
    folder_fingerprint,
    manifest_name,
    manifest_settings,
    predictor_fingerprint,
    read_back,
)

__all__ = ["BatchResult", "CaseFailure", "run_cam_for_prediction", "segment_and_explain"]

logger = logging.getLogger(__name__)

InputFiles = Union[str, os.PathLike[str], Sequence[Union[str, os.PathLike[str]]]]
MaskFiles = Union[str, os.PathLike[str], Sequence[str], dict[str, str], None]


@dataclass(frozen=True)
class CaseFailure:
    """A case that failed while running: its identifier and ``"ErrorType: message"``."""

    identifier: str
    error: str


@dataclass
class BatchResult:
    """What :func:`segment_and_explain` did.

    Attributes:
        cases: every case of the input, sorted by identifier.
        results: one :class:`~medcam3d.nnunet.runner.CaseResult` per case that is done, in case
            order: computed in this run, or finished by an earlier one (``skipped=True``, maps and
            segmentation read back from its files).
        failures: one :class:`CaseFailure` per case that failed (only with ``continue_on_error``).
        output_folder: where the files went (``None``: nothing was written).
        skipped: the cases an earlier run finished (their records in the manifest matched).
        summary: the batch layer's :class:`~medcam3d.batch.BatchSummary` (``None`` without an
            output folder); ``summary.exit_code`` is the command's.
    """

    cases: list[Case]
    results: list[CaseResult] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    output_folder: Path | None = None
    skipped: list[str] = field(default_factory=list)
    summary: BatchSummary | None = None

    @property
    def ok(self) -> bool:
        """Every case succeeded."""
        return not self.failures


def _method_name(method: str | type) -> str:
    return (method if isinstance(method, str) else getattr(method, "__name__", "")).strip().lower()


def segxres_kwargs(method: str | type, pool_size: int | None, pool_mode: str) -> dict[str, Any]:
    """The Seg-XRes-CAM options (``--pool-size``, ``--pool-mode``) as method keyword arguments."""
    if pool_size is not None or _method_name(method) == "segxrescam":
        return {"pool_size": pool_size, "pool_mode": pool_mode}
    return {}


def check_step_size(tile_step_size: float | None) -> None:
    """``tile_step_size`` (``-step_size``) must be a number in (0, 1] (``None``: the predictor's)."""
    if tile_step_size is None:
        return
    valid = isinstance(tile_step_size, (int, float)) and not isinstance(tile_step_size, bool)
    if not valid or not math.isfinite(tile_step_size) or not 0 < tile_step_size <= 1:
        raise ConfigurationError(
            f"-step_size / tile_step_size must be a number in (0, 1], the step between patches as a fraction of "
            f"the patch size (0.5, nnUNetv2_predict's default, overlaps patches by half), got {tile_step_size!r}."
        )


def check_method_options(method: str | type, pool_size: int | None, pool_mode: str) -> None:
    """The method exists and Seg-XRes-CAM's pooling options are given to Seg-XRes-CAM only, with
    valid values; raises :class:`ConfigurationError` (cheap: nothing is loaded)."""
    if isinstance(method, str):
        from medcam3d.methods.registry import get_method

        get_method(method)  # an unknown name lists the known ones
    elif not isinstance(method, type):
        raise ConfigurationError(f"method must be a method name or a CAM class, got {method!r}.")
    if pool_size is not None:
        if _method_name(method) != "segxrescam":
            raise ConfigurationError(
                f"--pool-size / pool_size is an option of Seg-XRes-CAM only (--method segxrescam); the method "
                f"{_method_name(method) or method!r} has no gradient pooling. Drop --pool-size, or use "
                "--method segxrescam."
            )
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(
                f"--pool-size / pool_size must be a whole number >= 1, got {pool_size!r}."
            )
    if pool_mode not in ("max", "mean"):
        raise ConfigurationError(f"--pool-mode / pool_mode must be 'max' or 'mean', got {pool_mode!r}.")


def segment_and_explain(
    model: Any,
    input_files: InputFiles,
    output_folder: str | os.PathLike[str] | None,
    target_layer: str | Sequence[str],
    target_class: int | Sequence[int] = 1,
    method: str | type = "gradcam",
    *,
    target: TargetMode = "prediction",
    cam_type: Literal["2d", "3d"] = "3d",
    mask_files: MaskFiles = None,
    prev_stage_predictions: str | os.PathLike[str] | None = None,
    pool_size: int | None = None,
    pool_mode: Literal["max", "mean"] = "max",
    method_kwargs: dict[str, Any] | None = None,
    save_segmentation: bool = True,
    save_maps: bool = True,
    save_slices: bool = True,
    save_numpy: bool = False,
    tile_step_size: float | None = None,
    use_mirroring: bool | None = None,
    folds: Sequence[int | str] | None = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    device: str | torch.device | None = None,
    continue_on_error: bool = True,
    progress: bool = True,
    verbose: bool = False,
    trust_checkpoint: bool = False,
    keep_maps: bool = True,
    overwrite: bool = False,
    options: BatchOptions | None = None,
) -> BatchResult:
    """Segment and explain every case of ``input_files`` with one forward per (patch, fold, mirror).

    Args:
        model: a trained model folder (``…/nnUNetTrainer__nnUNetPlans__3d_fullres``; loaded with
            ``folds``, ``checkpoint_name``, ``device``, ``tile_step_size`` and ``use_mirroring``
            only after every cheap check passed) or an initialised ``nnUNetPredictor``
            (``device``, when given, moves it).
        input_files: a folder, one file of a case, or a list of files and folders
            (``<case>_0000<ending>``, ``<case>_0001<ending>``, …; see
            :func:`~medcam3d.nnunet.files.group_input_files`).
        output_folder: where to write (created if missing); ``None`` writes nothing.
        target_layer, target_class, method, target, cam_type: as :class:`NnUNetCAM`.
        mask_files: for ``target="mask"``: a folder of ``<case><ending>``, ``{case: file}`` or a
            list of files in case order.
        prev_stage_predictions: for a cascade stage, the folder of the previous stage's
            segmentations ``<case><ending>``.
        pool_size, pool_mode, method_kwargs: options of the method (Seg-XRes-CAM's pooling, …).
        save_segmentation, save_maps, save_slices, save_numpy: which files to write per case
            (``<case><ending>``, ``<case>_<method>_class<k><ending>``,
            ``<method>/<case>/class<k>_slice_NNN.png``, ``<case>_<method>_class<k>.npy``).
        continue_on_error: a case that fails while running is logged and recorded in
            :attr:`BatchResult.failures`, and the others go on (``False``: the error is raised,
            the manifest keeps the cases finished before it).
        progress: tqdm bars over cases and patches. verbose: nnU-Net's own messages when loading.
        trust_checkpoint: unpickle checkpoints that the safe loader refuses
            (:func:`~medcam3d.nnunet.loading.load_checkpoint`): this runs code from the files, so
            only for model folders you trust.
        keep_maps: hold each case's maps and segmentation in :attr:`BatchResult.results` (cases
            finished before or computed on Ray workers are read back from their files). ``False``
            keeps only the file names, so that memory stays bounded over any number of cases
            (what ``medcam3d nnunet`` does).
        overwrite: recompute every case and start a new manifest (also ``options.overwrite``).
        options: how the batch runs (:class:`~medcam3d.batch.BatchOptions`: resume or overwrite,
            ``engine="ray"`` with ``workers``, ``gpus_per_worker`` …, ``torch_threads``,
            ``verify_hashes``); ``progress=False`` and ``continue_on_error=False`` override its
            ``quiet`` and ``continue_on_error``. Only with an output folder.

    With an output folder the cases run through :func:`medcam3d.batch.run_batch`: the folder's
    manifest (``medcam3d_manifest.json``) records each finished case with the size and SHA-256
    of its inputs (channel files, mask, previous stage) and the files it wrote. A re-run skips the
    cases whose record matches (no model is loaded when every case is finished), recomputes
    those whose inputs changed or whose files are gone, and raises
    :class:`~medcam3d.batch.SettingsMismatchError` naming the differing settings (model files,
    folds, checkpoint, method, layers, classes, target, step size, mirroring, which files are
    written) unless ``overwrite``. Stale temporaries of killed runs are removed at the start.

    Before the checkpoints are loaded and before anything is written, it refuses (with an error
    from :mod:`medcam3d.errors`): an unknown method, a step size outside (0, 1], pooling options
    for a method other than Seg-XRes-CAM; a missing model folder, fold or checkpoint, an empty
    checkpoint, an unreadable ``plans.json`` or ``dataset.json``; inputs that do not group into
    cases of the model's channels; case names that cannot name output files or that repeat
    (:func:`~medcam3d.nnunet.files.check_case_names`); unreadable images and images with several
    values per voxel (vector or 4-D images); masks or previous-stage segmentations that are
    missing; a cascade stage without ``prev_stage_predictions``; a reader-writer that cannot write
    float maps; PNGs without matplotlib; an output folder whose manifest has other settings.
    Checkpoints that are damaged or that the safe loader refuses fail while loading; layers and
    classes are checked once the network is loaded, the output folder is created and locked last,
    still before the first case runs.

    A map that comes out all zero (an empty mask, a class predicted nowhere) is logged as a
    warning naming the case and the class.
    """
    import_nnunet()
    if target not in ("prediction", "channel", "mask"):
        raise ConfigurationError(f"target must be 'prediction', 'channel' or 'mask', got {target!r}.")
    if cam_type not in ("2d", "3d"):
        raise ConfigurationError(f"cam_type must be '2d' or '3d', got {cam_type!r}.")
    check_step_size(tile_step_size)
    check_method_options(method, pool_size, pool_mode)
    options = _batch_options(options, progress, continue_on_error, overwrite)
    if target == "mask" and not mask_files:
        raise ConfigurationError(
            "target='mask' needs mask_files (--masks FOLDER): one mask per case, e.g. the ground truth."
        )
    from_folder = isinstance(model, (str, os.PathLike))
    if output_folder is None and options.engine == "ray":
        raise ConfigurationError(
            "The Ray engine writes each case's files into the output folder; give an output folder (-o), or "
            "use the local engine to get the maps in memory only."
        )
    if not from_folder and options.engine == "ray":
        raise ConfigurationError(
            "The Ray engine loads the model in every worker: give the trained model folder (-m), not an "
            "nnUNetPredictor loaded already."
        )
    if from_folder:
        fold_list = check_model_folder(model, folds, checkpoint_name)
        info = ModelInfo.from_folder(model)
    else:
        fold_list = []
        info = ModelInfo.from_predictor(model)

    cases = group_input_files(input_files, info.file_ending, info.num_channels)  # checks the names too
    check_readable([f for c in cases for f in c.files])
    masks = match_masks(cases, mask_files, info.file_ending) if target == "mask" else {}
    if info.previous_stage is not None and prev_stage_predictions is None:
        raise cascade_error(info.name, info.previous_stage)
    prev = (
        match_prev_stage(cases, prev_stage_predictions, info.file_ending)
        if info.previous_stage is not None
        else {}
    )
    if output_folder is not None:
        if save_maps:
            check_map_writer(info.reader_writer_class)
        if save_slices:
            require_extra("matplotlib", "viz", "PNG overlays (or pass save_slices=False / --no-save-slices)")
    layers = (target_layer,) if isinstance(target_layer, str) else tuple(target_layer)
    classes = (target_class,) if isinstance(target_class, (int, np.integer)) else tuple(target_class)
    spec = RunnerSpec(
        tuple(str(name) for name in layers),
        tuple(classes),
        method=method,
        target=target,
        cam_type=cam_type,
        tile_step_size=tile_step_size,
        use_mirroring=use_mirroring,
        method_kwargs={**segxres_kwargs(method, pool_size, pool_mode), **(method_kwargs or {})},
    )
    save = SaveOptions(save_segmentation, save_maps, save_slices, save_numpy)
    load = (
        LoadSpec(
            str(model),
            tuple(fold_list),
            checkpoint_name,
            "cpu" if device is None else str(device),  # resolved where the model is loaded
            0.5 if tile_step_size is None else float(tile_step_size),
            True if use_mirroring is None else bool(use_mirroring),
            trust_checkpoint=trust_checkpoint,
            verbose=verbose,
        )
        if from_folder
        else None
    )

    def loaded_runner(on_device: bool = True) -> NnUNetCAM:
        """Load the model (a folder) or take the predictor, and check layers and classes."""
        if load is not None:
            predictor = load.load(None if on_device else "cpu")
            loaded = ModelInfo.from_predictor(predictor)  # the configuration the checkpoints name
            if loaded.previous_stage is not None and prev_stage_predictions is None:
                raise cascade_error(Path(load.model_folder).name, loaded.previous_stage)
        else:
            predictor = model
            if device is not None:
                predictor.device = resolve_device(device)
        runner = spec.runner(predictor, progress=not options.quiet)
        if runner.cascaded and not prev:  # the checkpoints name a cascade stage the folder did not
            prev.update(match_prev_stage(cases, prev_stage_predictions, info.file_ending))
        return runner

    files = CaseFiles(masks, prev)
    if output_folder is None:
        return _in_memory(cases, loaded_runner(), files, save, options)

    if load is not None:
        fingerprint = folder_fingerprint(load.model_folder, fold_list, checkpoint_name)
        step, mirroring = load.tile_step_size, load.use_mirroring
    else:
        fingerprint = predictor_fingerprint(model)
        step = model.tile_step_size if tile_step_size is None else float(tile_step_size)
        mirroring = model.use_mirroring if use_mirroring is None else bool(use_mirroring)
    settings = manifest_settings(
        fingerprint,
        spec,
        save,
        folds=fold_list if load is not None else None,
        checkpoint_name=checkpoint_name if load is not None else None,
        tile_step_size=step,
        use_mirroring=mirroring,
        has_masks=bool(masks),
        cascade=info.previous_stage is not None,
    )
    out = Path(output_folder)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"Output folder {out} is a file; give a folder (-o).")
    manifest = manifest_name(method_file_name(method))  # one per method: methods share a folder
    check_shared_segmentation(out, manifest, settings)
    # other settings: refused here, before the model is loaded
    plan = plan_batch(cases, out, settings, options, inputs=files.inputs, manifest_name=manifest)
    worker_factory: Callable[[], Any]
    local: dict[str, NnUNetCaseWorker] = {}
    if options.engine == "ray":
        assert load is not None
        if plan.to_run:
            loaded_runner(on_device=False)  # layers and classes checked here, on the CPU, once
            worker_factory = functools.partial(NnUNetCaseWorker.load, load, spec, files, save)
        else:
            worker_factory = _nothing_to_do
    else:
        checked = loaded_runner() if plan.to_run else None  # a finished folder loads no model

        def worker_factory() -> NnUNetCaseWorker:
            runner = checked if checked is not None else loaded_runner()
            local["worker"] = NnUNetCaseWorker(runner, files, save, keep_maps=keep_maps)
            return local["worker"]

    if not plan.to_run:
        logger.info("Every case of %s was finished before; nothing to compute (no model loaded).", out)
    summary = run_batch(
        cases, worker_factory, out, settings, options, inputs=files.inputs, manifest_name=manifest
    )
    computed = local["worker"].results if "worker" in local else {}
    return _collect(
        cases, summary, computed, info, method_file_name(method), list(spec.target_classes), keep_maps
    )


def _batch_options(
    options: BatchOptions | None, progress: bool, continue_on_error: bool, overwrite: bool
) -> BatchOptions:
    if options is None:
        return BatchOptions(overwrite=overwrite, quiet=not progress, continue_on_error=continue_on_error)
    if not isinstance(options, BatchOptions):
        raise ConfigurationError(
            f"options must be a medcam3d.batch.BatchOptions, got {type(options).__name__}."
        )
    return dataclasses.replace(
        options,
        overwrite=options.overwrite or overwrite,
        quiet=options.quiet or not progress,
        continue_on_error=options.continue_on_error and continue_on_error,
    )


def _nothing_to_do() -> Any:  # pragma: no cover - run_batch makes no worker when every case is finished
    raise ConfigurationError(
        "A case became due after the run was planned (its inputs changed meanwhile); run the command again."
    )


def _in_memory(
    cases: Sequence[Case], runner: NnUNetCAM, files: CaseFiles, save: SaveOptions, options: BatchOptions
) -> BatchResult:
    """No output folder: every case computed in this process, nothing written, no manifest."""
    from tqdm.auto import tqdm

    batch = BatchResult(list(cases))
    for case in tqdm(cases, desc="cases", disable=options.quiet):
        try:
            result = runner.run_case(
                case,
                None,
                mask_file=files.masks.get(case.identifier),
                prev_stage_file=files.prev_stage.get(case.identifier),
                **save.kwargs(),
            )
        except Exception as exc:
            if not options.continue_on_error:
                raise
            logger.error("Case %s failed: %s: %s", case.identifier, type(exc).__name__, exc)
            batch.failures.append(CaseFailure(case.identifier, f"{type(exc).__name__}: {exc}"))
            continue
        batch.results.append(result)
    return batch


def _collect(
    cases: Sequence[Case],
    summary: BatchSummary,
    computed: dict[str, CaseResult],
    info: ModelInfo,
    method_name: str,
    target_classes: list[int],
    keep_maps: bool,
) -> BatchResult:
    """One result per case that is done (computed now, or finished before), in case order."""
    manifest = Manifest.read(summary.manifest)
    records = manifest.records if manifest is not None else {}
    done, skipped = set(summary.done), set(summary.skipped)
    batch = BatchResult(
        list(cases),
        failures=[CaseFailure(f.identifier, f.error) for f in summary.failures],
        output_folder=Path(summary.output_dir),
        skipped=list(summary.skipped),
        summary=summary,
    )
    for case in cases:
        name = case.identifier
        if name not in done and name not in skipped:
            continue
        if name in computed:
            batch.results.append(computed[name])
            continue
        outputs = records.get(name, {}).get("outputs", [])
        paths = [manifest.output_path(o["path"]) for o in outputs] if manifest is not None else []
        batch.results.append(
            read_back(
                name,
                paths,
                info.reader_writer_class,
                info.file_ending,
                method_name,
                target_classes,
                keep_maps,
                skipped=name in skipped,
            )
        )
    return batch


def run_cam_for_prediction(
    predictor: Any,
    input_files: InputFiles,
    output_folder: str | os.PathLike[str] | None,
    target_layer: Union[str, Sequence[str]],
    target_class: Union[int, Sequence[int]] = 1,
    method: str = "gradcam",
    cam_type: Literal["2d", "3d"] = "3d",
    device: Any = None,
    save_slices: bool = True,
    verbose: bool = False,
    pool_size: int | None = None,
    pool_mode: Literal["max", "mean"] = "max",
    *,
    target: TargetMode = "prediction",
    mask_files: MaskFiles = None,
    prev_stage_predictions: str | os.PathLike[str] | None = None,
    save_numpy: bool = False,
    save_segmentation: bool = True,
    tile_step_size: float | None = None,
    use_mirroring: bool | None = None,
    progress: bool | None = None,
    continue_on_error: bool = False,
    failures: list[tuple[str, str]] | None = None,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    options: BatchOptions | None = None,
) -> list[np.ndarray]:
    """``nnunetv2_cam.run_cam_for_prediction`` with the same parameters and return convention:
    segment and explain every case of ``input_files`` with one forward per (patch, fold, mirror).

    Accepts every parameter of ``nnunetv2_cam.run_cam_for_prediction`` with the same meaning, two
    defaults differ on purpose (see docs/nnunet.md): ``cam_type`` defaults to ``'3d'`` (maps
    normalised over the volume; ``'2d'`` normalises per slice along the first array axis) and
    ``device=None`` keeps the predictor's device (a given device moves its network, falling back to
    the CPU with a warning where CUDA / MPS is missing). ``predictor`` may also be a model folder
    (loaded safely, see ``trust_checkpoint``). A thin wrapper of :func:`segment_and_explain`, which
    returns the failures and the segmentations too; ``failures``, when given, receives
    ``(case, "ErrorType: message")`` for each case that failed with ``continue_on_error=True``.

    Writes per case ``<case><ending>`` (the segmentation, as ``nnUNetv2_predict``), one float map
    ``<case>_<method>_class<k><ending>`` per target class with the input's geometry, PNG overlays
    under ``<output_folder>/<method>/<case>/`` and optionally ``.npy`` maps. ``output_folder=None``
    writes nothing and only returns the maps.

    Unlike ``nnunetv2_cam``, a call into a folder a previous call finished resumes it (the
    manifest, see :func:`segment_and_explain`): finished cases are not computed again and their
    maps are read back from their files; a call with other settings raises
    :class:`~medcam3d.batch.SettingsMismatchError` naming them, unless ``overwrite=True``.
    ``options`` (:class:`~medcam3d.batch.BatchOptions`) chooses the engine (``engine="ray"``,
    ``workers`` …).

    Returns:
        as ``nnunetv2_cam``: a list with one array per successful case (in case order), in the
        original image's array order (``(z, y, x)`` for SimpleITK-read images), of shape
        ``(1, *S)`` for an ``int`` ``target_class``; ``(T, *S)`` for a list of ``T`` classes (an
        extension). Unlike ``nnunetv2_cam`` (float16, values up to 1.3 from its ×1.3 scaling), the
        maps are float32 in [0, 1].
    """
    batch = segment_and_explain(
        predictor,
        input_files,
        output_folder,
        target_layer,
        target_class,
        method,
        target=target,
        cam_type=cam_type,
        mask_files=mask_files,
        prev_stage_predictions=prev_stage_predictions,
        pool_size=pool_size,
        pool_mode=pool_mode,
        save_segmentation=save_segmentation,
        save_slices=save_slices,
        save_numpy=save_numpy,
        tile_step_size=tile_step_size,
        use_mirroring=use_mirroring,
        device=device,
        continue_on_error=continue_on_error,
        progress=verbose if progress is None else progress,
        verbose=verbose,
        trust_checkpoint=trust_checkpoint,
        keep_maps=True,
        overwrite=overwrite,
        options=options,
    )
    if failures is not None:
        failures.extend((f.identifier, f.error) for f in batch.failures)
    # CaseResult.maps is (T, *S) float32 in [0, 1]: for one int class T = 1, nnunetv2_cam's (1, *S)
    return [np.ascontiguousarray(r.maps, dtype=np.float32) for r in batch.results if r.maps is not None]
