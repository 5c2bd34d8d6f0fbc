"""Loading a trained nnU-Net v2 model folder, and what it declares without loading any checkpoint.

:class:`ModelInfo` reads ``dataset.json`` and ``plans.json`` only (file ending, channels, labels,
reader-writer, previous cascade stage), so that inputs and options are checked before the
checkpoints are loaded. :func:`load_predictor` builds nnU-Net's own ``nnUNetPredictor`` from
checkpoints that :func:`load_checkpoint` read with ``torch.load(weights_only=True)``: a model
folder is data, not code. nnU-Net's ``initialize_from_trained_model_folder`` (which unpickles
with ``weights_only=False``) is not called; the predictor is set up with its
``manual_initialization`` from the safely loaded parameters instead.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Sequence
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
    "load_checkpoint",
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


def _read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file as a dict, or :class:`ConfigurationError` saying what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}. Copy the model folder again.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): the file is damaged "
            "or was cut off. Copy the model folder again."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path} holds a JSON {type(data).__name__}, not an object: it is not an nnU-Net v2 model file."
        )
    return data


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
        if (fold_dir / checkpoint_name).stat().st_size == 0:
            raise ConfigurationError(_empty_checkpoint(fold_dir / checkpoint_name))
    return fold_list


def _empty_checkpoint(path: Path) -> str:
    return (
        f"Checkpoint {path} is empty (0 bytes): the copy or download was interrupted, or the training was "
        "killed while saving. Copy the model folder again (or choose another checkpoint with -chk)."
    )


def _numpy_safe_globals() -> list[Any]:
    """What nnU-Net checkpoints hold beyond tensors and plain containers: numpy scalars (``_best_ema``,
    the values in ``logging``), their dtypes and, in some versions, small numpy arrays. Both the
    numpy >= 2 (``numpy._core``) and the numpy 1.x (``numpy.core``) names are allowed, since most
    checkpoints were saved with numpy 1.x."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [np.dtype, np.ndarray]
    for function in (multiarray.scalar, multiarray._reconstruct):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((function, f"{module}.{function.__name__}"))
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
    allowed += sorted({type(np.dtype(k)) for k in (*kinds, np.float16, np.float32, np.float64)}, key=str)
    return allowed


@contextlib.contextmanager
def _allow_nnunet_globals() -> Iterator[None]:
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5: only plain containers load; the error then names --trust-checkpoint
        yield
        return
    with safe(_numpy_safe_globals()):
        yield


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REQUIRED_KEYS = ("network_weights", "trainer_name", "init_args")


