"""Loading a trained nnU-Net v2 model folder, and what it declares without loading any checkpoint.

:class:`ModelInfo` reads ``dataset.json`` and ``plans.json`` only (file ending, channels, labels,
reader-writer, previous cascade stage), so that inputs and options are checked before the
checkpoints are loaded. :func:`load_predictor` loads the folds with nnU-Net's own
``nnUNetPredictor``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medcam3d.core.model import unwrap_compiled
from medcam3d.errors import ConfigurationError, require_extra

__all__ = [
    "ModelInfo",
    "cascade_error",
    "check_model_folder",
    "load_predictor",
    "plain_network",
    "previous_stage_of",
    "resolve_device",
]

logger = logging.getLogger(__name__)

Fold = int | str


def import_nnunet() -> Any:
    """``nnunetv2``, or :class:`~medcam3d.errors.MissingExtraError` naming the ``nnunet`` extra."""
    return require_extra("nnunetv2", "nnunet", "the nnU-Net integration")


def cascade_error(model_name: str, previous_stage: str) -> ConfigurationError:
    """The one refusal of a cascade stage run without the previous stage's segmentations."""
    return ConfigurationError(
        f"{model_name} is a cascade stage (previous stage: {previous_stage}): pass prev_stage_predictions "
        f"(-prev_stage_predictions FOLDER on the command line), a folder with the {previous_stage} model's "
        "segmentation <case><ending> of every case (e.g. from nnUNetv2_predict)."
    )


def _check_folder(model_folder: str | os.PathLike[str]) -> Path:
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
    return folder


def check_model_folder(
    model_folder: str | os.PathLike[str],
    folds: Sequence[Fold] | None = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
) -> list[Fold]:
    """Check that ``model_folder`` is a trained nnU-Net v2 folder holding ``checkpoint_name`` for
    every fold, without loading anything; return the folds (``int`` or ``"all"``).

    ``folds=None`` means every ``fold_*`` folder holding the checkpoint. Missing folders, folds and
    checkpoints raise :class:`ConfigurationError` naming what exists.
    """
    folder = _check_folder(model_folder)
    available = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    if folds is None:
        folds = [p[len("fold_") :] for p in available if (folder / p / checkpoint_name).is_file()]
        if not folds:
            raise ConfigurationError(
                f"No fold folder of {folder} holds {checkpoint_name} (folders: {available})."
            )
    fold_list: list[Fold] = [f if str(f) == "all" else int(f) for f in folds]
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
    return fold_list


def _check_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device 'cuda' was requested but CUDA is not available. Use -device cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigurationError("device 'mps' was requested but MPS is not available. Use -device cpu.")
    return dev


def resolve_device(device: str | torch.device) -> torch.device:
    """``device``, or the CPU with a warning when CUDA / MPS was asked for but is not available
    (as ``-device cuda`` of the command line and ``device=`` of :func:`run_cam_for_prediction`)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA is not available: falling back to the CPU.")
        return torch.device("cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS is not available: falling back to the CPU.")
        return torch.device("cpu")
    return dev


def load_predictor(
    model_folder: str | os.PathLike[str],
    folds: Sequence[Fold] | None = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    device: str | torch.device = "cpu",
    tile_step_size: float = 0.5,
    use_mirroring: bool = True,
    verbose: bool = False,
) -> Any:
    """Load a trained model folder with nnU-Net's own ``nnUNetPredictor``.

    Missing folders, folds and checkpoints raise :class:`ConfigurationError` naming what exists
    (:func:`check_model_folder`); so does a device that is not available. ``folds=None`` uses
    every ``fold_*`` folder holding ``checkpoint_name``.
    """
    import_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    fold_list = check_model_folder(model_folder, folds, checkpoint_name)
    dev = _check_device(device)
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
        str(Path(model_folder)), use_folds=tuple(fold_list), checkpoint_name=checkpoint_name
    )
    return predictor


def previous_stage_of(model_folder: str | os.PathLike[str]) -> str | None:
    """The previous cascade stage of a model folder (e.g. ``"3d_lowres"`` for a
    ``…__3d_cascade_fullres`` folder), read from its ``plans.json`` without loading any checkpoint;
    ``None`` when it is no cascade stage or the folder name does not follow nnU-Net's
    ``Trainer__Plans__Configuration`` pattern (the loaded predictor is checked again later)."""
    import_nnunet()
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


def plain_network(predictor: Any) -> torch.nn.Module:
    """The predictor's network, outside any ``torch.compile`` wrapper."""
    return unwrap_compiled(predictor.network)


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares in its ``dataset.json`` and ``plans.json``: enough to check inputs,
    classes, writers and the cascade before any checkpoint is loaded.

    Attributes:
        name: the model folder's name (or the configuration's, for a predictor), for messages.
        dataset_json: the dataset's ``dataset.json``.
        plans_manager: nnU-Net's ``PlansManager`` of ``plans.json``.
        previous_stage: the previous cascade stage (``"3d_lowres"``), ``None`` when the model is no
            cascade stage or (for a folder not named ``Trainer__Plans__Configuration``) unknown.
    """

    name: str
    dataset_json: dict[str, Any]
    plans_manager: Any
    previous_stage: str | None

    @classmethod
    def from_folder(cls, model_folder: str | os.PathLike[str]) -> ModelInfo:
        """Read a trained model folder (no checkpoint is opened)."""
        import_nnunet()
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        folder = _check_folder(model_folder)
        try:
            dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
            plans_manager = PlansManager(str(folder / "plans.json"))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"Cannot read {folder}/dataset.json or plans.json: {type(exc).__name__}: {exc}"
            ) from exc
        return cls(folder.name, dataset_json, plans_manager, previous_stage_of(folder))

    @classmethod
    def from_predictor(cls, predictor: Any) -> ModelInfo:
        """Read an initialised ``nnUNetPredictor``."""
        if (
            getattr(predictor, "network", None) is None
            or getattr(predictor, "list_of_parameters", None) is None
        ):
            raise ConfigurationError(
                "The predictor is not initialised: call predictor.initialize_from_trained_model_folder(...) first "
                "(or use medcam3d.nnunet.load_predictor)."
            )
        configuration = predictor.configuration_manager
        previous = configuration.previous_stage_name
        name = getattr(configuration, "configuration_name", None) or "This configuration"
        return cls(
            str(name),
            predictor.dataset_json,
            predictor.plans_manager,
            None if previous is None else str(previous),
        )

    @property
    def file_ending(self) -> str:
        """The dataset's file ending, e.g. ``".nii.gz"``."""
        return str(self.dataset_json["file_ending"])

    @property
    def num_channels(self) -> int:
        """The number of input channels (files ``_0000`` … per case)."""
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {"0": ""})))

    @property
    def reader_writer_class(self) -> type:
        """The dataset's image reader-writer class (SimpleITKIO, NibabelIO, …)."""
        return self.plans_manager.image_reader_writer_class

    @property
    def label_manager(self) -> Any:
        """nnU-Net's ``LabelManager`` of the dataset's labels."""
        return self.plans_manager.get_label_manager(self.dataset_json)

    def label_names(self) -> str:
        """``"background (0), tumour (1)"`` for messages."""
        labels = self.dataset_json.get("labels", {})
        return ", ".join(f"{v} ({k})" for k, v in labels.items()) or "unknown"
