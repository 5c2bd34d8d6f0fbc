"""Targets: callables that turn one sample's model output into the score to explain.

Same names and call signatures as ``pytorch_grad_cam.utils.model_targets`` (1.5), working on
outputs of any spatial rank. A target is called with ``model_output[i]``: ``(classes,)`` for a
classifier, ``(classes, *S)`` for a segmenter (``(C, D, H, W)`` in 3D).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medcam3d.errors import TargetError

__all__ = [
    "ClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputReST",
    "BinaryClassifierOutputTarget",
    "SoftmaxOutputTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "RegionTarget",
    "FinerWeightedTarget",
    "FasterRCNNBoxScoreTarget",
    "box_iou",
]


def _check_category(category: Any, model_output: torch.Tensor, what: str = "class") -> None:
    if isinstance(category, torch.Tensor):
        return  # produced internally from argmax: always in range
    classes = model_output.shape[0] if model_output.ndim >= 1 else 1
    if not isinstance(category, (int, np.integer)):
        raise TargetError(f"The {what} index must be an integer, got {category!r}.")
    if not -classes <= int(category) < classes:
        raise TargetError(
            f"Target {what} {int(category)} is out of range: the model output has {classes} classes "
            f"(valid indices 0..{classes - 1})."
        )


class ClassifierOutputTarget:
    """The raw score (logit) of ``category``; for a segmentation output, the sum of that channel."""

    def __init__(self, category: int | torch.Tensor | None) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.category is None:  # single-logit output
            return model_output
        _check_category(self.category, model_output)
        return model_output[self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({int(self.category) if self.category is not None else None})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of ``category`` (softmax over the class axis)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        return torch.softmax(model_output, dim=0)[self.category]


class ClassifierOutputReST:
    """Logit minus cross-entropy of ``category`` (pre- and post-softmax, arXiv:2501.06261)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        log_probs = torch.log_softmax(model_output, dim=0)
        return model_output[self.category] + log_probs[self.category]


class BinaryClassifierOutputTarget:
    """For a single-logit output: the logit for ``category=1``, its negation for ``category=0``."""

    def __init__(self, category: int) -> None:
        if category not in (0, 1):
            raise TargetError(f"BinaryClassifierOutputTarget takes category 0 or 1, got {category!r}.")
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if self.category == 1 else -1.0
        return model_output * sign


class SoftmaxOutputTarget:
    """All softmax probabilities (their sum is what gets explained)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=0)


class RawScoresOutputTarget:
    """All raw scores (their sum is what gets explained)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output


def _as_mask(mask: Any, like: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    return m.to(device=like.device, dtype=like.dtype)


class SemanticSegmentationTarget:
    """Seg-Grad-CAM: the ``category`` channel summed over a spatial mask.

    Only the ``category`` channel counts. ``mask`` has the output's spatial shape (any rank:
    ``(H, W)`` or ``(D, H, W)``); ``mask=None`` uses the voxels the model itself predicts as
    ``category`` (argmax over the class axis).
    """

    def __init__(self, category: int, mask: Any = None, *, warn_empty: bool = True) -> None:
        self.category = category
        #: warn when the mask is empty (the map is then all zeros); a sliding window turns it off per
        #: patch, where a patch without the class is normal, and warns once per volume instead
        self.warn_empty = warn_empty
        self.mask = (
            None
            if mask is None
            else torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        )

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim < 2:
            raise TargetError(
                "SemanticSegmentationTarget needs a segmentation output (classes, *spatial); this output has "
                f"shape {tuple(model_output.shape)}. Use ClassifierOutputTarget for a classifier."
            )
        _check_category(self.category, model_output)
        channel = model_output[self.category]
        if self.mask is None:
            mask = (model_output.detach().argmax(dim=0) == (self.category % model_output.shape[0])).to(
                channel.dtype
            )
        else:
            if tuple(self.mask.shape) != tuple(channel.shape):
                raise TargetError(
                    f"The segmentation mask has shape {tuple(self.mask.shape)} but the model output's spatial "
                    f"shape is {tuple(channel.shape)}. Resample the mask to the output grid."
                )
            mask = _as_mask(self.mask, channel)
        if self.warn_empty and not bool(mask.any()):
            source = "no voxel is predicted as this class" if self.mask is None else "the given mask is empty"
            warnings.warn(
                f"SemanticSegmentationTarget(category={self.category}): {source}, so the score is 0 and the "
                "map will be all zeros. Pick a class the model predicts, pass a non-empty mask, or use "
                "ClassifierOutputTarget(category) for the whole channel.",
                RuntimeWarning,
                stacklevel=2,
            )
        return (channel * mask).sum()


class RegionTarget:
    """The ``category`` channel summed (or averaged) over a region: a box or an ROI mask.

    Args:
        category: the class channel.
        box: per spatial axis a ``(start, stop)`` pair, half-open, in tensor order (``z, y, x``
            for a 3D output).
        mask: a boolean/float ROI of the output's spatial shape (instead of ``box``).
        reduction: ``"sum"`` (default) or ``"mean"`` over the region.
    """

    def __init__(
        self,
        category: int,
        box: Sequence[tuple[int, int]] | None = None,
        mask: Any = None,
        reduction: str = "sum",
    ) -> None:
        if (box is None) == (mask is None):
            raise TargetError("RegionTarget takes exactly one of box=... or mask=....")
        if reduction not in ("sum", "mean"):
            raise TargetError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.category = category
        self.box = [tuple(int(v) for v in pair) for pair in box] if box is not None else None
        self.mask = (
            None
            if mask is None
            else torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        )
        self.reduction = reduction

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.category, model_output)
        channel = model_output[self.category]
        if self.box is not None:
            if len(self.box) != channel.ndim:
                raise TargetError(
                    f"The box has {len(self.box)} (start, stop) pairs but the output has {channel.ndim} spatial "
                    "axes: give one pair per axis, in tensor order (z, y, x for a volume)."
                )
            for (start, stop), size in zip(self.box, channel.shape):
                if not 0 <= start < stop <= size:
                    raise TargetError(
                        f"Box {self.box} does not fit the output's spatial shape {tuple(channel.shape)}."
                    )
            region = channel[tuple(slice(a, b) for a, b in self.box)]
            return region.sum() if self.reduction == "sum" else region.mean()
        assert self.mask is not None
        if tuple(self.mask.shape) != tuple(channel.shape):
            raise TargetError(
                f"The ROI mask has shape {tuple(self.mask.shape)} but the output's spatial shape is "
                f"{tuple(channel.shape)}."
            )
        mask = _as_mask(self.mask, channel)
        total = (channel * mask).sum()
        return total if self.reduction == "sum" else total / mask.sum().clamp_min(1.0)


