"""Sliding-window CAM for volumes larger than the network's input.

The volume is cut into overlapping patches (the step is a fraction of the patch size, as in
nnU-Net), each patch is run through any CAM method, optionally mirrored for test-time
augmentation (flip the input, compute, flip the map back), and the *raw* (not normalised)
per-patch maps are accumulated with a Gaussian importance weight (σ = patch / 8, as nnU-Net).
The sum is divided by the accumulated weight and normalised once at the end, so every patch
is on one scale. Memory grows with the volume, not with the number of patches: only the
accumulators ``(T, *S)`` and one patch at a time are held.

Axis order: ``volume`` is ``(C, *S)`` (channels first, then the spatial axes in the order the
model expects, e.g. ``(C, D, H, W)``); the maps are ``(T, *S)``, one per target.

The method is any :class:`~medcam3d.core.protocol.CAMMethod` (every method class, and wrappers such
as FinerCAM); for several targets its ``compute_multi`` takes one forward pass per patch.

A patch may have one spatial axis fewer than the volume (a 2D network on a 3D volume, as
nnU-Net's ``2d`` configuration): the patches then run over the slices along the first spatial
axis.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F

from medcam3d.core.model import model_device
from medcam3d.core.protocol import CAMMethod
from medcam3d.errors import ConfigurationError, InputShapeError, TargetError

__all__ = [
    "accumulator_device_for",
    "PatchInfo",
    "PatchOutputsHook",
    "PatchTarget",
    "SlidingFinerTarget",
    "SlidingState",
    "SlidingWindowCAM",
    "SlidingSegmentationTarget",
    "compute_steps",
    "gaussian_importance_map",
    "mirror_combinations",
    "patch_slicers",
    "sliding_window_cam",
]

logger = logging.getLogger(__name__)

Target = Callable[[torch.Tensor], torch.Tensor]
Normalization = Literal["volume", "slice", "none"]


# ---------------------------------------------------------------------------------- geometry
def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Patch start positions per axis.

    The number of steps along an axis is the smallest that covers it with a step of at most
    ``step_size * patch``; the steps are then spread evenly between 0 and ``image - patch``
    (nnU-Net's rule). ``image_size`` must be at least ``patch_size`` on every axis.
    """
    if not 0 < step_size <= 1:
        raise ConfigurationError(
            f"step_size must be in (0, 1] (a fraction of the patch size), got {step_size}."
        )
    if len(image_size) != len(patch_size):
        raise InputShapeError(
            f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in rank."
        )
    steps = []
    for image, patch in zip(image_size, patch_size):
        if image < patch:
            raise InputShapeError(
                f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}."
            )
        n = int(math.ceil((image - patch) / (patch * step_size))) + 1
        if n == 1:
            steps.append([0])
        else:
            spacing = (image - patch) / (n - 1)
            steps.append([int(round(spacing * i)) for i in range(n)])
    return steps


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A Gaussian of σ = ``sigma_scale`` × patch per axis, centred at ``patch // 2``, maximum 1.

    Shape ``patch_size``. Values further than 4σ from the centre (where the Gaussian is cut off)
    are set to the smallest positive value, so no voxel gets zero weight.
    """
    profile: torch.Tensor | None = None
    for size in patch_size:
        sigma = max(size * sigma_scale, 1e-6)
        coords = torch.arange(size, dtype=torch.float64) - (size // 2)
        g = torch.exp(-0.5 * (coords / sigma) ** 2)
        g[coords.abs() > int(4 * sigma + 0.5)] = 0.0
        profile = g if profile is None else profile[..., None] * g
    assert profile is not None
    profile = profile / profile.max()
    positive = profile[profile > 0]
    profile = torch.where(profile > 0, profile, positive.min())
    return profile.to(device=device, dtype=dtype)


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Flip-axis combinations for mirroring TTA, the identity ``()`` first.

    ``axes`` are spatial axes (0 = first spatial axis); e.g. ``(0, 1, 2)`` gives 8 combinations.
    """
    combos: list[tuple[int, ...]] = [()]
    if axes:
        axes = list(axes)
        combos += [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
    return combos


def patch_slicers(
    image_size: Sequence[int],
    patch_size: Sequence[int],
    step_size: float,
    steps_fn: Callable[[Sequence[int], Sequence[int], float], Sequence[Sequence[int]]] | None = None,
) -> list[tuple[slice | int, ...]]:
    """Index tuples into a ``(C, *image_size)`` volume, one per patch.

    When ``patch_size`` has one axis fewer than ``image_size``, each tuple also picks one slice
    (an ``int``) along the first spatial axis. The order is the one nnU-Net uses (slices outer,
    then the axes in order, the last axis innermost).
    """
    steps_fn = steps_fn or compute_steps
    image_size = tuple(int(s) for s in image_size)
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) == len(image_size) - 1:
        steps = steps_fn(image_size[1:], patch_size, step_size)
        return [
            (slice(None), d, *(slice(s, s + p) for s, p in zip(starts, patch_size)))
            for d in range(image_size[0])
            for starts in itertools.product(*steps)
        ]
    if len(patch_size) != len(image_size):
        raise InputShapeError(
            f"A patch of size {patch_size} does not fit a volume of spatial size {image_size}: the patch must "
            "have as many axes as the volume, or one fewer (a 2D network on a 3D volume)."
        )
    steps = steps_fn(image_size, patch_size, step_size)
    return [
        (slice(None), *(slice(s, s + p) for s, p in zip(starts, patch_size)))
        for starts in itertools.product(*steps)
    ]


