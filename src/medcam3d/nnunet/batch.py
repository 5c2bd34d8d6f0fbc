"""The front door: segment and explain a set of cases, every check once, before any heavy work.

:func:`segment_and_explain` is the one function behind ``medcam3d nnunet`` and
:func:`run_cam_for_prediction` (``nnunetv2_cam``'s Python function): it takes a trained model
folder (loaded only after the cheap checks) or an initialised ``nnUNetPredictor``, checks the
inputs, options and output folder, runs every case, and returns a :class:`BatchResult` with the
results of the cases that succeeded and the errors of those that failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from medcam3d._atomic import check_writable_dir
from medcam3d.errors import ConfigurationError, require_extra
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
    load_predictor,
    resolve_device,
)
from medcam3d.nnunet.runner import CaseResult, NnUNetCAM, TargetMode

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
        cases: every case of the input, in the order they ran (sorted by identifier).
        results: one :class:`~medcam3d.nnunet.runner.CaseResult` per case that succeeded, in order.
        failures: one :class:`CaseFailure` per case that failed (only with ``continue_on_error``).
        output_folder: where the files went (``None``: nothing was written).
    """

    cases: list[Case]
    results: list[CaseResult] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    output_folder: Path | None = None

    @property
    def ok(self) -> bool:
        """Every case succeeded."""
        return not self.failures


def segxres_kwargs(method: str | type, pool_size: int | None, pool_mode: str) -> dict[str, Any]:
    """The Seg-XRes-CAM options (``--pool-size``, ``--pool-mode``) as method keyword arguments."""
    name = method if isinstance(method, str) else getattr(method, "__name__", "")
    if pool_size is not None or name.lower() == "segxrescam":
        return {"pool_size": pool_size, "pool_mode": pool_mode}
    return {}


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
            :attr:`BatchResult.failures`, and the others go on (``False``: the error is raised).
        progress: tqdm bars over cases and patches. verbose: nnU-Net's own messages when loading.

    Before the checkpoints are loaded and before anything is written, it refuses (with an error
    from :mod:`medcam3d.errors`): a missing model folder, fold or checkpoint; inputs that do not
    group into cases of the model's channels; case names that cannot name output files or that
    repeat (:func:`~medcam3d.nnunet.files.check_case_names`); unreadable images; masks or
    previous-stage segmentations that are missing; a cascade stage without
    ``prev_stage_predictions``; a reader-writer that cannot write float maps; PNGs without
    matplotlib. Layers and classes are checked once the network is loaded, the output folder
    last, still before the first case runs.
    """
    import_nnunet()
    if target not in ("prediction", "channel", "mask"):
        raise ConfigurationError(f"target must be 'prediction', 'channel' or 'mask', got {target!r}.")
    if target == "mask" and not mask_files:
        raise ConfigurationError(
            "target='mask' needs mask_files (--masks FOLDER): one mask per case, e.g. the ground truth."
        )
    if isinstance(model, (str, os.PathLike)):
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
    if output_folder is not None:
        if save_maps:
            check_map_writer(info.reader_writer_class)
        if save_slices:
            require_extra("matplotlib", "viz", "PNG overlays (or pass save_slices=False / --no-save-slices)")

    if isinstance(model, (str, os.PathLike)):
        predictor = load_predictor(
            model,
            folds=fold_list,
            checkpoint_name=checkpoint_name,
            device=resolve_device("cpu" if device is None else device),
            tile_step_size=0.5 if tile_step_size is None else tile_step_size,
            use_mirroring=True if use_mirroring is None else use_mirroring,
            verbose=verbose,
        )
        info = ModelInfo.from_predictor(predictor)  # the configuration the checkpoints name
        if info.previous_stage is not None and prev_stage_predictions is None:
            raise cascade_error(Path(model).name, info.previous_stage)
    else:
        predictor = model
        if device is not None:
            predictor.device = resolve_device(device)
    runner = NnUNetCAM(
        predictor,
        target_layer,
        method=method,
        target_classes=target_class,
        target=target,
        cam_type=cam_type,
        tile_step_size=tile_step_size,
        use_mirroring=use_mirroring,
        method_kwargs={**segxres_kwargs(method, pool_size, pool_mode), **(method_kwargs or {})},
        progress=progress,
    )
    prev = match_prev_stage(cases, prev_stage_predictions, info.file_ending) if runner.cascaded else {}
    out = None if output_folder is None else check_writable_dir(output_folder)
    from tqdm.auto import tqdm

    batch = BatchResult(cases, output_folder=out)
    for case in tqdm(cases, desc="cases", disable=not progress):
        try:
            result = runner.run_case(
                case,
                out,
                mask_file=masks.get(case.identifier),
                prev_stage_file=prev.get(case.identifier),
                save_segmentation=save_segmentation,
                save_maps=save_maps,
                save_slices=save_slices,
                save_numpy=save_numpy,
            )
        except Exception as exc:
            if not continue_on_error:
                raise
            logger.error("Case %s failed: %s: %s", case.identifier, type(exc).__name__, exc)
            batch.failures.append(CaseFailure(case.identifier, f"{type(exc).__name__}: {exc}"))
            continue
        logger.debug("%s: wrote %d files", case.identifier, len(result.files))
        batch.results.append(result)
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
) -> list[np.ndarray]:
    """Segment and explain every case of ``input_files`` with one forward per (patch, fold, mirror).

    Accepts every parameter of ``nnunetv2_cam.run_cam_for_prediction`` with the same meaning
    (``device`` moves the predictor's network when given, falling back to the CPU with a warning;
    ``cam_type`` defaults to ``'3d'``). A thin wrapper of :func:`segment_and_explain`, which
    returns the failures too; ``failures``, when given, receives ``(case, "ErrorType: message")``
    for each case that failed with ``continue_on_error=True``.

    Writes per case ``<case><ending>`` (the segmentation, as ``nnUNetv2_predict``), one float map
    ``<case>_<method>_class<k><ending>`` per target class with the input's geometry, PNG overlays
    under ``<output_folder>/<method>/<case>/`` and optionally ``.npy`` maps.

    Returns one array per successful case, in the original image's array order: ``(*S)`` when
    ``target_class`` is an int, ``(T, *S)`` for a list of classes. ``output_folder=None`` writes
    nothing and only returns the maps.
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
    )
    if failures is not None:
        failures.extend((f.identifier, f.error) for f in batch.failures)
    single = isinstance(target_class, (int, np.integer))
    return [r.maps[0] if single else r.maps for r in batch.results]
