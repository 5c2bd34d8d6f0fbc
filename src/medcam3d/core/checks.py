"""Checks shared by every entry point: the input tensor, the targets, the model output, the
gradient mode. Each failure is a :mod:`medcam3d.errors` exception that says what to change."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from medcam3d.core.context import OutputIndex, Target
from medcam3d.core.model import model_device
from medcam3d.core.targets import ClassifierOutputTarget
from medcam3d.errors import InputShapeError, ModelOutputError, NonFiniteInputError, TargetError

__all__ = [
    "check_gradients_allowed",
    "check_input",
    "check_targets",
    "default_targets",
    "model_dtype",
    "resolve_normalize",
    "select_output",
]

_RANK_NAMES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def check_gradients_allowed() -> None:
    """Refuse to run inside ``torch.inference_mode()``, where no gradient can be taken."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "CAMs need gradients, which torch.inference_mode() forbids. Call the CAM outside "
            "inference_mode (torch.no_grad() is fine)."
        )


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (``None`` if it has none)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def check_input(input_tensor: Any, model: nn.Module, expected_rank: int | None = None) -> torch.Tensor:
    """Check ``input_tensor`` ``(N, C, *S)`` against the model and move it to the model's device.

    Args:
        input_tensor: the batch, 1 to 3 spatial axes.
        model: the model that will see it (its device and dtype are the reference).
        expected_rank: the number of spatial axes the model's convolutions take (``None``: any).

    Returns:
        The tensor on the model's device (the same object when it is already there).
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise InputShapeError(
            f"input_tensor must be a torch.Tensor of shape (N, C, D, H, W) or (N, C, H, W), "
            f"got {type(input_tensor).__name__}. Convert with torch.as_tensor(array)."
        )
    shape = tuple(input_tensor.shape)
    if not 3 <= input_tensor.ndim <= 5:
        hint = ""
        if input_tensor.ndim in (2, 3, 4):
            hint = " For a single image or volume add the batch and channel axes, e.g. x[None, None]."
        raise InputShapeError(
            f"input_tensor must be (N, C, *spatial) with 1 to 3 spatial axes — (N, C, D, H, W) for a "
            f"volume, (N, C, H, W) for an image — but has shape {shape}.{hint}"
        )
    if expected_rank is not None and input_tensor.ndim - 2 != expected_rank:
        raise InputShapeError(
            f"The model's convolutions have {expected_rank} spatial axes, so input_tensor must be "
            f"{_RANK_NAMES[expected_rank]}, but it has shape {shape}. For a single "
            f"{'volume' if expected_rank == 3 else 'image'} add the batch and channel axes, e.g. x[None, None]."
        )
    if shape[0] == 0 or any(s == 0 for s in shape[1:]):
        raise InputShapeError(f"input_tensor has an empty axis: shape {shape}.")
    if not input_tensor.is_floating_point():
        raise InputShapeError(
            f"input_tensor must be floating point, got {input_tensor.dtype}. Convert with x.float()."
        )
    device = model_device(model)
    if input_tensor.device.type == "meta" or device.type == "meta":
        where = "input_tensor is" if input_tensor.device.type == "meta" else "the model's parameters are"
        raise InputShapeError(
            f"{where} on the 'meta' device, which holds no values. Load real weights "
            "(model.to_empty(device=...) then load_state_dict) and pass a tensor with data."
        )
    dtype = model_dtype(model)
    if dtype is not None and input_tensor.dtype != dtype:
        raise InputShapeError(
            f"input_tensor is {input_tensor.dtype} but the model's parameters are {dtype}. Cast the input "
            f"to the model's dtype (x.to({dtype})) or the model to the input's (model.to({input_tensor.dtype}))."
        )
    if not bool(torch.isfinite(input_tensor).all()):
        raise NonFiniteInputError(
            "input_tensor contains NaN or Inf values. Clean it first, e.g. torch.nan_to_num(x)."
        )
    return input_tensor.to(device)


def check_targets(targets: Any, batch: int) -> list[Target]:
    """Exactly one callable target per sample, as a list."""
    if callable(targets) and not isinstance(targets, (list, tuple)):
        raise TargetError(
            f"targets must be a list with one target per sample; got a single {type(targets).__name__}. "
            f"Use [target] * {batch} to apply it to every sample."
        )
    try:
        target_list = list(targets)
    except TypeError:
        raise TargetError(
            f"targets must be a list with one target per sample, got {type(targets).__name__}. "
            f"Use e.g. [ClassifierOutputTarget(k)] * {batch}."
        ) from None
    if len(target_list) != batch:
        raise TargetError(
            f"Got {len(target_list)} targets for a batch of {batch} samples: pass exactly one target per "
            f"sample (e.g. [ClassifierOutputTarget(k)] * {batch})."
        )
    for target in target_list:
        if not callable(target):
            raise TargetError(
                f"Each target must be callable on one sample's output (got {type(target).__name__}). "
                "Use medcam3d.utils.model_targets.ClassifierOutputTarget(k) for class k."
            )
    return target_list


def default_targets(output: torch.Tensor) -> list[Target]:
    """Targets when ``targets=None``: the highest-scoring class of a classifier output ``(N, classes)``."""
    if output.ndim == 2:
        categories = output.argmax(dim=1)
        return [ClassifierOutputTarget(categories[i]) for i in range(output.shape[0])]
    if output.ndim == 1:
        return [ClassifierOutputTarget(None) for _ in range(output.shape[0])]
    raise TargetError(
        f"targets=None picks the top class of a classifier output (N, classes), but this model's "
        f"output has shape {tuple(output.shape)} with spatial axes. Pass one target per sample, e.g. "
        "targets=[SemanticSegmentationTarget(category=1, mask=None)] * N (the voxels predicted as class 1) "
        "or [ClassifierOutputTarget(1)] * N (the whole class-1 channel), from medcam3d.utils.model_targets."
    )


def select_output(raw_output: Any, output_index: OutputIndex = 0) -> torch.Tensor:
    """The tensor of logits in a model output: the output itself, or the element ``output_index``
    picks from a tuple/list (index) or dict (key, or position); a clear error otherwise."""
    out = raw_output
    if isinstance(out, dict):
        key = output_index
        if key not in out:
            if isinstance(key, int) and 0 <= key < len(out):
                key = list(out.keys())[key]
            else:
                raise ModelOutputError(
                    f"The model returns a dict with keys {list(out.keys())}; output_index={output_index!r} "
                    "is not one of them. Pass output_index=<key>."
                )
        out = out[key]
    elif isinstance(out, (tuple, list)):
        index = output_index
        if not isinstance(index, int) or not -len(out) <= index < len(out):
            raise ModelOutputError(
                f"The model returns a {type(out).__name__} of {len(out)} elements; output_index="
                f"{output_index!r} does not pick one. Pass an index from 0 to {len(out) - 1} "
                "(0 is the full-resolution output for deep supervision)."
            )
        out = out[index]
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(
            f"The selected model output is a {type(out).__name__}, not a tensor. "
            "Use output_index to pick the tensor of logits."
        )
    return out


def resolve_normalize(setting: bool, override: bool | None) -> bool:
    """A call's ``normalize``: the object's ``setting`` unless the call passes ``override``."""
    return bool(setting) if override is None else bool(override)
