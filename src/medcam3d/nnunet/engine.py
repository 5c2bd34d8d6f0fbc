"""The patch engine with nnU-Net's geometry: its step rule, Gaussian, padding, and its logit arithmetic.

:class:`NnUNetSlidingWindow` is :class:`medcam3d.sliding.SlidingWindowCAM` with nnU-Net's
``compute_steps_for_sliding_window``, ``compute_gaussian`` and ``pad_nd_image`` plugged in.
:class:`LogitAccumulator` collects the logits of the same forward passes exactly as
``nnUNetPredictor`` does (mirrored outputs averaged, multiplied by the half-precision Gaussian,
added into half-precision sums, divided by the summed Gaussian).

The Gaussian is computed once per case (:meth:`SlidingWindowCAM.new_state`), in nnU-Net's half
precision: the logits use it as it is, the CAMs its float32 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medcam3d.core.protocol import CAMMethod
from medcam3d.sliding import SlidingState, SlidingWindowCAM

__all__ = ["LogitAccumulator", "NnUNetSlidingWindow", "fold_logits_and_maps", "nnunet_gaussian"]


def nnunet_gaussian(patch_size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """nnU-Net's Gaussian importance map ``(*patch_size)`` in float16, exactly as
    ``nnUNetPredictor`` computes it (σ = patch / 8, maximum 10). The tensor is nnU-Net's cached
    one: do not modify it in place."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)


class NnUNetSlidingWindow(SlidingWindowCAM):
    """The generic engine with nnU-Net's step rule, Gaussian and padding.

    Args:
        cam: the CAM method (any :class:`~medcam3d.core.protocol.CAMMethod`) on the plain network.
        patch_size: the configuration's patch size.
        step_size: ``tile_step_size``.
        mirror_axes: the allowed mirroring axes, or ``None`` without test-time mirroring.
        use_gaussian: the predictor's ``use_gaussian`` (``False``: uniform weights, as nnU-Net).
        progress: a tqdm bar over patches.
        autocast: ``torch.autocast`` around each forward pass on CUDA (as nnU-Net).
    """

    def __init__(
        self,
        cam: CAMMethod,
        patch_size: Sequence[int],
        step_size: float,
        mirror_axes: Sequence[int] | None,
        use_gaussian: bool = True,
        progress: bool = True,
        autocast: bool = False,
    ) -> None:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        super().__init__(
            cam,
            patch_size,
            step_size=step_size,
            mirror_axes=mirror_axes,
            gaussian=use_gaussian,
            normalization="none",
            progress=progress,
            steps_fn=compute_steps_for_sliding_window,
            gaussian_fn=nnunet_gaussian,
            autocast=autocast,
        )

    def pad_volume(self, volume: torch.Tensor, pad: list[tuple[int, int]]) -> torch.Tensor:
        """nnU-Net's ``pad_nd_image`` (the same centred zero padding as the generic engine's)."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        padded, _ = pad_nd_image(volume, self.patch_size, "constant", {"value": 0}, True, None)
        expected = tuple(s + a + b for s, (a, b) in zip(volume.shape[1:], pad))
        if tuple(padded.shape[1:]) != expected:  # pragma: no cover - same rule on both sides
            raise RuntimeError(
                f"Padding mismatch: nnU-Net padded to {tuple(padded.shape)}, expected {expected}."
            )
        return padded


@dataclass
class LogitAccumulator:
    """nnU-Net's logit sums of one model (fold) over the padded volume ``(heads, *P)``.

    Attributes:
        logits: ``(heads, *P)`` float16, Σ importance × (mean over mirrors of the outputs).
        n_predictions: ``(*P)`` float16, Σ importance.
    """

    logits: torch.Tensor
    n_predictions: torch.Tensor

    @classmethod
    def zeros(cls, num_heads: int, state: SlidingState) -> LogitAccumulator:
        """Empty sums on the state's device, for its padded shape ``P``."""
        shape = tuple(state.weight.shape)
        device = state.weight.device
        return cls(
            torch.zeros((num_heads, *shape), dtype=torch.half, device=device),
            torch.zeros(shape, dtype=torch.half, device=device),
        )

    def add(
        self, slicer: tuple[slice | int, ...], outputs: list[torch.Tensor], importance: torch.Tensor
    ) -> None:
        """Add one patch: ``outputs`` (one ``(heads, *patch)`` per mirror combination, flipped back)
        averaged, weighted by ``importance`` (the half Gaussian the CAMs were weighted with), as
        ``nnUNetPredictor._internal_predict_sliding_window_return_logits`` does, step by step."""
        prediction = outputs[0].clone()
        for extra in outputs[1:]:
            prediction += extra
        if len(outputs) > 1:
            prediction /= len(outputs)
        prediction *= importance
        # the sums live on the model's device, or on the CPU for a volume too big for it
        self.logits[slicer] += prediction.to(self.logits.device)
        self.n_predictions[slicer[1:]] += importance.to(self.n_predictions.device)

    def mean(self, crop: tuple[slice, ...]) -> torch.Tensor:
        """The weighted mean logits ``(heads, *S)`` float16 (in place), padding removed by ``crop``.

        Raises ``RuntimeError`` on infinite values, as nnU-Net does.
        """
        torch.div(self.logits, self.n_predictions, out=self.logits)
        if torch.any(torch.isinf(self.logits)):
            raise RuntimeError("Encountered inf in the accumulated logits (as nnU-Net would).")
        return self.logits[(slice(None), *crop)]


def fold_logits_and_maps(
    engine: NnUNetSlidingWindow,
    network: torch.nn.Module,
    parameters: Sequence[dict[str, Any]],
    data: torch.Tensor,
    targets: Sequence[Any],
    num_heads: int,
    description: str = "patches",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every fold over ``data`` ``(C, *S)``: the fold-averaged logits ``(heads, *S)`` (float16 on
    the CPU, as ``predict_logits_from_preprocessed_data``) and the raw Gaussian-weighted mean maps
    ``(T, *S)`` over all folds (float32, on the device, not normalised).

    ``network`` gets each fold's ``parameters`` in turn (the plain module; for a compiled model the
    one inside the wrapper).
    """
    state = engine.new_state(tuple(data.shape), len(targets))
    prediction: torch.Tensor | None = None
    for index, params in enumerate(parameters):
        network.load_state_dict(params)
        accumulator = LogitAccumulator.zeros(num_heads, state)
        fold_desc = (
            description if len(parameters) == 1 else f"{description} (model {index + 1}/{len(parameters)})"
        )
        engine.accumulate(data, targets, state=state, description=fold_desc, on_outputs=accumulator.add)
        fold_logits = accumulator.mean(state.crop).to("cpu")
        if prediction is None:
            prediction = fold_logits
        else:
            prediction += fold_logits
    if prediction is None:
        raise RuntimeError("The predictor holds no model parameters (list_of_parameters is empty).")
    if len(parameters) > 1:
        prediction /= len(parameters)
    return prediction, engine.raw_mean(state)