def load_checkpoint(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> dict[str, Any]:
    """Read an nnU-Net v2 checkpoint (``fold_X/checkpoint_final.pth``) on the CPU, without running
    code from it.

    The file is read with ``torch.load(weights_only=True)``, allowing only tensors, plain
    containers and the numpy scalars, dtypes and arrays that nnU-Net checkpoints hold. A file that
    needs anything else (a pickled object: unpickling it would run code from the file) is refused
    unless ``trust_checkpoint`` (``--trust-checkpoint``), which unpickles it with
    ``weights_only=False``: only for files you trust.

    Returns:
        the checkpoint dictionary (``network_weights``, ``trainer_name``, ``init_args``,
        ``inference_allowed_mirroring_axes``, …).

    Raises:
        ConfigurationError: the file is empty, truncated or damaged; it is refused by the safe
            loader (the message names the refused global and ``--trust-checkpoint``); or it is not
            an nnU-Net v2 checkpoint (keys missing).
    """
    p = Path(path)
    if p.stat().st_size == 0:
        raise ConfigurationError(_empty_checkpoint(p))
    damaged = (
        f"Cannot read checkpoint {p}: the file is truncated or damaged (an interrupted copy or download, or "
        "a training killed while saving). Copy the model folder again"
    )
    try:
        if trust_checkpoint:
            logger.warning(
                "Unpickling %s with torch.load(weights_only=False) (--trust-checkpoint): this runs code from "
                "the file; use it only for checkpoints you trust.",
                p,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                checkpoint = torch.load(p, map_location="cpu", weights_only=False)
        else:
            with _allow_nnunet_globals():
                checkpoint = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = _REFUSED_GLOBAL.search(text)
        cut_off = any(word in text.lower() for word in ("truncated", "ran out of input", "eof"))
        if trust_checkpoint or "weights only" not in text.lower() or (cut_off and not refused):
            reason = next((line for line in text.splitlines() if "WeightsUnpickler error" in line), text)
            raise ConfigurationError(f"{damaged} ({reason.strip()[:200]}).") from exc
        if refused:
            what = f" ({refused.group(0)})"
        else:
            reason = next((line for line in text.splitlines() if "WeightsUnpickler error" in line), "")
            what = f" ({reason.strip().removeprefix('WeightsUnpickler error: ')[:200]})" if reason else ""
        raise ConfigurationError(
            f"Refusing to load {p}: it pickles Python objects{what} beyond the tensors, containers and numpy "
            "values of an nnU-Net checkpoint, and unpickling them would run code from the file. If you trust "
            "the file (you trained the model, or got it from a source you trust), pass --trust-checkpoint "
            "(trust_checkpoint=True in Python)."
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, ImportError) as exc:
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:200]
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ConfigurationError(f"{damaged} ({detail}).") from exc
    missing = (
        list(_REQUIRED_KEYS)
        if not isinstance(checkpoint, dict)
        else [k for k in _REQUIRED_KEYS if k not in checkpoint]
    )
    if not missing and not (
        isinstance(checkpoint["init_args"], dict) and "configuration" in checkpoint["init_args"]
    ):
        missing = ["init_args['configuration']"]
    if missing:
        held = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigurationError(
            f"{p} is not an nnU-Net v2 checkpoint: it lacks {', '.join(missing)} (it holds {held}). Pass the "
            "checkpoint nnUNetv2_train wrote (fold_X/checkpoint_final.pth)."
        )
    return checkpoint


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
    trust_checkpoint: bool = False,
) -> Any:
    """Load a trained model folder into nnU-Net's own ``nnUNetPredictor``, without running code
    from it.

    The checkpoints are read by :func:`load_checkpoint` (``torch.load(weights_only=True)``;
    ``trust_checkpoint=True`` unpickles them, for files you trust), the network is built by the
    trainer class the checkpoint names (as nnU-Net does) and the predictor is set up with
    ``nnUNetPredictor.manual_initialization``: nothing in nnU-Net unpickles.

    Missing folders, folds and checkpoints raise :class:`ConfigurationError` naming what exists
    (:func:`check_model_folder`); so do an unavailable device, unreadable ``plans.json`` /
    ``dataset.json``, damaged or refused checkpoints and weights that do not fit the planned
    network. ``folds=None`` uses every ``fold_*`` folder holding ``checkpoint_name``.
    """
    import_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    fold_list = check_model_folder(model_folder, folds, checkpoint_name)
    dev = _check_device(device)
    info = ModelInfo.from_folder(model_folder)
    folder = Path(model_folder)
    checkpoints = [
        load_checkpoint(folder / f"fold_{f}" / checkpoint_name, trust_checkpoint) for f in fold_list
    ]
    first = checkpoints[0]
    trainer_name = str(first["trainer_name"])
    configuration_name = str(first["init_args"]["configuration"])
    mirroring = first.get("inference_allowed_mirroring_axes")
    plans_manager, dataset_json = info.plans_manager, info.dataset_json
    try:
        configuration_manager = plans_manager.get_configuration(configuration_name)
    except Exception as exc:  # nnU-Net raises RuntimeError/KeyError for unknown configurations
        raise ConfigurationError(
            f"{folder}/plans.json has no configuration {configuration_name!r}, which the checkpoint "
            f"{folder / f'fold_{fold_list[0]}' / checkpoint_name} was trained with: the plans do not belong "
            "to these checkpoints."
        ) from exc
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except Exception:  # nnU-Net raises RuntimeError when no trainer has the name
        trainer_class = None
    if trainer_class is None:
        raise ConfigurationError(
            f"The checkpoint names the trainer {trainer_name!r}, which is not among nnU-Net's trainers "
            "(nnunetv2.training.nnUNetTrainer, or the folders of $nnUNet_extTrainer). Install the package or "
            "nnU-Net version that defines it."
        )
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    try:
        if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
            network = trainer_class.build_network_architecture(
                plans_manager, configuration_manager, num_inputs, num_outputs, enable_deep_supervision=False
            )
        else:  # the signature of nnU-Net < 2.6 (as initialize_from_trained_model_folder handles it)
            network = trainer_class.build_network_architecture(
                configuration_manager.network_arch_class_name,
                configuration_manager.network_arch_init_kwargs,
                configuration_manager.network_arch_init_kwargs_req_import,
                num_inputs,
                num_outputs,
                enable_deep_supervision=False,
            )
    except Exception as exc:
        raise ConfigurationError(
            f"Cannot build the network of {folder} from its plans.json ({configuration_name}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    parameters = [c["network_weights"] for c in checkpoints]
    for f, params in zip(fold_list, parameters):
        try:
            network.load_state_dict(params)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first_line = (str(exc).splitlines() or [""])[0][:300]
            raise ConfigurationError(
                f"The weights of {folder / f'fold_{f}' / checkpoint_name} do not fit the network that "
                f"plans.json describes ({configuration_name}): {first_line}"
            ) from exc
    network.load_state_dict(parameters[0])  # as nnU-Net: the network holds the first fold's weights
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
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration_manager,
        parameters,
        dataset_json,
        trainer_name,
        mirroring,
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
        dataset_json = _read_json(folder / "dataset.json")
        problems = []
        if not isinstance(dataset_json.get("file_ending"), str) or not dataset_json["file_ending"]:
            problems.append("'file_ending' (e.g. \".nii.gz\")")
        if not isinstance(dataset_json.get("labels"), dict) or not dataset_json["labels"]:
            problems.append('\'labels\' (e.g. {"background": 0, "tumour": 1})')
        channels = dataset_json.get("channel_names", dataset_json.get("modality"))
        if not isinstance(channels, dict) or not channels:
            problems.append('\'channel_names\' (e.g. {"0": "CT"})')
        if problems:
            raise ConfigurationError(
                f"{folder / 'dataset.json'} lacks {' and '.join(problems)}: it is not the dataset.json of a "
                "trained nnU-Net v2 model. Copy the model folder again."
            )
        plans = _read_json(folder / "plans.json")
        try:
            plans_manager = PlansManager(plans)
            plans_manager.image_reader_writer_class  # noqa: B018 - resolves the class the plans name
            plans_manager.get_label_manager(dataset_json)  # noqa: B018 - the labels must make sense
            configurations = plans["configurations"]
            if not isinstance(configurations, dict) or not configurations:
                raise KeyError("configurations")
        except Exception as exc:  # nnU-Net's plans handling raises KeyError, TypeError, RuntimeError ...
            raise ConfigurationError(
                f"{folder / 'plans.json'} is not the plans.json of an nnU-Net v2 model (or does not fit its "
                f"dataset.json): {type(exc).__name__}: {exc}. Copy the model folder again."
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