# ---------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class PatchInfo:
    """Where a patch lies: ``slicer`` indexes the padded ``(C, *S)`` volume; ``flip_axes`` are the
    spatial axes of the patch (0 = first) mirrored for this forward pass."""

    slicer: tuple[slice | int, ...]
    flip_axes: tuple[int, ...]


@runtime_checkable
class PatchTarget(Protocol):
    """A target defined on the whole volume, turned into a per-patch target.

    The engine calls :meth:`prepare` once per volume (before the first patch), then
    :meth:`for_patch` for every (patch, mirror) forward pass. (A target that only defines
    ``for_patch`` is accepted too: ``prepare`` is called when it exists.)
    """

    def prepare(self, spatial_shape: tuple[int, ...], pad: list[tuple[int, int]]) -> None:
        """Get ready for a volume of spatial shape ``spatial_shape`` ``(*S)``, zero-padded by
        ``pad`` (one ``(before, after)`` pair per spatial axis) to the shape the slicers index."""
        ...

    def for_patch(self, info: PatchInfo) -> Target:
        """The target of one forward pass: a callable on one sample's output ``(C_out, *patch)``
        (flipped like the patch, as the network returns it) giving a scalar."""
        ...


def _check_class(category: int, output: torch.Tensor, what: str) -> None:
    if output.ndim < 2:
        raise TargetError(
            f"{what} needs a segmentation output (classes, *spatial); this output has shape "
            f"{tuple(output.shape)}."
        )
    if not -output.shape[0] <= category < output.shape[0]:
        raise TargetError(
            f"Target class {category} is not a channel of the output of shape {tuple(output.shape)}."
        )


class SlidingSegmentationTarget:
    """Seg-Grad-CAM target on the whole volume, class-specific.

    ``mask=None``: in each patch, the ``category`` logit summed over the voxels that this
    patch's forward pass predicts as ``category`` (the default, Seg-Grad-CAM). ``mask`` of the
    volume's spatial shape ``(*S)``: the logit summed over the mask's non-zero voxels (e.g. the
    ground truth), cropped to each patch and mirrored with it. ``whole_channel=True``: the
    logit summed over the whole patch.
    """

    def __init__(self, category: int, mask: Any = None, whole_channel: bool = False) -> None:
        if whole_channel and mask is not None:
            raise TargetError("Give either a mask or whole_channel=True, not both.")
        self.category = int(category)
        self.mask = None if mask is None else torch.as_tensor(mask)
        self.whole_channel = whole_channel
        self._padded_mask: torch.Tensor | None = None

    def prepare(self, spatial_shape: tuple[int, ...], pad: list[tuple[int, int]]) -> None:
        """Check the mask against the volume's spatial shape ``(*S)`` and pad it like the volume
        (:class:`PatchTarget`); nothing to do without a mask."""
        if self.mask is None:
            return
        if tuple(self.mask.shape) != tuple(spatial_shape):
            raise TargetError(
                f"The target mask has shape {tuple(self.mask.shape)} but the volume's spatial shape is "
                f"{tuple(spatial_shape)}. Resample the mask to the volume's grid first."
            )
        flat = [v for before_after in reversed(pad) for v in before_after]
        mask = (self.mask != 0).to(torch.float32)
        self._padded_mask = F.pad(mask, flat) if any(flat) else mask

    def patch_mask(self, info: PatchInfo) -> torch.Tensor | None:
        """The mask ``(*patch)`` of this patch, cropped and mirrored with it; ``None`` without a mask."""
        if self.mask is None:
            return None
        if self._padded_mask is None:
            raise TargetError(
                "The target has a mask but prepare() was not called: pass it to SlidingWindowCAM, which "
                "calls prepare(spatial_shape, pad) once per volume."
            )
        patch_mask = self._padded_mask[info.slicer[1:]]
        return torch.flip(patch_mask, info.flip_axes) if info.flip_axes else patch_mask

    def for_patch(self, info: PatchInfo) -> Target:
        from medcam3d.core.targets import SemanticSegmentationTarget

        category = self.category
        if self.whole_channel:

            def whole(output: torch.Tensor) -> torch.Tensor:
                _check_class(category, output, "A whole-channel target")
                return output[category].sum()

            return whole
        return SemanticSegmentationTarget(category, mask=self.patch_mask(info), warn_empty=False)


