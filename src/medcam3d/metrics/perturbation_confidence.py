"""Confidence of the model on a perturbed input: pytorch-grad-cam's
``pytorch_grad_cam.metrics.perturbation_confidence`` (1.5.7) for any spatial rank, batched.

Same names and call signatures: ``metric(input_tensor, cams, targets, model,
return_visualization=False, return_diff=True)`` with ``input_tensor`` ``(N, C, *S)`` and ``cams``
``(N, *S)`` (numpy, as pytorch-grad-cam's methods return them, or torch). Differences, all on
purpose:

- everything stays on the model's device (the input is moved there); the perturbation of each
  sample receives torch tensors on that device, not CPU copies;
- the model runs in eval mode under ``torch.inference_mode()`` and its train/eval flags are
  restored afterwards (:func:`medcam3d.core.model.model_state`), so BatchNorm statistics never
  change; the unperturbed and the perturbed inputs are scored in chunks that follow
  ``batch_memory_bytes`` (or a fixed ``batch_size``);
- ``targets=None`` scores each sample's predicted class (``ClassifierOutputTarget`` of the argmax
  of the unperturbed output, classifiers only); a target returning several values is summed;
- thresholds are computed on the device (``np.percentile``'s linear interpolation, exactly), and
  ``percentile="auto"`` (Otsu's threshold of the map quantised to 0..255, as pytorch-grad-cam)
  removes the voxels *above* the threshold for most-relevant-first, like a percentile does (the
  original keeps them, the inverse of its percentile branch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.model import model_device, model_state
from medcam3d.errors import ConfigurationError, InputShapeError
from medcam3d.metrics._common import (
    DEFAULT_BATCH_MEMORY_BYTES,
    OutputIndex,
    Target,
    as_maps,
    check_batching,
    check_input,
    check_targets,
    chunk_size,
    percentile,
    predicted_targets,
    score_rows,
)

__all__ = [
    "PerturbationConfidenceMetric",
    "otsu_threshold",
    "RemoveMostRelevantFirst",
    "RemoveLeastRelevantFirst",
    "AveragerAcrossThresholds",
]

#: a perturbation: one sample ``(C, *S)`` and its map ``(*S)`` → the perturbed sample ``(C, *S)``
Perturbation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: an imputer: one sample ``(C, *S)`` and a keep-mask ``(*S)`` (1 keep, 0 replace) → ``(C, *S)``
Imputer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PerturbationConfidenceMetric:
    """Score of each sample after a perturbation guided by its map, minus the score before.

    Args:
        perturbation: ``perturbation(sample (C, *S), cam (*S)) -> (C, *S)``, called once per
            sample with tensors on the model's device (e.g.
            :func:`medcam3d.metrics.cam_mult_image.multiply_tensor_with_cam`, or
            :class:`RemoveMostRelevantFirst`).
    """

    def __init__(self, perturbation: Perturbation) -> None:
        self.perturbation = perturbation

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: np.ndarray | torch.Tensor,
        targets: Sequence[Target] | None,
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
        *,
        output_index: OutputIndex = 0,
        batch_memory_bytes: int = DEFAULT_BATCH_MEMORY_BYTES,
        batch_size: int | None = None,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """Score the perturbed inputs.

        Args:
            input_tensor: ``(N, C, *S)``, 1 to 3 spatial axes (``(N, C, D, H, W)`` for volumes).
            cams: ``(N, *S)`` maps, numpy or torch (the input's grid).
            targets: one callable per sample (medcam3d or pytorch-grad-cam targets), or ``None``
                for each sample's predicted class (classifiers).
            model: the network; its train/eval flags are restored afterwards.
            return_visualization: also return the perturbed inputs ``(N, C, *S)`` (torch, on
                the model's device).
            return_diff: return ``score(perturbed) - score(input)``; ``False`` returns
                ``score(perturbed)`` alone (and skips the unperturbed forward pass).
            output_index: which element of a tuple/dict output holds the scores.
            batch_memory_bytes: memory budget of one chunk of forward passes, in bytes.
            batch_size: a fixed number of inputs per forward pass instead of the budget.

        Returns:
            float32 scores ``(N,)``, and the perturbed inputs when ``return_visualization``.
        """
        check_batching(batch_memory_bytes, batch_size)
        device = model_device(model)
        x = check_input(input_tensor).detach().to(device)
        maps = as_maps(cams, x)
        listed = check_targets(targets, x.shape[0])
        n = x.shape[0]
        with model_state(model, eval_mode=True, freeze_parameters=False):
            with torch.no_grad():
                perturbed = torch.stack([self._perturb(x[i], maps[i]) for i in range(n)])
            with torch.inference_mode():
                size = chunk_size(model, x[:1], batch_memory_bytes, batch_size)
                if listed is None:
                    listed = predicted_targets(model, x, size, output_index)
                rows = torch.cat([x, perturbed]) if return_diff else perturbed

                def build(start: int, stop: int) -> tuple[torch.Tensor, list[int]]:
                    return rows[start:stop], [r % n for r in range(start, stop)]

                scores = score_rows(model, rows.shape[0], build, listed, size, output_index)
        after = scores[n:] if return_diff else scores
        result = (after - scores[:n]) if return_diff else after
        values = result.cpu().numpy().astype(np.float32)
        if return_visualization:
            return values, perturbed
        return values

    def _perturb(self, sample: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        out = self.perturbation(sample, cam)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        out = out.to(device=sample.device, dtype=sample.dtype)
        if tuple(out.shape) != tuple(sample.shape):
            raise InputShapeError(
                f"The perturbation returned shape {tuple(out.shape)} for a sample of shape "
                f"{tuple(sample.shape)}: it must return a tensor of the sample's shape (C, *S)."
            )
        return out


def quantise(cam: torch.Tensor) -> torch.Tensor:
    """``np.uint8(cam * 255)`` on the device (truncation; values outside [0, 1] are clipped)."""
    return (cam.to(torch.float64) * 255).clamp(0, 255).floor().to(torch.int64)


def otsu_threshold(cam: torch.Tensor) -> int:
    """Otsu's threshold of ``np.uint8(cam * 255)``, as ``cv2.threshold(..., cv2.THRESH_OTSU)`` returns it:
    the level ``t`` in 0..255 that maximises the between-class variance of ``{v <= t}`` and
    ``{v > t}`` (the first such level; 0 when the map is constant). ``cam`` is expected in [0, 1]."""
    histogram = torch.bincount(quantise(cam).reshape(-1), minlength=256).to(torch.float64)
    grey = torch.arange(256, dtype=torch.float64, device=cam.device)
    weight_low = histogram.cumsum(0)
    mass_low = (histogram * grey).cumsum(0)
    weight_high = weight_low[-1] - weight_low
    mean_low = mass_low / weight_low.clamp_min(1e-300)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp_min(1e-300)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = torch.where((weight_low > 0) & (weight_high > 0), between, torch.zeros_like(between))
    return int(torch.argmax(between).item())


class RemoveMostRelevantFirst:
    """Replace the most relevant voxels (the map at or above its ``percentile``) with ``imputer``.

    Args:
        percentile: 0..100; the voxels with ``cam >= np.percentile(cam, percentile)`` are
            replaced (``100 - percentile`` per cent of them), the others kept. ``"auto"``: the
            voxels whose ``uint8(cam * 255)`` is above Otsu's threshold (:func:`otsu_threshold`).
        imputer: ``imputer(sample (C, *S), keep (*S)) -> (C, *S)``; ``keep`` is 1 where the
            voxel is kept, 0 where it must be filled in.
    """

    def __init__(self, percentile: float | str, imputer: Imputer) -> None:
        if percentile != "auto" and (
            isinstance(percentile, (str, bool)) or not 0 <= float(percentile) <= 100
        ):
            raise ConfigurationError(f"percentile must be in [0, 100] or 'auto', got {percentile!r}.")
        self.percentile = percentile
        self.imputer = imputer

    def keep_mask(self, cam: torch.Tensor) -> torch.Tensor:
        """The mask ``(*S)`` float32: 1 for the voxels kept, 0 for those replaced."""
        cam64 = cam.to(torch.float64)
        if self.percentile == "auto":
            return (quantise(cam64) <= otsu_threshold(cam64)).to(torch.float32)
        threshold = percentile(cam64, float(self.percentile))
        return (cam64 < threshold).to(torch.float32)

    def __call__(self, input_tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Impute one sample ``(C, *S)`` where its map ``mask`` ``(*S)`` is most relevant."""
        cam = torch.as_tensor(mask, device=input_tensor.device)
        return self.imputer(input_tensor, self.keep_mask(cam).to(input_tensor.device))


class RemoveLeastRelevantFirst(RemoveMostRelevantFirst):
    """Replace the least relevant voxels: :class:`RemoveMostRelevantFirst` on ``1 - cam``.

    With ``percentile=p`` the ``100 - p`` per cent of voxels with the lowest map are replaced.
    """

    def __call__(self, input_tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cam = torch.as_tensor(mask, device=input_tensor.device)
        return super().__call__(input_tensor, 1 - cam)


class AveragerAcrossThresholds:
    """Mean over ``percentiles`` of ``imputer(percentile)(input_tensor, cams, targets, model)``.

    Args:
        imputer: a metric factory taking a percentile (e.g. ``ROADMostRelevantFirst``).
        percentiles: the percentiles to average over.
    """

    def __init__(
        self,
        imputer: Callable[[float], Any],
        percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    ) -> None:
        self.imputer = imputer
        self.percentiles = list(percentiles)
        if not self.percentiles:
            raise ConfigurationError("percentiles must hold at least one value.")

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: np.ndarray | torch.Tensor,
        targets: Sequence[Target] | None,
        model: nn.Module,
        **kwargs: Any,
    ) -> np.ndarray:
        """``(N,)`` float32: the mean score over the percentiles (keyword options go to each metric)."""
        scores = [
            np.asarray(self.imputer(p)(input_tensor, cams, targets, model, **kwargs), dtype=np.float32)
            for p in self.percentiles
        ]
        return np.mean(np.stack(scores), axis=0).astype(np.float32)
