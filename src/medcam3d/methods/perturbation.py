"""Perturbation methods: ScoreCAM and AblationCAM, batched under a memory budget, N-D.

Both run extra forward passes of the model under ``torch.inference_mode``: one per (sample, channel)
pair, stacked into chunks whose size follows ``batch_memory_bytes`` (or a fixed ``batch_size``).
A chunk mixes samples of the batch, and each row's score is its own sample's target applied to
its own output row. AblationCAM removes channels with a forward hook on the target layer that
returns the modified output; the hook is removed in ``finally``, so the model is unchanged even
when a chunk raises (out of memory, interrupted).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from medcam3d.core.base import BaseCAM
from medcam3d.core.checks import select_output
from medcam3d.core.context import CallContext
from medcam3d.core.layers import LayerSpec
from medcam3d.core.projection import first_component_projection
from medcam3d.core.tensors import minmax_normalize, resize_maps, spatial_mean
from medcam3d.errors import ConfigurationError

__all__ = [
    "ScoreCAM",
    "AblationCAM",
    "AblationLayer",
    "AblationLayerVit",
    "AblationLayerFasterRCNN",
    "PerturbationCAM",
    "DEFAULT_BATCH_MEMORY_BYTES",
    "LONG_RUN_FORWARDS",
]

logger = logging.getLogger(__name__)

#: default memory budget of one chunk of perturbed forward passes (1 GiB)
DEFAULT_BATCH_MEMORY_BYTES = 1 << 30
#: default of ``warn_forwards``: more perturbed forward passes than this log a warning first
LONG_RUN_FORWARDS = 300


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class PerturbationCAM(BaseCAM):
    """Shared machinery of the perturbation methods (not a method itself).

    Args (besides :class:`~medcam3d.core.base.BaseCAM`'s):
        batch_memory_bytes: memory budget of one chunk of perturbed forward passes, in bytes
            (default 1 GiB). The chunk size is the budget divided by an estimate of one sample's
            forward-pass memory (input + twice the largest layer output, measured by one probe
            forward of a single sample).
        batch_size: a fixed chunk size instead of the budget (pytorch-grad-cam's setting).
        top_k_channels: perturb only the ``k`` channels with the largest mean activation of each
            sample (the others get weight 0), to bound the cost to ``N × k`` forward passes.
        progress: show a tqdm bar over chunks (``False`` silences it).
        warn_forwards: before a layer needs more perturbed forward passes of the model than this
            (default 300), a warning is logged with the count, the time of one forward pass
            measured on this input, and how to bound the cost. ``None`` never warns.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *args: Any,
        batch_memory_bytes: int = DEFAULT_BATCH_MEMORY_BYTES,
        batch_size: int | None = None,
        top_k_channels: int | None = None,
        progress: bool = True,
        warn_forwards: int | None = LONG_RUN_FORWARDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, *args, **kwargs)
        if not _positive_int(batch_memory_bytes):
            raise ConfigurationError(
                f"batch_memory_bytes must be a positive number of bytes (an int, e.g. 1 << 30 for 1 GiB), "
                f"got {batch_memory_bytes!r}."
            )
        if batch_size is not None and not _positive_int(batch_size):
            raise ConfigurationError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        if top_k_channels is not None and not _positive_int(top_k_channels):
            raise ConfigurationError(
                f"top_k_channels must be a positive integer or None, got {top_k_channels!r}."
            )
        self.batch_memory_bytes = int(batch_memory_bytes)
        self.batch_size = batch_size
        self.top_k_channels = top_k_channels
        self.progress = progress
        self.warn_forwards = warn_forwards
        self._probe_cache: dict[tuple[int, ...], int] = {}

    # ------------------------------------------------------------------ cost
    #: the ways to bound the cost, named in the long-run warning
    cost_hints = "top_k_channels=... (perturb only the k most active channels), a smaller input"

    def warn_if_long(self, context: CallContext, forwards: int, detail: str) -> None:
        """Log a warning when ``forwards`` perturbed passes exceed ``warn_forwards``, with the time
        of one forward pass of one sample measured now and the ways to bound the cost."""
        if self.warn_forwards is None or forwards <= self.warn_forwards:
            return
        sample = context.input_tensor[:1]
        start = time.perf_counter()
        with torch.inference_mode():
            self.model(sample)
        seconds = time.perf_counter() - start
        logger.warning(
            "%s will run %d forward passes of the model for layer %r (%s). One forward pass of one sample "
            "takes %.3f s here, so this may take up to ~%.0f s (batches of %s are usually faster). Bound it "
            "with %s.",
            type(self).__name__,
            forwards,
            context.layer_name,
            detail,
            seconds,
            seconds * forwards,
            self.batch_size if self.batch_size is not None else "the memory budget",
            self.cost_hints,
        )

    # ------------------------------------------------------------------ chunking
    def _sample_forward_bytes(self, sample: torch.Tensor) -> int:
        """Estimated memory of a no-grad forward pass of one sample ``(1, C, *S)``, in bytes."""
        key = tuple(sample.shape)
        if key in self._probe_cache:
            return self._probe_cache[key]
        # the probe runs the model once on one sample, with a hook on every leaf module
        largest = [0]

        def record(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output.numel() * output.element_size())

        handles = [m.register_forward_hook(record) for m in self.model.modules() if not list(m.children())]
        try:
            with torch.inference_mode():
                self.model(sample)
        finally:
            for handle in handles:
                handle.remove()
        estimate = 2 * sample.numel() * sample.element_size() + 2 * largest[0]
        self._probe_cache[key] = estimate
        return estimate

    def chunk_size(self, sample: torch.Tensor) -> int:
        """Perturbed forward passes per chunk: ``batch_size`` if set, else budget / per-sample estimate."""
        if self.batch_size is not None:
            return int(self.batch_size)
        per_sample = max(1, self._sample_forward_bytes(sample))
        return max(1, self.batch_memory_bytes // per_sample)

    def channel_selection(self, activations: torch.Tensor) -> torch.Tensor:
        """``(N, k)`` indices of the channels to perturb for each sample (all, or the top-k by mean activation)."""
        n, k = activations.shape[:2]
        if self.top_k_channels is None or self.top_k_channels >= k:
            return torch.arange(k, device=activations.device).expand(n, k)
        return spatial_mean(activations).topk(self.top_k_channels, dim=1).indices.sort(dim=1).values

    def _chunks(self, jobs: int, size: int, what: str) -> Iterator[tuple[int, int]]:
        starts = range(0, jobs, size)
        bar = tqdm(starts, desc=what, unit="chunk", disable=not self.progress, leave=False)
        try:
            for start in bar:
                yield start, min(start + size, jobs)
        finally:
            bar.close()

    def _row_scores(
        self,
        context: CallContext,
        raw_output: Any,
        samples: torch.Tensor,
        transform: bool = True,
    ) -> torch.Tensor:
        """Score of each row of a perturbed batch: ``targets[samples[r]](output[r])`` → ``(B,)``.

        The output is mapped back to the targets' frame first (``aug_smooth``) when ``transform``.
        """
        output = select_output(raw_output, self.output_index)
        if transform and context.output_transform is not None:
            output = context.output_transform(output)
        targets = context.targets
        scores = []
        for row, sample in enumerate(samples.tolist()):
            value = targets[sample](output[row])
            value = torch.as_tensor(value, device=output.device, dtype=output.dtype)
            scores.append(value.sum())
        return torch.stack(scores).to(torch.float32)


class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al., 2020): each channel weighted by the score of the input masked with it.

    For channel ``k`` of sample ``i``: ``M_k`` = the activation ``A_k`` resized to the input
    (linear interpolation, N-D) and min-max scaled to [0, 1]; ``s_k = target_i(model(x_i ⊙ M_k))``;
    weights ``w = softmax_k(s)`` (channels left out by ``top_k_channels`` get 0). ``(N, K, *s)``
    → weights ``(N, K)``. Costs one forward pass per (sample, channel) whose activation is not
    constant (constant channels, e.g. dead ReLUs, all give the zero input: scored once); see
    :class:`PerturbationCAM` for chunking and the memory budget.
    """

    cost_hints = "top_k_channels=... (score only the k most active channels), or a smaller input"

    def weights(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        x = context.input_tensor
        n, k = activations.shape[:2]
        selected = self.channel_selection(activations)  # (N, k')
        chosen = selected.shape[1]
        samples = torch.arange(n, device=x.device).repeat_interleave(chosen)
        channels = selected.reshape(-1)
        scores = torch.empty(n * chosen, dtype=torch.float32, device=x.device)
        # A constant channel (a dead ReLU channel, typically) gives the all-zero mask: every one of
        # them scores target_i(model(0)), computed once instead of once per channel.
        flat = activations.reshape(n, k, -1)
        constant = (flat.amax(dim=2) <= flat.amin(dim=2))[samples, channels]
        varying = (~constant).nonzero().squeeze(1)
        need_zero = bool(constant.any())
        zero_output: torch.Tensor | None = None
        self.warn_if_long(
            context,
            int(varying.numel()) + int(need_zero),
            f"{n} sample(s) x {chosen} channel(s), constant channels scored once",
        )
        with torch.inference_mode():
            if varying.numel():
                size = self.chunk_size(x[:1])
                spatial = tuple(x.shape[2:])
                for start, stop in self._chunks(varying.numel(), size, "ScoreCAM"):
                    jobs = varying[start:stop]
                    rows_s, rows_c = samples[jobs], channels[jobs]
                    masks = resize_maps(
                        activations[rows_s, rows_c].unsqueeze(1).float(), spatial
                    )  # (B, 1, *S)
                    flat_masks = masks.reshape(masks.shape[0], -1)
                    low = flat_masks.min(dim=1).values
                    high = flat_masks.max(dim=1).values
                    shape = (-1, *([1] * (masks.ndim - 1)))
                    masks = (masks - low.reshape(shape)) / (high - low + 1e-8).reshape(shape)
                    perturbed = x[rows_s] * masks.to(x.dtype)
                    if need_zero and zero_output is None:  # the zero input rides along in the first chunk
                        perturbed = torch.cat([perturbed, torch.zeros_like(x[:1])])
                        output = select_output(self.model(perturbed), self.output_index)
                        zero_output = output[-1:]
                        scores[jobs] = self._row_scores(context, output[:-1], rows_s)
                    else:
                        scores[jobs] = self._row_scores(context, self.model(perturbed), rows_s)
            if need_zero:
                if zero_output is None:
                    zero_output = select_output(self.model(torch.zeros_like(x[:1])), self.output_index)
                if context.output_transform is not None:
                    zero_output = context.output_transform(zero_output)
                zero_scores = torch.stack(
                    [torch.as_tensor(context.targets[i](zero_output[0])).sum().float() for i in range(n)]
                )
                scores[constant] = zero_scores[samples[constant]]
        weights = torch.zeros(n, k, dtype=torch.float32, device=x.device)
        weights.scatter_(1, selected, torch.softmax(scores.reshape(n, chosen), dim=1))
        return weights.to(activations.dtype)


def _ablation_value(output: torch.Tensor) -> float:
    """pytorch-grad-cam's ablation value: 0 when the layer's minimum is 0 (after a ReLU), else far below it."""
    low = float(output.min())
    return 0.0 if low == 0 else low - 1e7


class AblationLayer(nn.Module):
    """pytorch-grad-cam's ablation protocol, N-D: what replaces a target layer's output in AblationCAM.

    :meth:`set_next_batch` stores sample ``input_batch_index`` of the layer's recorded output,
    repeated ``num_channels_to_ablate`` times; ``indices`` holds the channel to remove in each
    row; calling the layer returns the stored output with, in row ``i``, channel ``indices[i]``
    set to 0 when the output's minimum is 0 and to ``min − 1e7`` otherwise (pytorch-grad-cam's
    rule). AblationCAM applies it with a forward hook on the target layer, never by swapping
    the module. Subclass it (as pytorch-grad-cam's users do) to change how a channel is removed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.activations: Any = None
        self.indices: Any = None

    def objectiveness_mask_from_svd(self, activations: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
        """``(K, *s)`` → boolean ``(*s)``: where the absolute first-component projection, min-max
        scaled, exceeds ``threshold`` (the voxels worth ablating for)."""
        projection = first_component_projection(activations[None].float())[0].abs()
        return minmax_normalize(projection[None])[0] > threshold

    def activations_to_be_ablated(
        self, activations: Any, ratio_channels_to_ablate: float = 1.0
    ) -> torch.Tensor:
        """The channels of one sample's ``(K, *s)`` activations to ablate (a long tensor).

        All channels for ``ratio = 1``; otherwise the ``ceil(K · ratio)`` channels that lie most
        inside :meth:`objectiveness_mask_from_svd` (``Σ mask · a / Σ a`` with ``a`` each channel's
        absolute values min-max scaled). pytorch-grad-cam 1.5.7 returns both the highest- and the
        lowest-scoring ``int(K · ratio)`` channels, so its ratio 0.5 ablates every channel.
        """
        acts = torch.as_tensor(activations)
        k = acts.shape[0]
        if ratio_channels_to_ablate >= 1.0:
            self.indices = torch.arange(k, device=acts.device)
            return self.indices
        mask = self.objectiveness_mask_from_svd(acts).to(torch.float32)
        flat = acts.abs().reshape(k, -1).float()
        flat = flat - flat.min(dim=1, keepdim=True).values
        flat = flat / flat.max(dim=1, keepdim=True).values.clamp_min(1e-12)
        scores = (flat * mask.reshape(1, -1)).sum(dim=1) / flat.sum(dim=1).clamp_min(1e-12)
        keep = max(1, math.ceil(k * ratio_channels_to_ablate))
        self.indices = scores.topk(keep).indices.sort().values
        return self.indices

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        """Store sample ``input_batch_index`` of ``activations`` ``(N, K, *s)``, repeated
        ``num_channels_to_ablate`` times (one row per channel to remove)."""
        sample = activations[input_batch_index].clone().unsqueeze(0)
        self.activations = sample.repeat(num_channels_to_ablate, *([1] * (sample.ndim - 1)))

    def __call__(self, x: Any = None) -> Any:
        output = self.activations
        value = _ablation_value(output)
        for row in range(output.size(0)):
            output[row, self.indices[row]] = value
        return output


class AblationLayerVit(AblationLayer):
    """:class:`AblationLayer` for transformer tokens ``(N, tokens, channels)``: the channel axis is last."""

    def __call__(self, x: Any = None) -> Any:
        output = self.activations.transpose(1, self.activations.ndim - 1)
        value = _ablation_value(output)
        for row in range(output.size(0)):
            output[row, self.indices[row]] = value
        return output.transpose(self.activations.ndim - 1, 1)


class AblationLayerFasterRCNN(AblationLayer):
    """:class:`AblationLayer` for a torchvision FPN backbone, whose output is a dict of pyramid levels
    (``"0"``–``"3"``, ``"pool"``) of 256 channels each: ablation index ``j`` is channel ``j % 256`` of
    level ``j // 256``, set to −1000 (pytorch-grad-cam's rule). medcam3d's taps need a tensor output,
    so this layer serves code that drives the protocol itself.
    """

    levels = ("0", "1", "2", "3", "pool")

    def set_next_batch(self, input_batch_index: int, activations: Any, num_channels_to_ablate: int) -> None:
        self.activations = OrderedDict()
        for key, value in activations.items():
            sample = value[input_batch_index].clone().unsqueeze(0)
            self.activations[key] = sample.repeat(num_channels_to_ablate, *([1] * (sample.ndim - 1)))

    def __call__(self, x: Any = None) -> Any:
        result = self.activations
        rows = next(iter(result.values())).size(0)
        for row in range(rows):
            index = int(self.indices[row])
            result[self.levels[index // 256]][row, index % 256] = -1000
        return result


class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channel weight = relative drop of the score when the
    channel is removed, ``w_k = (y − y_k) / y``.

    ``y`` is the target score of the unmodified model, ``y_k`` the score with channel ``k`` of
    the target layer removed by a forward hook on that layer. ``(N, K, *s)`` → weights ``(N, K)``.

    Args (pytorch-grad-cam's, by position or keyword, then :class:`PerturbationCAM`'s):
        ablation_layer: ``None`` (default) sets the channel to ``ablation_value`` (0, as the
            paper), chunks mixing samples of the batch; with a ``reshape_transform`` (transformer
            tokens) the channel axis of the layer's raw output is taken to be its last axis. An
            :class:`AblationLayer` (or a subclass, or :class:`AblationLayerVit`) runs
            pytorch-grad-cam's protocol instead: ``set_next_batch``/``indices``/``__call__``,
            sample by sample — ``AblationLayer()`` reproduces pytorch-grad-cam's ablation value.
        batch_size: perturbed forward passes per chunk (pytorch-grad-cam's default is 32; ``None``,
            the default here, follows ``batch_memory_bytes``).
        ratio_channels_to_ablate: in (0, 1]; below 1 only ``ceil(K · ratio)`` channels are ablated
            per sample (the most active ones, or the :class:`AblationLayer`'s choice); the others
            get weight 0.
    """

    cost_hints = (
        "ratio_channels_to_ablate=... (e.g. 0.1 ablates a tenth of the channels) or top_k_channels=..."
    )

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[LayerSpec] | LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ablation_layer: AblationLayer | None = None,
        batch_size: int | None = None,
        ratio_channels_to_ablate: float = 1.0,
        *,
        ablation_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, batch_size=batch_size, **kwargs)
        if not 0.0 < ratio_channels_to_ablate <= 1.0:
            raise ValueError(f"ratio_channels_to_ablate must be in (0, 1], got {ratio_channels_to_ablate}.")
        if ablation_layer is not None and not callable(getattr(ablation_layer, "set_next_batch", None)):
            raise TypeError(
                "ablation_layer must be an AblationLayer (set_next_batch / indices / __call__), e.g. "
                "medcam3d.ablation_layer.AblationLayer()."
            )
        self.ablation_layer = ablation_layer
        self.ablation_value = float(ablation_value)
        self.ratio_channels_to_ablate = ratio_channels_to_ablate

    def channel_selection(self, activations: torch.Tensor) -> torch.Tensor:
        if self.ratio_channels_to_ablate < 1.0 and self.top_k_channels is None:
            k = max(1, math.ceil(activations.shape[1] * self.ratio_channels_to_ablate))
            return spatial_mean(activations).topk(k, dim=1).indices.sort(dim=1).values
        return super().channel_selection(activations)

    def weights(
        self, activations: torch.Tensor, grads: torch.Tensor | None, context: CallContext
    ) -> torch.Tensor:
        x = context.input_tensor
        n, k = activations.shape[:2]
        original = self._row_scores(
            context, context.target_output(), torch.arange(n, device=x.device), transform=False
        )
        if self.ablation_layer is not None:
            ablated = self._protocol_scores(context, activations, original)
        else:
            ablated = self._hook_scores(context, activations, original)
        denominator = torch.where(original.abs() < 1e-12, torch.full_like(original, 1e-12), original)
        weights = (original[:, None] - ablated) / denominator[:, None]
        return weights.to(activations.dtype)

    def _hook_scores(
        self, context: CallContext, activations: torch.Tensor, original: torch.Tensor
    ) -> torch.Tensor:
        """``(N, K)`` ablated scores: chunks mixing samples, channels set to ``ablation_value``."""
        x = context.input_tensor
        n, k = activations.shape[:2]
        selected = self.channel_selection(activations)
        chosen = selected.shape[1]
        self.warn_if_long(context, n * chosen, f"{n} sample(s) x {chosen} channel(s)")
        samples = torch.arange(n, device=x.device).repeat_interleave(chosen)
        channels = selected.reshape(-1)
        size = self.chunk_size(x[:1])
        scores = torch.empty(n * chosen, dtype=torch.float32, device=x.device)
        current: dict[str, torch.Tensor] = {}
        channel_axis = -1 if self.reshape_transform is not None else 1
        value = self.ablation_value

        def ablate(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(output.shape[0], device=output.device)
            out = output.movedim(channel_axis, 1).clone()
            out[rows, current["channels"]] = value
            return out.movedim(1, channel_axis)

        handle = context.current_layer().register_forward_hook(ablate)
        try:
            with torch.inference_mode():
                for start, stop in self._chunks(n * chosen, size, "AblationCAM"):
                    rows_s = samples[start:stop]
                    current["channels"] = channels[start:stop]
                    scores[start:stop] = self._row_scores(context, self.model(x[rows_s]), rows_s)
        finally:
            handle.remove()
        ablated = torch.zeros(n, k, dtype=torch.float32, device=x.device) + original[:, None]
        ablated.scatter_(1, selected, scores.reshape(n, chosen))
        return ablated

    def _protocol_scores(
        self, context: CallContext, activations: torch.Tensor, original: torch.Tensor
    ) -> torch.Tensor:
        """``(N, K)`` ablated scores through pytorch-grad-cam's :class:`AblationLayer` protocol."""
        layer_module = context.current_layer()
        ablation = self.ablation_layer
        assert ablation is not None
        x = context.input_tensor
        n, k = activations.shape[:2]
        recorded: dict[str, Any] = {}
        state = {"active": False}

        def hook(module: nn.Module, inputs: object, output: Any) -> Any:
            if not state["active"]:
                recorded["output"] = output
                return None
            return ablation(output)

        selections = []
        for i in range(n):
            if self.top_k_channels is not None:
                chosen = self.channel_selection(activations[i : i + 1])[0]
            else:
                chosen = torch.as_tensor(
                    ablation.activations_to_be_ablated(activations[i], self.ratio_channels_to_ablate)
                ).to(x.device, torch.long)
            selections.append(chosen)
        self.warn_if_long(context, sum(int(c.numel()) for c in selections), f"{n} sample(s), {k} channel(s)")
        ablated = torch.zeros(n, k, dtype=torch.float32, device=x.device) + original[:, None]
        size = self.chunk_size(x[:1])
        handle = layer_module.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                self.model(x)  # the layer's raw output, for set_next_batch
                state["active"] = True
                for i, chosen in enumerate(selections):
                    for start, stop in self._chunks(int(chosen.numel()), size, f"AblationCAM sample {i}"):
                        ablation.set_next_batch(
                            input_batch_index=i,
                            activations=recorded["output"],
                            num_channels_to_ablate=stop - start,
                        )
                        ablation.indices = chosen[start:stop]
                        rows = torch.full((stop - start,), i, device=x.device, dtype=torch.long)
                        scores = self._row_scores(context, self.model(x[rows]), rows)
                        ablated[i, chosen[start:stop]] = scores
        finally:
            handle.remove()
            ablation.activations = None
            recorded.clear()
        return ablated
