"""CAMs for trained nnU-Net v2 models, computed in the same forward passes as the prediction.

The loop reuses nnU-Net's own helpers (``nnUNetPredictor`` for loading, the configuration's
preprocessor, ``compute_steps_for_sliding_window``, ``compute_gaussian``, ``pad_nd_image``, the
resampling functions, ``convert_predicted_logits_to_segmentation_with_correct_shape`` and the
dataset's reader-writer) and re-implements only the loop around them, because nnU-Net's own
prediction functions run under ``torch.inference_mode``, where no gradient can be taken.

Every forward pass of a (patch, fold, mirror) serves both the segmentation (its logits are
accumulated exactly as nnU-Net does: Gaussian-weighted, in half precision, mirrored outputs
averaged first) and the CAM (raw maps, Gaussian-weighted in float32, normalised once at the end).
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

from medcam3d.errors import (
    ConfigurationError,
    InputFileError,
    OutputPathError,
    TargetError,
    require_extra,
)
from medcam3d.nnunet.files import Case, check_map_writer, check_readable, group_input_files, write_float_map
from medcam3d.sliding import (
    SlidingSegmentationTarget,
    SlidingState,
    SlidingWindowCAM,
    normalize_maps,
)

__all__ = [
    "NnUNetCAM",
    "CaseResult",
    "TargetMode",
    "previous_stage_of",
    "run_cam_for_prediction",
    "suggested_layers",
]

logger = logging.getLogger(__name__)

TargetMode = Literal["prediction", "channel", "mask"]


def _import_nnunet() -> Any:
    return require_extra("nnunetv2", "nnunet", "the nnU-Net integration")


# ------------------------------------------------------------------------------ loading
def load_predictor(
    model_folder: str | os.PathLike[str],
    folds: Sequence[int | str] | None = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    device: str | torch.device = "cpu",
    tile_step_size: float = 0.5,
    use_mirroring: bool = True,
    verbose: bool = False,
) -> Any:
    """Load a trained model folder with nnU-Net's own ``nnUNetPredictor``.

    Missing folders, folds and checkpoints raise :class:`ConfigurationError` naming what exists.
    ``folds=None`` uses every ``fold_*`` folder holding ``checkpoint_name``.
    """
    _import_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = Path(model_folder)
    if not folder.is_dir():
        raise ConfigurationError(
            f"Model folder {folder} does not exist. Pass the trained model folder, e.g. "
            "$nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres."
        )
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise ConfigurationError(
                f"Model folder {folder} has no {required}: it is not a trained nnU-Net v2 model folder."
            )
    available = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    if folds is None:
        folds = [p[len("fold_") :] for p in available if (folder / p / checkpoint_name).is_file()]
        if not folds:
            raise ConfigurationError(
                f"No fold folder of {folder} holds {checkpoint_name} (folders: {available})."
            )
    fold_list = [f if str(f) == "all" else int(f) for f in folds]
    for f in fold_list:
        fold_dir = folder / f"fold_{f}"
        if not fold_dir.is_dir():
            raise ConfigurationError(
                f"Fold {f} does not exist in {folder}. Available folds: "
                f"{', '.join(a[len('fold_') :] for a in available) or 'none'}."
            )
        if not (fold_dir / checkpoint_name).is_file():
            present = sorted(p.name for p in fold_dir.glob("*.pth"))
            raise ConfigurationError(
                f"Checkpoint {checkpoint_name} not found in {fold_dir}. Present: {', '.join(present) or 'none'} "
                "(choose one with -chk / checkpoint_name)."
            )
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device 'cuda' was requested but CUDA is not available. Use -device cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError("device 'mps' was requested but MPS is not available. Use -device cpu.")
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=dev.type == "cuda",
        device=dev,
        verbose=verbose,
        verbose_preprocessing=False,
        allow_tqdm=verbose,
    )
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=tuple(fold_list), checkpoint_name=checkpoint_name
    )
    return predictor


def previous_stage_of(model_folder: str | os.PathLike[str]) -> str | None:
    """The previous cascade stage of a model folder (e.g. ``"3d_lowres"`` for a
    ``…__3d_cascade_fullres`` folder), read from its ``plans.json`` without loading any checkpoint;
    ``None`` when it is no cascade stage or the folder name does not follow nnU-Net's
    ``Trainer__Plans__Configuration`` pattern (the loaded predictor is checked again later)."""
    _import_nnunet()
    from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    try:
        _, _, configuration = convert_identifier_to_trainer_plans_config(folder.name)
        plans = PlansManager(str(folder / "plans.json"))
        name = plans.get_configuration(configuration).previous_stage_name
    except Exception:  # not nnU-Net's folder pattern, or an unknown configuration: leave it to the loader
        return None
    return None if name is None else str(name)


def _plain_network(predictor: Any) -> torch.nn.Module:
    net = predictor.network
    return getattr(net, "_orig_mod", net)


def suggested_layers(network: torch.nn.Module) -> dict[str, str]:
    """Sensible target layers of an nnU-Net network (PlainConvUNet, ResidualEncoderUNet):
    ``{name: why}`` for the bottleneck (last encoder stage) and the last decoder stage.

    Block outputs are suggested (not the in-place LeakyReLU inside them, whose output tensor is
    modified in place).
    """
    net = getattr(network, "_orig_mod", network)
    names = {n for n, _ in net.named_modules()}
    out: dict[str, str] = {}
    encoder = getattr(net, "encoder", None)
    stages = getattr(encoder, "stages", None)
    if stages is not None and len(stages) > 0:
        out[f"encoder.stages.{len(stages) - 1}"] = "bottleneck (last encoder stage): coarse, most semantic"
    decoder = getattr(net, "decoder", None)
    dstages = getattr(decoder, "stages", None)
    if dstages is not None and len(dstages) > 0:
        out[f"decoder.stages.{len(dstages) - 1}"] = "last decoder stage: full resolution, sharp"
        if len(dstages) > 1:
            out[f"decoder.stages.{len(dstages) - 2}"] = "second-to-last decoder stage: half resolution"
    return {k: v for k, v in out.items() if k in names}


# ------------------------------------------------------------------------------ the loop
class _NnUNetSliding(SlidingWindowCAM):
    """The generic engine with nnU-Net's geometry, Gaussian, padding and logit accumulation."""

    def __init__(self, *args: Any, num_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_heads = num_heads

    def pad_volume(self, volume: torch.Tensor, pad: list[tuple[int, int]]) -> torch.Tensor:
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        padded, _ = pad_nd_image(volume, self.patch_size, "constant", {"value": 0}, True, None)
        expected = tuple(s + a + b for s, (a, b) in zip(volume.shape[1:], pad))
        if tuple(padded.shape[1:]) != expected:  # pragma: no cover - same rule on both sides
            raise RuntimeError(
                f"Padding mismatch: nnU-Net padded to {tuple(padded.shape)}, expected {expected}."
            )
        return padded

    def start_fold(self, state: SlidingState) -> None:
        device = state.map_sum.device
        shape = tuple(state.weight.shape)
        state.extra["logits"] = torch.zeros((self.num_heads, *shape), dtype=torch.half, device=device)
        state.extra["n_predictions"] = torch.zeros(shape, dtype=torch.half, device=device)

    def on_patch_outputs(
        self,
        state: SlidingState,
        info_slicer: tuple[slice | int, ...],
        outputs: list[torch.Tensor],
        importance: torch.Tensor,
    ) -> None:
        # nnU-Net's arithmetic, step by step: mirrored outputs summed then divided, multiplied by
        # the (half) Gaussian, added into half-precision accumulators.
        prediction = outputs[0].clone()
        for extra in outputs[1:]:
            prediction += extra
        if len(outputs) > 1:
            prediction /= len(outputs)
        gaussian = state.extra["gaussian"]
        prediction *= gaussian
        state.extra["logits"][info_slicer] += prediction
        state.extra["n_predictions"][info_slicer[1:]] += gaussian

    def end_fold(self, state: SlidingState) -> torch.Tensor:
        logits = state.extra.pop("logits")
        n_predictions = state.extra.pop("n_predictions")
        torch.div(logits, n_predictions, out=logits)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("Encountered inf in the accumulated logits (as nnU-Net would).")
        return logits[(slice(None), *state.crop)]


@dataclass
class CaseResult:
    """What one case produced: maps ``(T, *S)`` in the original image's array order and geometry
    (float32 in [0, 1]), the segmentation ``(*S)``, and the written files."""

    identifier: str
    maps: np.ndarray
    segmentation: np.ndarray
    target_classes: list[int]
    files: list[Path] = field(default_factory=list)


class NnUNetCAM:
    """CAMs for an nnU-Net v2 model, for repeated use over many cases.

    Args:
        predictor: an initialised ``nnUNetPredictor`` (see :func:`load_predictor`).
        target_layers: dotted layer name(s), e.g. ``"encoder.stages.4"``; ``_orig_mod.`` prefixes
            of compiled models are ignored.
        method: a registered method name (``medcam3d.available_methods()``) or a method class.
        target_classes: class index or indices (each must be a channel of the network output).
        target: ``"prediction"`` (class logit over the voxels each patch predicts as the class,
            Seg-Grad-CAM, default), ``"channel"`` (the whole class channel) or ``"mask"`` (the
            non-zero voxels of a mask file per case, e.g. ground truth, in the image's geometry).
        cam_type: ``"3d"`` normalises over the volume, ``"2d"`` per slice along the first array
            axis of the original image (axial for SimpleITK-read images).
        tile_step_size, use_mirroring: default to the predictor's settings.
        method_kwargs: extra keyword arguments for the method (``pool_size``, ``pool_mode`` …).
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
        _import_nnunet()
        from medcam3d.core.layers import resolve_layers
        from medcam3d.methods.registry import get_method

        if (
            getattr(predictor, "network", None) is None
            or getattr(predictor, "list_of_parameters", None) is None
        ):
            raise ConfigurationError(
                "The predictor is not initialised: call predictor.initialize_from_trained_model_folder(...) first "
                "(or use medcam3d.nnunet.load_predictor)."
            )
        if cam_type not in ("2d", "3d"):
            raise ConfigurationError(f"cam_type must be '2d' or '3d', got {cam_type!r}.")
        if target not in ("prediction", "channel", "mask"):
            raise ConfigurationError(f"target must be 'prediction', 'channel' or 'mask', got {target!r}.")
        self.predictor = predictor
        self.network = _plain_network(predictor)
        layer_names = [target_layers] if isinstance(target_layers, str) else list(target_layers)
        self.layers = resolve_layers(self.network, layer_names)
        self.method_class = get_method(method) if isinstance(method, str) else method
        self.method_name = method if isinstance(method, str) else getattr(method, "__name__", "cam").lower()
        classes = [target_classes] if isinstance(target_classes, (int, np.integer)) else list(target_classes)
        if not classes:
            raise TargetError("Give at least one target class.")
        self.label_manager = predictor.label_manager
        heads = self.label_manager.num_segmentation_heads
        for k in classes:
            if not isinstance(k, (int, np.integer)) or not 0 <= int(k) < heads:
                labels = self._label_names()
                raise TargetError(
                    f"Target class {k!r} is not one of the model's classes: {labels}. Pass one of "
                    f"0..{heads - 1} (--target-class)."
                )
        self.target_classes = [int(k) for k in classes]
        self.target = target
        self.cam_type = cam_type
        self.tile_step_size = predictor.tile_step_size if tile_step_size is None else float(tile_step_size)
        self.use_mirroring = predictor.use_mirroring if use_mirroring is None else bool(use_mirroring)
        self.method_kwargs = dict(method_kwargs or {})
        self.progress = progress
        configuration = predictor.configuration_manager
        if configuration.previous_stage_name is not None:
            self.cascaded = True
        else:
            self.cascaded = False
        self.file_ending: str = predictor.dataset_json["file_ending"]
        self.num_channels = len(
            predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {"0": ""}))
        )

    def _label_names(self) -> str:
        labels = self.predictor.dataset_json.get("labels", {})
        return ", ".join(f"{v} ({k})" for k, v in labels.items()) or "unknown"

    # -------------------------------------------------------------- the CAM method
    def _make_cam(self) -> Any:
        from medcam3d.core.base import BaseCAM

        kwargs = dict(self.method_kwargs)
        # the network is put in eval mode once per case (predict_preprocessed); not once per patch
        kwargs.setdefault("eval_mode", False)
        try:
            cam = self.method_class(self.network, [m for _, m in self.layers], **kwargs)
        except TypeError:
            kwargs.pop("eval_mode")
            cam = self.method_class(self.network, [m for _, m in self.layers], **kwargs)
        if not isinstance(cam, BaseCAM):  # pragma: no cover
            raise ConfigurationError(f"{self.method_class} is not a medcam3d CAM method.")
        return cam

    # -------------------------------------------------------------- preprocessing
    def preprocess(
        self, files: Sequence[str], mask_file: str | None = None, prev_stage_file: str | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None, dict[str, Any]]:
        """nnU-Net's preprocessing of one case, in-process: ``(data (C, *S_pre), mask (*S_pre) | None,
        properties)``. The mask file is transposed, cropped and resampled with the image."""
        from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

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
            if prev_stage_file is None:
                raise ConfigurationError(
                    f"Configuration {p.configuration_manager.configuration_name if hasattr(p.configuration_manager, 'configuration_name') else ''} "
                    f"is a cascade stage: it needs the segmentation of the previous stage "
                    f"({p.configuration_manager.previous_stage_name}). Pass prev_stage_predictions / "
                    "-prev_stage_predictions with a folder of those segmentations."
                )
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
        from nnunetv2.inference.sliding_window_prediction import (
            compute_gaussian,
            compute_steps_for_sliding_window,
        )

        p = self.predictor
        device = p.device
        plain = self.network
        plain.to(device)
        plain.eval()
        patch_size = tuple(int(s) for s in p.configuration_manager.patch_size)
        mirror_axes = p.allowed_mirroring_axes if self.use_mirroring else None
        if mask is not None:
            targets: list[Any] = [
                SlidingSegmentationTarget(k, mask=(mask == k) if (mask == k).any() and k != 0 else (mask > 0))
                for k in self.target_classes
            ]
        elif self.target == "channel":
            targets = [SlidingSegmentationTarget(k, whole_channel=True) for k in self.target_classes]
        else:
            targets = [SlidingSegmentationTarget(k) for k in self.target_classes]

        def nnunet_gaussian(size: tuple[int, ...], dev: torch.device) -> torch.Tensor:
            return compute_gaussian(tuple(size), sigma_scale=1.0 / 8, value_scaling_factor=10, device=dev)

        cam = self._make_cam()
        engine = _NnUNetSliding(
            cam,
            patch_size,
            step_size=self.tile_step_size,
            mirror_axes=mirror_axes,
            gaussian=True,
            normalization="none",
            progress=self.progress,
            steps_fn=compute_steps_for_sliding_window,
            gaussian_fn=nnunet_gaussian,
            autocast=device.type == "cuda",
            num_heads=self.label_manager.num_segmentation_heads,
        )
        n_threads = torch.get_num_threads()
        torch.set_num_threads(default_num_processes if default_num_processes < n_threads else n_threads)
        prediction: torch.Tensor | None = None
        state: SlidingState | None = None
        try:
            for index, params in enumerate(p.list_of_parameters):
                plain.load_state_dict(params)  # also for compiled models (the _orig_mod inside)
                if state is None:
                    state = engine.new_state((data.shape[0], *data.shape[1:]), len(targets))
                engine.start_fold(state)
                state.extra["gaussian"] = nnunet_gaussian(patch_size, device)
                fold_desc = description or "patches"
                if len(p.list_of_parameters) > 1:
                    fold_desc = f"{fold_desc} (model {index + 1}/{len(p.list_of_parameters)})"
                engine.accumulate(data, targets, state=state, description=fold_desc)
                fold_logits = engine.end_fold(state).to("cpu")
                if prediction is None:
                    prediction = fold_logits
                else:
                    prediction += fold_logits
            assert prediction is not None and state is not None
            if len(p.list_of_parameters) > 1:
                prediction /= len(p.list_of_parameters)
            raw = state.map_sum / state.weight.clamp_min(torch.finfo(torch.float32).tiny)
            raw = raw[(slice(None), *state.crop)]
        finally:
            torch.set_num_threads(n_threads)
        return prediction.detach().numpy(), raw

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
        """Preprocess, predict with CAM, export. Files appear only once everything is computed."""
        if self.target == "mask" and mask_file is None:
            raise ConfigurationError(f"target='mask' needs a mask file for case {case.identifier!r}.")
        data, mask, properties = self.preprocess(case.files, mask_file, prev_stage_file)
        logits, raw = self.predict_preprocessed(data, mask, description=case.identifier)
        segmentation = self.segmentation_to_original(logits, properties)
        maps = self.maps_to_original(raw, properties)
        result = CaseResult(case.identifier, maps, segmentation, list(self.target_classes))
        if output_folder is None:
            return result
        out = Path(output_folder)
        try:
            self._write_outputs(
                case, result, out, properties, save_segmentation, save_maps, save_numpy, save_slices
            )
        except BaseException:
            for path in result.files:  # no partial output for a failed case
                path.unlink(missing_ok=True)
            raise
        return result

    def _write_outputs(
        self,
        case: Case,
        result: CaseResult,
        out: Path,
        properties: dict[str, Any],
        save_segmentation: bool,
        save_maps: bool,
        save_numpy: bool,
        save_slices: bool,
    ) -> None:
        segmentation, maps = result.segmentation, result.maps
        rw = self.predictor.plans_manager.image_reader_writer_class()
        if save_segmentation:
            seg_path = out / f"{case.identifier}{self.file_ending}"
            from medcam3d._atomic import atomic_path

            with atomic_path(seg_path) as tmp:
                rw.write_seg(segmentation, str(tmp), properties)
            result.files.append(seg_path)
        if save_maps:
            for k, name in zip(range(len(self.target_classes)), self.output_names(case.identifier)):
                result.files.append(write_float_map(maps[k], out / name, properties, rw))
        if save_numpy:
            from medcam3d._atomic import atomic_path

            for k, cls in enumerate(self.target_classes):
                npy = out / f"{case.identifier}_{self.method_name}_class{cls}.npy"
                with atomic_path(npy) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, maps[k])
                result.files.append(npy)
        if save_slices:
            result.files.extend(self._save_slices(case, maps, out))

    def _save_slices(self, case: Case, maps: np.ndarray, out: Path) -> list[Path]:
        from medcam3d.viz import save_slice_pngs

        rw = self.predictor.plans_manager.image_reader_writer_class()
        image, _ = rw.read_images([case.files[0]])
        image = np.asarray(image[0], dtype=np.float32)
        written: list[Path] = []
        folder = out / self.method_name / case.identifier
        for k, cls in enumerate(self.target_classes):
            cam = maps[k]
            if image.shape != cam.shape:  # pragma: no cover - same reader, same geometry
                raise RuntimeError(f"image {image.shape} and map {cam.shape} differ")
            written.extend(
                save_slice_pngs(image, cam, folder, axis=0, prefix=f"class{cls}_slice", overwrite=True)
            )
        return written


# ------------------------------------------------------------------------------ the compatible function
def run_cam_for_prediction(
    predictor: Any,
    input_files: Union[str, os.PathLike[str], Sequence[str]],
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
    mask_files: Sequence[str] | dict[str, str] | None = None,
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
    (``device`` moves the predictor's network when given; ``cam_type`` defaults to ``'3d'``).

    Writes per case ``<case><ending>`` (the segmentation, as ``nnUNetv2_predict``), one float map
    ``<case>_<method>_class<k><ending>`` per target class with the input's geometry, PNG overlays
    under ``<output_folder>/<method>/<case>/`` and optionally ``.npy`` maps.

    Returns one array per case, in the original image's array order: ``(*S)`` when
    ``target_class`` is an int, ``(T, *S)`` for a list of classes. ``output_folder=None`` writes
    nothing and only returns the maps.
    """
    if device is not None:
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        if dev.type == "cuda" and not torch.cuda.is_available():
            logger.warning("CUDA is not available; using the CPU.")
            dev = torch.device("cpu")
        predictor.device = dev
    method_kwargs: dict[str, Any] = {}
    if pool_size is not None or str(method).lower() == "segxrescam":
        method_kwargs = {"pool_size": pool_size, "pool_mode": pool_mode}
    runner = NnUNetCAM(
        predictor,
        target_layer,
        method=method,
        target_classes=target_class,
        target=target,
        cam_type=cam_type,
        tile_step_size=tile_step_size,
        use_mirroring=use_mirroring,
        method_kwargs=method_kwargs,
        progress=verbose if progress is None else progress,
    )
    cases = group_input_files(input_files, runner.file_ending, runner.num_channels)
    check_readable([f for c in cases for f in c.files])
    if output_folder is not None:
        check_map_writer(predictor.plans_manager.image_reader_writer_class)
        if save_slices:
            require_extra("matplotlib", "viz", "PNG overlays (or pass save_slices=False)")
    masks = _match_masks(cases, mask_files, runner.file_ending) if target == "mask" else {}
    if target == "mask" and not mask_files:
        raise ConfigurationError("target='mask' needs mask_files (one mask per case, e.g. the ground truth).")
    prev = _match_prev_stage(cases, prev_stage_predictions, runner.file_ending) if runner.cascaded else {}
    if runner.cascaded and prev_stage_predictions is None:
        raise ConfigurationError(
            f"This configuration is a cascade stage (previous stage: "
            f"{predictor.configuration_manager.previous_stage_name}); pass prev_stage_predictions, the folder with "
            "the previous stage's segmentations (as nnUNetv2_predict -prev_stage_predictions)."
        )
    if output_folder is not None:
        _check_output_folder(Path(output_folder), cases, runner, save_numpy)
    from tqdm.auto import tqdm

    results: list[np.ndarray] = []
    show = verbose if progress is None else progress
    for case in tqdm(cases, desc="cases", disable=not show):
        try:
            res = runner.run_case(
                case,
                output_folder,
                mask_file=masks.get(case.identifier),
                prev_stage_file=prev.get(case.identifier),
                save_segmentation=save_segmentation,
                save_slices=save_slices,
                save_numpy=save_numpy,
            )
        except Exception as exc:
            if not continue_on_error:
                raise
            logger.error("Case %s failed: %s: %s", case.identifier, type(exc).__name__, exc)
            if failures is not None:
                failures.append((case.identifier, f"{type(exc).__name__}: {exc}"))
            continue
        results.append(res.maps[0] if isinstance(target_class, (int, np.integer)) else res.maps)
    return results