class SlidingFinerTarget(SlidingSegmentationTarget):
    """FinerCAM's score for segmentation, per patch: class ``category`` against its most similar
    classes, voxel by voxel, summed over a region ``R`` of the patch::

        Σ_{v ∈ R} Σ_j p_j(v) (y_k(v) − α y_j(v)) / Σ_j p_j(v)

    with ``y`` the logits and ``p`` the softmax over the classes at voxel ``v``
    (:class:`~medcam3d.core.targets.FinerWeightedTarget` applied to every voxel). ``R`` is chosen
    as in :class:`SlidingSegmentationTarget` (the voxels the patch predicts as ``category`` by
    default, ``mask``, or the whole patch). The comparison classes ``j`` are
    ``comparison_categories`` when given; otherwise, per patch, the classes whose mean logit over
    ``R`` is closest to class ``category``'s, at similarity ranks ``comparison_ranks`` (FinerCAM's
    default 1, 2, 3; rank 0 is the class itself), as :class:`~medcam3d.methods.finer.FinerAutoTarget`
    picks them for a classifier. With two classes this is ``y_k − α y_0``: the class against the
    background.
    """

    def __init__(
        self,
        category: int,
        mask: Any = None,
        whole_channel: bool = False,
        *,
        comparison_categories: Sequence[int] | None = None,
        comparison_ranks: Sequence[int] | None = None,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(category, mask=mask, whole_channel=whole_channel)
        self.comparison_categories = (
            None if comparison_categories is None else [int(c) for c in comparison_categories]
        )
        self.comparison_ranks = None if comparison_ranks is None else [int(r) for r in comparison_ranks]
        self.alpha = float(alpha)

    def for_patch(self, info: PatchInfo) -> Target:
        from medcam3d.core.targets import FinerWeightedTarget
        from medcam3d.methods.finer import FinerAutoTarget

        category, alpha, whole_channel = self.category, self.alpha, self.whole_channel
        fixed, ranks = self.comparison_categories, self.comparison_ranks
        patch_mask = self.patch_mask(info)

        def finer(output: torch.Tensor) -> torch.Tensor:
            _check_class(category, output, "SlidingFinerTarget")
            main = category % output.shape[0]
            if whole_channel:
                region = torch.ones_like(output[main])
            elif patch_mask is None:
                region = (output.detach().argmax(dim=0) == main).to(output.dtype)
            else:
                if tuple(patch_mask.shape) != tuple(output.shape[1:]):
                    raise TargetError(
                        f"The patch mask has shape {tuple(patch_mask.shape)} but the output's spatial shape is "
                        f"{tuple(output.shape[1:])}."
                    )
                region = (patch_mask != 0).to(device=output.device, dtype=output.dtype)
            if fixed is not None:
                others = [c for c in fixed if c % output.shape[0] != main]
            else:
                flat = output.detach().flatten(1)
                inside = region.detach().flatten() > 0
                mean_logits = flat[:, inside].mean(dim=1) if bool(inside.any()) else flat.mean(dim=1)
                others = (
                    FinerAutoTarget(alpha, ranks, target_idx=main).resolve(mean_logits).comparison_categories
                )
            per_voxel = FinerWeightedTarget(main, others, alpha)(output)  # (*patch)
            return (per_voxel * region).sum()

        return finer


# ---------------------------------------------------------------------------------- the engine
PatchOutputsHook = Callable[[tuple[Union[slice, int], ...], list[torch.Tensor], torch.Tensor], None]
"""``hook(slicer, outputs, importance)``: the model outputs ``(C_out, *patch)`` of one patch, one per
mirror combination (flipped back), where ``slicer`` indexes the padded ``(C, *P)`` volume and
``importance`` ``(*patch)`` is the patch weight the engine used (in the dtype its Gaussian
function returned)."""


@dataclass
class SlidingState:
    """Accumulators over patches (and over several runs, e.g. model folds), on ``device``.

    ``map_sum`` ``(T, *P)``: Σ importance × raw map; ``weight`` ``(*P)``: Σ importance (once per
    forward pass); ``P`` is the padded spatial shape; ``crop`` removes the padding;
    ``importance`` ``(*patch)``: the weight of one patch, computed once (by
    :meth:`SlidingWindowCAM.new_state`, or on the first :meth:`~SlidingWindowCAM.accumulate`), in
    the dtype the Gaussian function returned (float16 for nnU-Net's); the maps are weighted with
    its float32 values.
    """

    map_sum: torch.Tensor
    weight: torch.Tensor
    crop: tuple[slice, ...]
    pad: list[tuple[int, int]]
    n_patches: int = 0
    importance: torch.Tensor | None = None


def _check_cam(cam: Any) -> None:
    """Accept any :class:`~medcam3d.core.protocol.CAMMethod` (a ``model`` and ``compute``; a missing
    ``compute_multi`` falls back to one ``compute`` per target)."""
    if isinstance(cam, CAMMethod):
        return
    missing = [name for name in ("model", "compute") if getattr(cam, name, None) is None]
    if not missing and isinstance(cam.model, torch.nn.Module) and callable(cam.compute):
        return
    raise ConfigurationError(
        f"cam must be a CAM method instance (medcam3d.core.protocol.CAMMethod: a .model and .compute(x, "
        f"targets)), e.g. GradCAM(model, target_layers=[...]); got {type(cam).__name__}"
        + (f", which has no {' or '.join(missing)}." if missing else ".")
    )


def accumulator_device_for(
    device: torch.device, nbytes: int, free_bytes: int | None = None, share: float = 0.5
) -> torch.device:
    """Where accumulators of ``nbytes`` go for a model on ``device``: ``device`` itself when it is
    the CPU or when they take at most ``share`` of its free memory (``free_bytes``, default
    ``torch.cuda.mem_get_info`` on CUDA), else the CPU (logged), as nnU-Net falls back from
    ``perform_everything_on_device``."""
    if device.type == "cpu":
        return device
    if free_bytes is None:
        if device.type != "cuda":
            return device
        free_bytes, _ = torch.cuda.mem_get_info(device)
    if nbytes <= share * free_bytes:
        return device
    logger.info(
        "The sums over patches need %.1f GiB, more than %.0f%% of the %.1f GiB free on %s: accumulating on the CPU",
        nbytes / 2**30,
        share * 100,
        free_bytes / 2**30,
        device,
    )
    return torch.device("cpu")


class SlidingWindowCAM:
    """Patch-wise CAM of a volume larger than the network's input.

    Args:
        cam: any CAM method instance (:class:`~medcam3d.core.protocol.CAMMethod`:
            ``GradCAM(model, target_layers=[...])``, ``FinerCAM(...)`` …); its model takes
            ``(N, C, *patch_size)``.
        patch_size: the network's input size, ``len(patch_size)`` = number of spatial axes of the
            volume, or one fewer for a 2D network on a 3D volume.
        step_size: step between patches as a fraction of the patch (0.5 = half overlap).
        mirror_axes: spatial axes of the patch to mirror for test-time augmentation (all
            combinations, like nnU-Net), or ``None``.
        gaussian: weight each patch by a Gaussian (σ = patch × ``sigma_scale``); ``False`` gives
            uniform weights.
        normalization: ``"volume"`` (min-max over the whole volume, default), ``"slice"`` (per
            slice along the first spatial axis) or ``"none"`` (raw, comparable across cases).
        progress: show a tqdm progress bar over patches.
        steps_fn / gaussian_fn: replace the step rule / Gaussian (the nnU-Net integration passes
            nnU-Net's own helpers).
        autocast: run each forward pass under ``torch.autocast`` on CUDA (as nnU-Net does).
        accumulator_device: where the sums over patches live: ``"auto"`` (default) the model's
            device, unless the accumulators of a volume would take more than half of the
            accelerator's free memory — then the CPU (:func:`accumulator_device_for`), so that a
            large volume with many classes does not run out of GPU memory; or a device.
    """

    def __init__(
        self,
        cam: CAMMethod,
        patch_size: Sequence[int],
        step_size: float = 0.5,
        mirror_axes: Sequence[int] | None = None,
        gaussian: bool = True,
        sigma_scale: float = 1.0 / 8,
        normalization: Normalization = "volume",
        progress: bool = True,
        steps_fn: Callable[[Sequence[int], Sequence[int], float], Sequence[Sequence[int]]] | None = None,
        gaussian_fn: Callable[[tuple[int, ...], torch.device], torch.Tensor] | None = None,
        autocast: bool = False,
        accumulator_device: str | torch.device = "auto",
    ) -> None:
        _check_cam(cam)
        if normalization not in ("volume", "slice", "none"):
            raise ConfigurationError(
                f"normalization must be 'volume', 'slice' or 'none', got {normalization!r}."
            )
        if not 0 < step_size <= 1:
            raise ConfigurationError(f"step_size must be in (0, 1], got {step_size}.")
        self.cam = cam
        self.patch_size = tuple(int(p) for p in patch_size)
        if any(p < 1 for p in self.patch_size):
            raise ConfigurationError(f"patch_size must be positive, got {self.patch_size}.")
        if mirror_axes is not None and any(not 0 <= a < len(self.patch_size) for a in mirror_axes):
            raise ConfigurationError(
                f"mirror_axes {tuple(mirror_axes)} must be spatial axes of the patch (0..{len(self.patch_size) - 1})."
            )
        self.step_size = float(step_size)
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else None
        self.use_gaussian = gaussian
        self.sigma_scale = sigma_scale
        self.normalization: Normalization = normalization
        self.progress = progress
        self.steps_fn = steps_fn
        self.gaussian_fn = gaussian_fn
        self.autocast = autocast
        if accumulator_device == "auto":
            self.accumulator_device: str | torch.device = "auto"
        else:
            try:
                self.accumulator_device = torch.device(accumulator_device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigurationError(
                    f"accumulator_device must be 'auto' or a device ('cpu', 'cuda:0'), got {accumulator_device!r}."
                ) from exc

    # -------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return model_device(self.cam.model)

    def importance(self, device: torch.device) -> torch.Tensor:
        """The ``(*patch_size)`` weight of one patch, in the dtype ``gaussian_fn`` returns (float32
        for the built-in Gaussian and for uniform weights). Computed once per state."""
        if not self.use_gaussian:
            return torch.ones(self.patch_size, device=device)
        if self.gaussian_fn is not None:
            return self.gaussian_fn(self.patch_size, device).to(device=device)
        return gaussian_importance_map(self.patch_size, self.sigma_scale, device=device)

    def _padding(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        offset = len(spatial) - len(self.patch_size)
        pad = [(0, 0)] * offset
        for size, patch in zip(spatial[offset:], self.patch_size):
            missing = max(patch - size, 0)
            pad.append((missing // 2, missing - missing // 2))
        return pad

    def new_state(self, volume_shape: Sequence[int], n_targets: int) -> SlidingState:
        """Empty accumulators for a ``(C, *S)`` volume and ``n_targets`` maps, and the patch weight."""
        spatial = tuple(int(s) for s in volume_shape[1:])
        if len(self.patch_size) not in (len(spatial), len(spatial) - 1):
            raise InputShapeError(
                f"volume must be (C, *S) with {len(self.patch_size)} (or {len(self.patch_size) + 1}) spatial axes "
                f"for a patch of size {self.patch_size}, got shape {tuple(volume_shape)}."
            )
        pad = self._padding(spatial)
        padded = tuple(s + a + b for s, (a, b) in zip(spatial, pad))
        crop = tuple(slice(a, a + s) for s, (a, _) in zip(spatial, pad))
        if isinstance(self.accumulator_device, torch.device):
            device = self.accumulator_device
        else:
            voxels = math.prod(padded)
            # map sums and weights in float32, and room for a caller's logit sums (nnU-Net: float16)
            device = accumulator_device_for(
                self.device, (n_targets + 1) * voxels * 4 + n_targets * voxels * 2
            )
        return SlidingState(
            map_sum=torch.zeros((n_targets, *padded), dtype=torch.float32, device=device),
            weight=torch.zeros(padded, dtype=torch.float32, device=device),
            crop=crop,
            pad=pad,
            importance=self.importance(device),
        )

    def pad_volume(self, volume: torch.Tensor, pad: list[tuple[int, int]]) -> torch.Tensor:
        """Zero-pad the spatial axes of a ``(C, *S)`` volume so that each is at least the patch."""
        flat = [v for before_after in reversed(pad) for v in before_after]
        return F.pad(volume, flat) if any(flat) else volume

    def forward_patch(
        self, patch: torch.Tensor, targets: list[Target], flip_axes: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass on a ``(1, C, *patch)`` patch, mirrored along ``flip_axes``, and one
        gradient pass per target (the method's ``compute_multi`` for several targets: the batch
        stays 1; a method without ``compute_multi`` runs one ``compute`` per target).

        Returns the raw maps ``(T, *patch)`` and the model output ``(C_out, *patch)`` (first sample),
        both flipped back to the patch's orientation.
        """
        dims = tuple(a + 2 for a in flip_axes)
        x = torch.flip(patch, dims) if dims else patch
        context = (
            torch.autocast(self.device.type)
            if (self.autocast and self.device.type == "cuda")
            else contextlib.nullcontext()
        )
        with context:
            compute_multi = getattr(self.cam, "compute_multi", None)
            if len(targets) == 1 or compute_multi is None:
                results = [self.cam.compute(x, [t], normalize=False) for t in targets]
            else:  # one batch-1 forward, one gradient pass per target
                results = compute_multi(x, [[t] for t in targets], normalize=False)
            maps = torch.cat([r.maps for r in results]).to(torch.float32)
            output = results[0].output[0]
        if dims:
            maps = torch.flip(maps, tuple(a + 1 for a in flip_axes))
            if output.ndim == patch.ndim - 1 and tuple(output.shape[1:]) == tuple(patch.shape[2:]):
                output = torch.flip(output, tuple(a + 1 for a in flip_axes))
        return maps, output

    def on_patch_outputs(
        self,
        state: SlidingState,
        info_slicer: tuple[slice | int, ...],
        outputs: list[torch.Tensor],
        importance: torch.Tensor,
    ) -> None:
        """Hook: the model outputs of one patch (one per mirror combination, flipped back) and the
        patch weight ``importance`` (``state.importance``). The default does nothing; pass
        ``on_outputs`` to :meth:`accumulate` to collect them without subclassing."""

    # -------------------------------------------------------------- main loop
    def accumulate(
        self,
        volume: torch.Tensor,
        targets: Sequence[Target | PatchTarget],
        state: SlidingState | None = None,
        description: str | None = None,
        on_outputs: PatchOutputsHook | None = None,
    ) -> SlidingState:
        """Run every patch of ``volume`` ``(C, *S)`` and add the weighted raw maps to ``state``.

        Call it several times with one ``state`` to average over model weights (folds), then
        :meth:`finalize` (or :meth:`raw_mean`). ``on_outputs(slicer, outputs, importance)`` receives
        each patch's model outputs (see :data:`PatchOutputsHook`), e.g. to accumulate logits.
        """
        from tqdm.auto import tqdm

        if not isinstance(volume, torch.Tensor):
            volume = torch.as_tensor(volume)
        targets = list(targets)
        if not targets:
            raise TargetError("Give at least one target (e.g. SlidingSegmentationTarget(1)).")
        if state is None:
            state = self.new_state(tuple(volume.shape), len(targets))
        elif state.map_sum.shape[0] != len(targets):
            raise TargetError(
                f"The state holds {state.map_sum.shape[0]} maps but {len(targets)} targets were given."
            )
        for t in targets:
            prepare = getattr(t, "prepare", None) if hasattr(t, "for_patch") else None
            if prepare is not None:
                prepare(tuple(volume.shape[1:]), state.pad)
        device = self.device
        if state.importance is None:
            state.importance = self.importance(device)
        importance = state.importance
        weight = importance.to(torch.float32)
        on_state = state.map_sum.device
        state_weight = weight.to(on_state)  # the same values where the sums live (the CPU for big volumes)
        padded = self.pad_volume(volume.to(torch.float32), state.pad)
        slicers = patch_slicers(tuple(padded.shape[1:]), self.patch_size, self.step_size, self.steps_fn)
        combos = mirror_combinations(self.mirror_axes)
        bar = tqdm(total=len(slicers), desc=description or "patches", disable=not self.progress, leave=False)
        try:
            for slicer in slicers:
                patch = torch.clone(padded[slicer][None], memory_format=torch.contiguous_format).to(device)
                outputs = []
                map_slicer = (slice(None), *slicer[1:])
                for flip_axes in combos:
                    info = PatchInfo(slicer, flip_axes)
                    patch_targets = [t.for_patch(info) if hasattr(t, "for_patch") else t for t in targets]
                    maps, output = self.forward_patch(patch, patch_targets, flip_axes)
                    state.map_sum[map_slicer] += (maps * weight).to(on_state)
                    state.weight[slicer[1:]] += state_weight
                    outputs.append(output)
                self.on_patch_outputs(state, slicer, outputs, importance)
                if on_outputs is not None:
                    on_outputs(slicer, outputs, importance)
                state.n_patches += 1
                bar.update()
        finally:
            bar.close()
        return state

    def raw_mean(self, state: SlidingState) -> torch.Tensor:
        """Weighted mean of the raw maps with the padding removed, not normalised: ``(T, *S)`` float32."""
        maps = state.map_sum / state.weight.clamp_min(torch.finfo(torch.float32).tiny)
        return maps[(slice(None), *state.crop)]

    def finalize(self, state: SlidingState) -> torch.Tensor:
        """:meth:`raw_mean`, normalised once (``normalization``): ``(T, *S)`` float32."""
        return normalize_maps(self.raw_mean(state), self.normalization)

    def __call__(self, volume: torch.Tensor, targets: Sequence[Target | PatchTarget]) -> torch.Tensor:
        """Maps ``(T, *S)`` (torch, on the model's device) of a ``(C, *S)`` volume, one per target."""
        return self.finalize(self.accumulate(volume, targets))


def normalize_maps(maps: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Min-max normalise ``(T, *S)`` maps over the whole volume, per slice along the first spatial
    axis, or not at all. A constant map becomes all zeros (never NaN)."""
    if normalization == "none":
        return maps
    if normalization == "volume":
        dims: tuple[int, ...] = tuple(range(1, maps.ndim))
    elif normalization == "slice":
        dims = tuple(range(2, maps.ndim))
    else:  # pragma: no cover - validated earlier
        raise ConfigurationError(f"Unknown normalization {normalization!r}.")
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    span = high - low
    return torch.where(
        span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)
    )


def sliding_window_cam(
    cam: CAMMethod,
    volume: torch.Tensor,
    patch_size: Sequence[int],
    targets: Sequence[Target | PatchTarget] | int | None = None,
    step_size: float = 0.5,
    mirror_axes: Sequence[int] | None = None,
    normalization: Normalization = "volume",
    progress: bool = True,
) -> torch.Tensor:
    """One-call sliding-window CAM: maps ``(T, *S)`` of a ``(C, *S)`` volume.

    ``targets`` may be an int (one class, Seg-Grad-CAM on the voxels each patch predicts as
    that class), ``None`` (class 1) or a list of targets.
    """
    if targets is None:
        targets = 1
    target_list: list[Union[Target, PatchTarget]]
    target_list = [SlidingSegmentationTarget(targets)] if isinstance(targets, int) else list(targets)
    engine = SlidingWindowCAM(
        cam,
        patch_size,
        step_size=step_size,
        mirror_axes=mirror_axes,
        normalization=normalization,
        progress=progress,
    )
    return engine(volume, target_list)