class FinerWeightedTarget:
    """FinerCAM's target: the main class score against similar classes, weighted by their probability.

    ``Σ_j p_j (y_main − α y_j) / Σ_j p_j`` over the comparison categories ``j``.
    """

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float) -> None:
        self.main_category = main_category
        self.comparison_categories = list(comparison_categories)
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_category(self.main_category, model_output)
        for c in self.comparison_categories:
            _check_category(c, model_output)
        probs = torch.softmax(model_output, dim=0)
        main = model_output[self.main_category]
        if not self.comparison_categories:
            return main
        index = torch.as_tensor(self.comparison_categories, device=model_output.device)
        weights = probs.index_select(0, index)
        others = model_output.index_select(0, index)
        return (weights * (main - self.alpha * others)).sum(dim=0) / weights.sum(dim=0)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of axis-aligned boxes ``(A, 2d)`` × ``(B, 2d)`` → ``(A, B)``.

    A box is ``(min_1, …, min_d, max_1, …, max_d)``: ``(x1, y1, x2, y2)`` in 2D as torchvision,
    ``(x1, y1, z1, x2, y2, z2)`` in 3D.
    """
    d = boxes_a.shape[-1] // 2
    low = torch.maximum(boxes_a[:, None, :d], boxes_b[None, :, :d])
    high = torch.minimum(boxes_a[:, None, d:], boxes_b[None, :, d:])
    intersection = (high - low).clamp_min(0).prod(dim=-1)
    volume_a = (boxes_a[:, d:] - boxes_a[:, :d]).clamp_min(0).prod(dim=-1)
    volume_b = (boxes_b[:, d:] - boxes_b[:, :d]).clamp_min(0).prod(dim=-1)
    union = volume_a[:, None] + volume_b[None, :] - intersection
    return intersection / union.clamp_min(torch.finfo(intersection.dtype).tiny)


class FasterRCNNBoxScoreTarget:
    """pytorch-grad-cam's detection target, for boxes of any dimensionality.

    For each reference box (with its label), the detection with the highest IoU counts when that
    IoU exceeds ``iou_threshold`` and its label matches: it adds ``IoU + score``. The sum over the
    reference boxes is the target score (0 when nothing matches). The model output is a
    torchvision-style dict with ``"boxes"`` ``(M, 2d)``, ``"labels"`` ``(M,)`` and ``"scores"``
    ``(M,)``. Unlike pytorch-grad-cam, the score lives on the output's device (not a guessed one).
    """

    def __init__(self, labels: Sequence[int], bounding_boxes: Any, iou_threshold: float = 0.5) -> None:
        self.labels = list(labels)
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs: Any) -> torch.Tensor:
        boxes = model_outputs["boxes"]
        output = torch.zeros(
            1, device=boxes.device, dtype=boxes.dtype if boxes.is_floating_point() else torch.float32
        )
        if len(boxes) == 0:
            return output
        for box, label in zip(self.bounding_boxes, self.labels):
            reference = torch.as_tensor(np.asarray(box) if not isinstance(box, torch.Tensor) else box)
            reference = reference.to(device=boxes.device, dtype=output.dtype).reshape(1, -1)
            ious = box_iou(reference, boxes.to(output.dtype))
            index = ious.argmax()
            if ious[0, index] > self.iou_threshold and int(model_outputs["labels"][index]) == int(label):
                output = output + ious[0, index] + model_outputs["scores"][index]
        return output