def _match_masks(
    cases: list[Case], mask_files: Sequence[str] | dict[str, str] | None, ending: str
) -> dict[str, str]:
    if not mask_files:
        return {}
    if isinstance(mask_files, dict):
        mapping = {str(k): str(v) for k, v in mask_files.items()}
    elif isinstance(mask_files, (str, os.PathLike)) and Path(mask_files).is_dir():
        mapping = {c.identifier: str(Path(mask_files) / f"{c.identifier}{ending}") for c in cases}
    else:
        files = (
            [str(f) for f in mask_files]
            if not isinstance(mask_files, (str, os.PathLike))
            else [str(mask_files)]
        )
        if len(files) != len(cases):
            raise ConfigurationError(
                f"Got {len(files)} mask files for {len(cases)} cases: give one per case."
            )
        mapping = {c.identifier: f for c, f in zip(cases, files)}
    for c in cases:
        f = mapping.get(c.identifier)
        if f is None or not Path(f).is_file():
            raise InputFileError(f"Mask file for case {c.identifier!r} not found ({f}).")
    return mapping


def _match_prev_stage(
    cases: list[Case], folder: str | os.PathLike[str] | None, ending: str
) -> dict[str, str]:
    if folder is None:
        return {}
    mapping = {c.identifier: str(Path(folder) / f"{c.identifier}{ending}") for c in cases}
    for ident, f in mapping.items():
        if not Path(f).is_file():
            raise InputFileError(f"Previous-stage segmentation for case {ident!r} not found: {f}.")
    return mapping


def _check_output_folder(folder: Path, cases: list[Case], runner: NnUNetCAM, save_numpy: bool) -> None:
    from medcam3d._atomic import check_writable_dir

    try:
        check_writable_dir(folder)
    except OutputPathError:
        raise
    except OSError as exc:  # pragma: no cover
        raise OutputPathError(f"Cannot use output folder {folder}: {exc}") from exc
