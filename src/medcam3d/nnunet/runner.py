"""The CAM runner: one case through nnU-Net's preprocessing, the patch engine and nnU-Net's export.

Every forward pass of a (patch, fold, mirror) serves both the segmentation (its logits are
accumulated exactly as nnU-Net does, :class:`~medcam3d.nnunet.engine.LogitAccumulator`) and the
CAM (raw maps, Gaussian-weighted in float32, normalised once at the end). nnU-Net's own prediction
functions run under ``torch.inference_mode``, where no gradient can be taken, so only the loop
around its helpers is re-implemented.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medcam3d._atomic import atomic_path
from medcam3d.batch.cases import check_case_names
from medcam3d.errors import ConfigurationError, InputFileError, TargetError
from medcam3d.nnunet.engine import NnUNetSlidingWindow, fold_logits_and_maps
from medcam3d.nnunet.files import (
    Case,
    verify_segmentation_file,
    write_float_map,
    write_npy,
    writer_errors,
)
from medcam3d.nnunet.loading import ModelInfo, cascade_error, import_nnunet, plain_network
from medcam3d.sliding import SlidingFinerTarget, SlidingSegmentationTarget, normalize_maps

__all__ = ["CaseResult", "NnUNetCAM", "TargetMode", "method_file_name"]

TargetMode = Literal["prediction", "channel", "mask"]

_FINER_TARGET_OPTIONS = ("alpha", "comparison_categories", "comparison_ranks")

logger = logging.getLogger(__name__)


def method_file_name(method: str | type) -> str:
    """The method's part of the output names (``<case>_<method>_class<k>``): the name as given, or
    the class name in lower case."""
    return method if isinstance(method, str) else getattr(method, "__name__", "cam").lower()


@dataclass
class CaseResult:
    """What one case produced: maps ``(T, *S)`` in the original image's array order and geometry
    (float32 in [0, 1]), the segmentation ``(*S)``, and the written files.

    ``maps`` and ``segmentation`` are ``None`` where they are not held in memory
    (``segment_and_explain(..., keep_maps=False)``, or a case finished before whose files do not
    hold them); ``skipped`` marks a case finished by an earlier run (read back from its files)."""

    identifier: str
    maps: np.ndarray | None
    segmentation: np.ndarray | None
    target_classes: list[int]
    files: list[Path] = field(default_factory=list)
    skipped: bool = False


class NnUNetCAM:
    """CAMs for an nnU-Net v2 model, for repeated use over many cases.

    Args:
        predictor: an initialised ``nnUNetPredictor`` (see :func:`~medcam3d.nnunet.load_predictor`).
        target_layers: dotted layer name(s), e.g. ``"encoder.stages.4"``; ``_orig_mod.`` prefixes
            of compiled models are ignored.
        method: a registered method name (``medcam3d.available_methods()``) or a method class
            (anything whose instances are :class:`~medcam3d.core.protocol.CAMMethod`).
        target_classes: class index or indices (each must be a channel of the network output).
        target: ``"prediction"`` (class logit over the voxels each patch predicts as the class,
            Seg-Grad-CAM, default), ``"channel"`` (the whole class channel) or ``"mask"`` (the
            non-zero voxels of a mask file per case, e.g. ground truth, in the image's geometry; a
            label map selects the voxels of value ``k``, a binary mask (values 0 and 1) serves
            every class).
            With ``method="finercam"`` the same regions hold FinerCAM's comparison score
            (:class:`~medcam3d.sliding.SlidingFinerTarget`: the class against its most similar
            classes, voxel by voxel).
        cam_type: ``"3d"`` normalises over the volume, ``"2d"`` per slice along the first array
            axis of the original image (axial for SimpleITK-read images).
        tile_step_size, use_mirroring: default to the predictor's settings.
        method_kwargs: extra keyword arguments for the method (``pool_size``, ``pool_mode`` …);
            for FinerCAM, ``alpha``, ``comparison_categories`` and ``comparison_ranks`` go to its
            target instead.
        progress: tqdm bars over patches.
    """

    def __init__(
        self,
        predictor: Any,
        target_layers: str | Sequence[str],
        method: str | type = "gradcam",
        target_classes: int | Sequence[int] = 1,
        target: TargetMode = "prediction",
        cam_type: Literal["2d", "3d"] = "3d",
        tile_step_size: float | None = None,
        use_mirroring: bool | None = None,
        method_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        import_nnunet()
        from medcam3d.core.layers import resolve_layers
        from medcam3d.methods.finer import FinerCAM
        from medcam3d.methods.registry import get_method

        self.info = ModelInfo.from_predictor(predictor)
        if cam_type not in ("2d", "3d"):
            raise ConfigurationError(f"cam_type must be '2d' or '3d', got {cam_type!r}.")
        if target not in ("prediction", "channel", "mask"):
            raise ConfigurationError(f"target must be 'prediction', 'channel' or 'mask', got {target!r}.")
        self.predictor = predictor
        self.network = plain_network(predictor)
        layer_names = [target_layers] if isinstance(target_layers, str) else list(target_layers)
        self.layers = resolve_layers(self.network, layer_names)
        self.method_class = get_method(method) if isinstance(method, str) else method
        self.method_name = method_file_name(method)
        self.target_classes = self._check_classes(target_classes)
        self.target = target
        self.cam_type = cam_type
        from medcam3d.nnunet.batch import check_step_size

        check_step_size(tile_step_size)
        self.tile_step_size = predictor.tile_step_size if tile_step_size is None else float(tile_step_size)
        self.use_mirroring = predictor.use_mirroring if use_mirroring is None else bool(use_mirroring)
        self.method_kwargs = dict(method_kwargs or {})
        self.finer = isinstance(self.method_class, type) and issubclass(self.method_class, FinerCAM)
        self.finer_options = (
            {k: self.method_kwargs.pop(k) for k in _FINER_TARGET_OPTIONS if k in self.method_kwargs}
            if self.finer
            else {}
        )
        self.progress = progress
        self._make_cam()  # options the method does not take fail here, before any case runs
        self.label_manager = predictor.label_manager
        self.cascaded = self.info.previous_stage is not None
        self.file_ending: str = self.info.file_ending
        self.num_channels = self.info.num_channels

    def _check_classes(self, target_classes: int | Sequence[int]) -> list[int]:
        classes = [target_classes] if isinstance(target_classes, (int, np.integer)) else list(target_classes)
        if not classes:
            raise TargetError("Give at least one target class.")
        heads = self.info.label_manager.num_segmentation_heads
        for k in classes:
            if not isinstance(k, (int, np.integer)) or not 0 <= int(k) < heads:
                raise TargetError(
                    f"Target class {k!r} is not one of the model's classes: {self.info.label_names()}. Pass one of "
                    f"0..{heads - 1} (--target-class)."
                )
        return [int(k) for k in classes]

    # -------------------------------------------------------------- the CAM method and its targets
    def _make_cam(self) -> Any:
        kwargs = dict(self.method_kwargs)
        # the network is put in eval mode once per case (predict_preprocessed); not once per patch
        kwargs.setdefault("eval_mode", False)
        layers = [m for _, m in self.layers]
        try:
            return self.method_class(self.network, layers, **kwargs)
        except TypeError:
            kwargs.pop("eval_mode")
        try:
            return self.method_class(self.network, layers, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"The method {self.method_name!r} does not take the options {sorted(self.method_kwargs)}: {exc}"
            ) from exc

    @staticmethod
    def mask_region(mask: np.ndarray, k: int) -> np.ndarray:
        """The voxels of ``mask`` that count for class ``k``: those of value ``k`` where there are any
        (``k`` > 0); otherwise every non-zero voxel for a binary mask (values 0 and 1 only, which
        serves every class), and none for a label map without ``k`` (its map is all zero, and
        :meth:`run_case` warns)."""
        selected = mask == k
        if k != 0 and selected.any():
            return selected
        if k == 0 or not np.any(mask > 1):
            return mask > 0
        return np.zeros(mask.shape, dtype=bool)

    def _targets(self, mask: np.ndarray | None) -> list[SlidingSegmentationTarget]:
        def one(k: int) -> SlidingSegmentationTarget:
            region: dict[str, Any] = {}
            if mask is not None:
                region["mask"] = self.mask_region(mask, k)
            elif self.target == "channel":
                region["whole_channel"] = True
            if self.finer:
                return SlidingFinerTarget(k, **region, **self.finer_options)
            return SlidingSegmentationTarget(k, **region)

        return [one(k) for k in self.target_classes]

    def warn_empty_maps(
        self,
        identifier: str,
        maps: np.ndarray,
        segmentation: np.ndarray,
        mask: np.ndarray | None = None,
        mask_file: str | None = None,
    ) -> list[int]:
        """Log a warning for each target class whose map ``maps[t]`` is all zero, naming the case, the
        class and the likely cause (an empty mask, a class predicted nowhere); returns those classes."""
        empty: list[int] = []
        for t, k in enumerate(self.target_classes):
            if np.any(maps[t] > 0):
                continue
            empty.append(k)
            if mask is not None and not self.mask_region(mask, k).any():
                present = sorted(int(v) for v in np.unique(mask) if v != 0)
                its_mask = f"its mask {mask_file}" if mask_file else "its mask"
                cause = (
                    f"{its_mask} is empty (after nnU-Net's cropping and resampling)"
                    if not present
                    else f"{its_mask} has no voxel of label {k} (labels present: {', '.join(map(str, present))})"
                )
                advice = "give a mask with voxels of that class"
            elif self.target == "prediction" and not np.any(segmentation == k):
                cause = (
                    f"class {k} is predicted nowhere in it (target 'prediction' counts the predicted voxels)"
                )
                advice = (
                    "use --target channel (target='channel') to explain the class logit over the whole image"
                )
            else:
                cause = "the class score's gradients at the target layer are zero everywhere"
                advice = "try another --target-layer or --method"
            logger.warning(
                "Case %s, class %d: the %s map is all zero because %s; %s.",
                identifier,
                k,
                self.method_name,
                cause,
                advice,
            )
        return empty

    # -------------------------------------------------------------- preprocessing
    def preprocess(
        self, files: Sequence[str], mask_file: str | None = None, prev_stage_file: str | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None, dict[str, Any]]:
        """nnU-Net's preprocessing of one case, in-process: ``(data (C, *S_pre), mask (*S_pre) | None,
        properties)``. The mask file is transposed, cropped and resampled with the image."""
        from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

        if self.cascaded and prev_stage_file is None:
            assert self.info.previous_stage is not None
            raise cascade_error(self.info.name, self.info.previous_stage)
        p = self.predictor
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        try:
            data, seg, properties = preprocessor.run_case(
                list(files), prev_stage_file, p.plans_manager, p.configuration_manager, p.dataset_json
            )
        except Exception as exc:  # nnU-Net's readers raise many kinds of errors
            raise InputFileError(
                f"Cannot read or preprocess {list(files)}: {type(exc).__name__}: {exc}"
            ) from exc
        mask = None
        if self.cascaded:
            onehot = convert_labelmap_to_one_hot(seg[0], self.label_manager.foreground_labels, data.dtype)
            data = np.vstack((data, onehot))
        if mask_file is not None:
            try:
                _, mseg, _ = preprocessor.run_case(
                    list(files), mask_file, p.plans_manager, p.configuration_manager, p.dataset_json
                )
            except Exception as exc:
                raise InputFileError(
                    f"Cannot use mask {mask_file} with {list(files)}: {type(exc).__name__}: {exc}"
                ) from exc
            mask = mseg[0]
        return torch.from_numpy(np.ascontiguousarray(data)), mask, properties

    # -------------------------------------------------------------- prediction + CAM
    def predict_preprocessed(
        self, data: torch.Tensor, mask: np.ndarray | None = None, description: str | None = None
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Sliding window over ``data`` ``(C, *S_pre)`` for every fold.

        Returns ``(logits, raw_maps)``: the logits ``(heads, *S_pre)`` as float16 numpy exactly as
        ``nnUNetPredictor.predict_logits_from_preprocessed_data`` returns them, and the raw
        Gaussian-weighted mean maps ``(T, *S_pre)`` (float32, not normalised).
        """
        from nnunetv2.configuration import default_num_processes

        p = self.predictor
        device = p.device
        self.network.to(device)
        self.network.eval()
        engine = NnUNetSlidingWindow(
            self._make_cam(),
            tuple(int(s) for s in p.configuration_manager.patch_size),
            step_size=self.tile_step_size,
            mirror_axes=p.allowed_mirroring_axes if self.use_mirroring else None,
            use_gaussian=bool(getattr(p, "use_gaussian", True)),
            progress=self.progress,
            autocast=device.type == "cuda",
        )
        n_threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, n_threads))
        try:
            logits, raw = fold_logits_and_maps(
                engine,
                self.network,  # also for compiled models (the _orig_mod inside)
                p.list_of_parameters,
                data,
                self._targets(mask),
                self.label_manager.num_segmentation_heads,
                description=description or "patches",
            )
        finally:
            torch.set_num_threads(n_threads)
        return logits.detach().numpy(), raw

    # -------------------------------------------------------------- back to the original image
    def maps_to_original(self, raw_maps: torch.Tensor | np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """Raw maps ``(T, *S_pre)`` → ``(T, *S_orig)`` float32 in the original array order.

        Resampled with the configuration's probability resampling (transposed spacing, as
        nnU-Net's export), reinserted into the uncropped shape with zeros, transposed back, then
        normalised once (over the volume for cam_type '3d', per slice along axis 0 for '2d').
        """
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        p = self.predictor
        plans, configuration = p.plans_manager, p.configuration_manager
        maps = (
            raw_maps.detach().to("cpu", torch.float32).numpy()
            if isinstance(raw_maps, torch.Tensor)
            else raw_maps
        )
        shape_after_crop = properties["shape_after_cropping_and_before_resampling"]
        spacing_transposed = [properties["spacing"][i] for i in plans.transpose_forward]
        current_spacing = (
            configuration.spacing
            if len(configuration.spacing) == len(shape_after_crop)
            else [spacing_transposed[0], *configuration.spacing]
        )
        resampled = configuration.resampling_fn_probabilities(
            maps, shape_after_crop, current_spacing, spacing_transposed
        )
        if isinstance(resampled, torch.Tensor):
            resampled = resampled.cpu().numpy()
        resampled = np.asarray(resampled, dtype=np.float32)
        full = np.zeros((maps.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
        full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
        full = np.ascontiguousarray(full.transpose([0] + [i + 1 for i in plans.transpose_backward]))
        full = np.clip(full, 0.0, None)
        normalized = normalize_maps(torch.from_numpy(full), "volume" if self.cam_type == "3d" else "slice")
        return normalized.numpy().astype(np.float32)

    def segmentation_to_original(self, logits: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """nnU-Net's own conversion of logits to the segmentation in the original geometry."""
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self.predictor
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, self.label_manager, properties, False
        )

    # -------------------------------------------------------------- one case, end to end
    def output_names(self, identifier: str) -> list[str]:
        """The map files of a case: ``<case>_<method>_class<k><ending>`` per target class."""
        return [f"{identifier}_{self.method_name}_class{k}{self.file_ending}" for k in self.target_classes]

    def run_case(
        self,
        case: Case,
        output_folder: str | os.PathLike[str] | None,
        mask_file: str | None = None,
        prev_stage_file: str | None = None,
        save_segmentation: bool = True,
        save_maps: bool = True,
        save_slices: bool = True,
        save_numpy: bool = False,
    ) -> CaseResult:
        """Preprocess, predict with CAM, export: :meth:`preprocess` then :meth:`finish_case`. Files
        appear only once everything is computed, and a case that fails while writing leaves none."""
        if self.target == "mask" and mask_file is None:
            raise ConfigurationError(f"target='mask' needs a mask file for case {case.identifier!r}.")
        if output_folder is not None:
            check_case_names([case])
        data, mask, properties = self.preprocess(case.files, mask_file, prev_stage_file)
        return self.finish_case(
            case,
            data,
            mask,
            properties,
            output_folder,
            mask_file=mask_file,
            save_segmentation=save_segmentation,
            save_maps=save_maps,
            save_slices=save_slices,
            save_numpy=save_numpy,
        )

    def finish_case(
        self,
        case: Case,
        data: torch.Tensor,
        mask: np.ndarray | None,
        properties: dict[str, Any],
        output_folder: str | os.PathLike[str] | None,
        mask_file: str | None = None,
        save_segmentation: bool = True,
        save_maps: bool = True,
        save_slices: bool = True,
        save_numpy: bool = False,
    ) -> CaseResult:
        """The compute half of :meth:`run_case` on what :meth:`preprocess` returned: the sliding
        window over every fold, the segmentation and the maps in the original geometry, and the
        files (:meth:`write_outputs`; none is left for a case that fails while writing)."""
        logits, raw = self.predict_preprocessed(data, mask, description=case.identifier)
        del data
        segmentation = self.segmentation_to_original(logits, properties)
        del logits
        maps = self.maps_to_original(raw, properties)
        del raw
        self.warn_empty_maps(case.identifier, maps, segmentation, mask, mask_file)
        result = CaseResult(case.identifier, maps, segmentation, list(self.target_classes))
        if output_folder is None:
            return result
        try:
            self.write_outputs(
                case,
                result,
                Path(output_folder),
                properties,
                save_segmentation=save_segmentation,
                save_maps=save_maps,
                save_numpy=save_numpy,
                save_slices=save_slices,
            )
        except BaseException:
            for path in result.files:  # no partial output for a failed case
                path.unlink(missing_ok=True)
            if save_slices:  # the PNG folders, if the failed case left them empty
                png_folder = Path(output_folder) / self.method_name / case.identifier
                for folder in (png_folder, png_folder.parent):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
            raise
        return result

    def write_outputs(
        self,
        case: Case,
        result: CaseResult,
        out: Path,
        properties: dict[str, Any],
        *,
        save_segmentation: bool = True,
        save_maps: bool = True,
        save_numpy: bool = False,
        save_slices: bool = True,
    ) -> None:
        """Write the files of ``result`` into ``out`` (replacing files of the same name).

        Every file is written through :func:`~medcam3d._atomic.atomic_path` and read back before
        it takes its final name; ``result.files`` lists each one as soon as it is in place:
        ``<case><ending>`` (the segmentation, as ``nnUNetv2_predict``), one float map
        ``<case>_<method>_class<k><ending>`` per class, ``<case>_<method>_class<k>.npy``, and the PNG
        overlays ``<method>/<case>/class<k>_slice_NNN.png``.
        """
        segmentation, maps = result.segmentation, result.maps
        if segmentation is None or maps is None:
            raise ValueError(f"the result of case {case.identifier} holds no maps to write")
        rw = self.info.reader_writer_class()
        if save_segmentation:
            seg_path = out / f"{case.identifier}{self.file_ending}"
            expected = np.asarray(segmentation)

            def verify(tmp: Path) -> None:
                verify_segmentation_file(tmp, expected, properties, rw)

            with atomic_path(seg_path, verify=verify) as tmp, writer_errors(seg_path):
                rw.write_seg(segmentation, str(tmp), properties)
            result.files.append(seg_path)
        if save_maps:
            for k, name in enumerate(self.output_names(case.identifier)):
                result.files.append(write_float_map(maps[k], out / name, properties, rw))
        if save_numpy:
            for k, cls in enumerate(self.target_classes):
                npy = out / f"{case.identifier}_{self.method_name}_class{cls}.npy"
                result.files.append(write_npy(npy, maps[k]))
        if save_slices:
            self._save_slices(case, maps, out, result.files, segmentation)

    def _save_slices(
        self, case: Case, maps: np.ndarray, out: Path, written: list[Path], segmentation: np.ndarray
    ) -> None:
        """One PNG per axial slice and class: the map over the first channel, with the outline of
        the predicted segmentation (every label) drawn on top."""
        from medcam3d.viz import save_slice_pngs

        image, _ = self.info.reader_writer_class().read_images([case.files[0]])
        image = np.asarray(image[0], dtype=np.float32)
        folder = out / self.method_name / case.identifier
        for k, cls in enumerate(self.target_classes):
            cam = maps[k]
            if image.shape != cam.shape:  # pragma: no cover - same reader, same geometry
                raise RuntimeError(f"image {image.shape} and map {cam.shape} differ")
            # each PNG is written atomically and compared byte for byte before its rename
            written.extend(
                save_slice_pngs(
                    image,
                    cam,
                    folder,
                    axis=0,
                    prefix=f"class{cls}_slice",
                    overwrite=True,
                    mask=segmentation if np.shape(segmentation) == image.shape else None,
                )
            )
