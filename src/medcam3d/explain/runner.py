"""One case of ``medcam3d explain``: :func:`prepare_model` (checked once per run),
:func:`prepare_case` (read + preprocess), :func:`explain_prepared` / :func:`explain_case` (CAM, map
back, write). The loop over a folder is :func:`medcam3d.explain.explain_folder` (the batch layer).

::

    prepare_model: channels, one probe forward at the input/patch size, output kind and classes,
                   target classes, layers (given: exist, on the gradient path; else suggested)
    prepare_case:  read → preprocess (flags, or the bundle's transforms)        → (1, C, *S) tensor
    explain_prepared: CAM (crop/whole or sliding window) → map back to the scan's grid → write maps,
                   label map, sidecars, figures, viewer (every file atomically)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcam3d.core.checks import select_output
from medcam3d.core.protocol import CAMMethod
from medcam3d.core.targets import ClassifierOutputTarget, SemanticSegmentationTarget
from medcam3d.errors import (
    ConfigurationError,
    GeometryError,
    InputFileError,
    InputShapeError,
    LayerNotFoundError,
    LayerOutputError,
    MedCAMError,
    NonFiniteInputError,
    TargetError,
)
from medcam3d.explain.cases import Case
from medcam3d.explain.outputs import label_dtype, output_ending, write_sidecar, write_volume
from medcam3d.explain.preprocess import PreparedVolume, from_model_order, prepare_arrays
from medcam3d.explain.settings import ExplainSettings
from medcam3d.io.geometry import Geometry
from medcam3d.models.loaded import LoadedModel

__all__ = [
    "CaseResult",
    "ExplainModel",
    "MapRecord",
    "TargetSpec",
    "explain_case",
    "explain_prepared",
    "expected_outputs",
    "prepare_case",
    "prepare_model",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class MapRecord:
    """One written map: method, class, target kind, files, the target score and the model's prediction."""

    method: str
    target_class: int
    target_kind: str
    map_file: Path
    sidecar_file: Path
    figure_file: Path | None
    score: float | None


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case: ``ok`` with its maps and files, or ``error``."""

    identifier: str
    inputs: tuple[Path, ...]
    ok: bool
    maps: tuple[MapRecord, ...] = ()
    files: tuple[Path, ...] = ()
    prediction: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    #: seconds spent reading + preprocessing (``read``), in the CAM (``cam``), mapping back and writing (``write``)
    timings: dict[str, float] = field(default_factory=dict)
    #: finished by an earlier run into the same folder (the batch manifest's record matched): not
    #: computed again; ``maps``, ``files`` and ``prediction`` are read back from its sidecars
    skipped: bool = False


@dataclass(frozen=True)
class TargetSpec:
    """One map to compute per method: ``label`` goes into file names (``class2``, ``predicted``)."""

    label: str
    kind: str  # class | predicted | prediction | channel | mask
    category: int | None


@dataclass
class ExplainModel:
    """The loaded model plus everything checked once for a run (see :func:`prepare_model`).

    ``patch_size`` is the sliding-window size in the network's axis order (``None``: one pass on
    the whole preprocessed tensor).
    """

    loaded: LoadedModel
    task: str  # "classification" | "segmentation"
    num_classes: int
    target_layers: tuple[str, ...]
    layers_suggested: bool
    targets: tuple[TargetSpec, ...]
    cams: dict[str, CAMMethod]
    patch_size: tuple[int, ...] | None
    overlap: float
    in_channels: int
    axis_order: str = "zyx"
    mirror: bool = False
    gaussian: bool = True
    layer_suggestions: list[Any] = field(default_factory=list)


# ------------------------------------------------------------------------------------ helpers
def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _read_case(case: Case) -> tuple[list[np.ndarray], Geometry]:
    from medcam3d.io.reading import read_image

    arrays, geometry = [], None
    for path in case.files:
        array, g = read_image(path)
        if geometry is None:
            geometry = g
        elif not g.allclose(geometry, atol=1e-3):
            raise InputFileError(
                f"Case {case.identifier!r}: channel {path.name} has another grid ({g}) than {case.files[0].name} "
                f"({geometry}); resample the channels onto one grid first."
            )
        arrays.append(array.astype(np.float32, copy=False))
    assert geometry is not None
    return arrays, geometry


def _read_mask(case: Case, geometry: Geometry) -> np.ndarray | None:
    if case.mask is None:
        return None
    from medcam3d.io.reading import read_image
    from medcam3d.io.transforms import resample_to_reference

    mask, g = read_image(case.mask)
    if not g.allclose(geometry, atol=1e-3):
        logger.info("%s: the mask's grid differs from the scan's; resampling it (nearest).", case.identifier)
        mask = resample_to_reference(mask.astype(np.float32), g, geometry, "nearest")
    return np.asarray(mask)


def _bundle_prepare(model: LoadedModel, case: Case) -> tuple[torch.Tensor, Any]:
    assert model.bundle is not None
    info = model.bundle
    source: Any = str(case.files[0]) if len(case.files) == 1 else [str(p) for p in case.files]
    try:
        data = info.preprocessing({info.image_key: source})
    except Exception as exc:  # noqa: BLE001 - MONAI wraps errors in RuntimeError with the transform name
        raise InputFileError(
            f"Case {case.identifier!r}: the bundle's preprocessing failed: {_first_line(exc)}"
        ) from exc
    image = data[info.image_key] if isinstance(data, dict) else data
    tensor = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=torch.float32)
    return tensor[None].to(model.device), image


@dataclass
class _Prepared:
    tensor: torch.Tensor  # (1, C, *S) network order
    volume: PreparedVolume | None  # flags path
    meta: Any  # bundle path: the MetaTensor (C, X, Y, Z)
    image: np.ndarray  # first channel on the scan's grid (z, y, x), for figures
    original: Geometry


def prepare_case(model: LoadedModel, case: Case, settings: ExplainSettings) -> _Prepared:
    """Read and preprocess one case: the network's input tensor ``(1, C, *S)`` and how to go back.

    Flags (factory / pickle): :func:`medcam3d.explain.preprocess.prepare_arrays`. Bundle: the
    bundle's own ``preprocessing`` on ``{image_key: path}``.
    """
    if model.bundle is not None:
        from medcam3d.io.reading import read_image

        tensor, meta = _bundle_prepare(model, case)
        image, original = read_image(case.files[0])
        return _Prepared(tensor, None, meta, image.astype(np.float32, copy=False), original)
    arrays, geometry = _read_case(case)
    mask = _read_mask(case, geometry)
    volume = prepare_arrays(arrays, geometry, settings, mask=mask, device=model.device)
    return _Prepared(volume.tensor, volume, None, arrays[0], geometry)


# ------------------------------------------------------------------------------------ the model
def _probe_forward(network: torch.nn.Module, x: torch.Tensor, what: str, output_index: Any) -> torch.Tensor:
    try:
        with torch.no_grad():
            raw = network(x)
    except RuntimeError as exc:
        raise InputShapeError(
            f"The network cannot take an input of {what} {tuple(x.shape[2:])} with {x.shape[1]} channel(s): "
            f"{_first_line(exc)}. Choose a size the network accepts (for U-Nets a multiple of 2**levels; for "
            "transformers the img_size it was built with)."
        ) from exc
    return select_output(raw, output_index)


def _targets(settings: ExplainSettings, task: str, num_classes: int) -> tuple[TargetSpec, ...]:
    kind = settings.target
    if task == "classification":
        if kind not in ("auto", "class"):
            raise ConfigurationError(
                f"--target {kind} is for segmentation outputs; this model is a classifier (output (N, {num_classes})): "
                "use --target-class K or leave it out for the predicted class."
            )
        classes = settings.target_classes if settings.target_classes is not None else (-1,)
        specs = []
        for c in classes:
            if c == -1:
                specs.append(TargetSpec("predicted", "predicted", None))
            else:
                specs.append(TargetSpec(f"class{c}", "class", c))
    else:
        if kind == "class":
            kind = "prediction"
        if kind == "auto":
            kind = "mask" if settings.extra.get("has_masks") else "prediction"
        classes = (
            settings.target_classes if settings.target_classes is not None else (1 if num_classes > 1 else 0,)
        )
        if -1 in classes:
            raise ConfigurationError(
                "--target-class predicted is for classifiers; for a segmenter name the class(es) to explain "
                "(e.g. --target-class 1)."
            )
        specs = [TargetSpec(f"class{c}", kind, c) for c in classes]
    for spec in specs:
        if spec.category is not None and not 0 <= spec.category < num_classes:
            raise TargetError(
                f"Target class {spec.category} is out of range: the model output has {num_classes} classes "
                f"(valid indices 0..{num_classes - 1})."
            )
    return tuple(dict.fromkeys(specs))


def _check_layers(
    network: torch.nn.Module, names: Sequence[str], x: torch.Tensor, output_index: Any
) -> tuple[tuple[str, ...], list[Any]]:
    from medcam3d.core.layers import resolve_layers
    from medcam3d.utils.find_layers import list_layers

    resolved = [name for name, _ in resolve_layers(network, list(names))]  # unknown: close matches
    infos = {i.name: i for i in list_layers(network, x, output_index=output_index)}
    for name in resolved:
        info = infos.get(name)
        if info is None or info.order < 0:
            raise LayerNotFoundError(
                f"Target layer {name!r} does not run in the network's forward pass; see --list-layers."
            )
        if info.is_model_output:
            raise LayerOutputError(
                f"Target layer {name!r} produces the model output itself (output_index={output_index!r}); its map "
                "explains nothing. Choose a layer before the head; see --list-layers."
            )
        if not info.on_gradient_path:
            raise LayerOutputError(
                f"Target layer {name!r} is off the gradient path to the output selected by output_index="
                f"{output_index!r} (no gradient path: e.g. a deep-supervision head). Choose another layer or "
                "output_index; see --list-layers."
            )
    return tuple(resolved), list(infos.values())


def _build_cams(
    network: torch.nn.Module, methods: Sequence[str], layers: Sequence[str], output_index: Any
) -> dict[str, CAMMethod]:
    from medcam3d.methods.registry import get_method

    cams: dict[str, CAMMethod] = {}
    for name in methods:
        cls = get_method(name)
        try:
            cams[name] = cls(network, list(layers), output_index=output_index)
        except TypeError as exc:  # pragma: no cover - every registered method takes these
            raise ConfigurationError(f"Method {name!r} cannot be built for this model: {exc}") from exc
    return cams


def _probe_size(model: LoadedModel, settings: ExplainSettings) -> tuple[tuple[int, ...] | None, str]:
    if settings.patch_size is not None:
        return tuple(settings.patch_size), "patch size"
    if model.bundle is not None and model.bundle.roi_size is not None and settings.input_size is None:
        return tuple(model.bundle.roi_size), "patch size (the bundle's inferer roi_size)"
    if settings.input_size is not None and model.bundle is None:
        return tuple(settings.input_size), "input size"
    return None, "size"


def _first_readable(
    loaded: LoadedModel, cases: Sequence[Case], settings: ExplainSettings
) -> tuple[torch.Tensor, str]:
    """The preprocessed tensor of the first case that reads (a broken case fails later, alone)."""
    first: MedCAMError | None = None
    for case in cases:
        try:
            tensor = prepare_case(loaded, case, settings).tensor
        except (InputFileError, GeometryError, NonFiniteInputError) as exc:
            first = first or exc
            continue
        return tensor, f"the preprocessed size of case {case.identifier!r}"
    assert first is not None
    raise first


def prepare_model(
    loaded: LoadedModel, settings: ExplainSettings, cases: Sequence[Case] = (), channels: int | None = None
) -> ExplainModel:
    """Check the model against the run, before any case is processed.

    One forward pass of zeros at the input / patch size (or on the first case's preprocessed
    tensor when neither is fixed) tells whether the network takes that size and what it returns
    (a classifier ``(N, classes)`` or a segmenter ``(N, classes, *S)``); then the target classes are
    checked against the classes, and the layers against the network (given names: they exist, run,
    are not the output and are on the gradient path to ``output_index``; none given: the first of
    :func:`medcam3d.utils.find_layers.suggest_target_layers`).
    """
    network = loaded.network
    if channels is None:
        channels = loaded.in_channels or 1
    if loaded.in_channels is not None and channels != loaded.in_channels:
        raise InputShapeError(
            f"The scans have {channels} channel file(s) per case but the network's first convolution takes "
            f"{loaded.in_channels} channel(s). Give one file per channel (nnU-Net naming <case>_0000.nii.gz, "
            "<case>_0001.nii.gz, ...) or a model built for this many channels."
        )
    size, what = _probe_size(loaded, settings)
    if size is not None:
        rank = loaded.spatial_dims or len(size)
        if len(size) != rank:
            raise InputShapeError(f"The {what} {size} has {len(size)} axes but the network is {rank}-D.")
        x = torch.zeros((1, channels, *size), device=loaded.device)
    else:
        if not cases:
            raise ConfigurationError(
                "Give --input-size or --patch-size (or at least one case) to check the model."
            )
        x, what = _first_readable(loaded, cases, settings)
    output = _probe_forward(network, x, what, settings.output_index)
    spatial_out = output.ndim == x.ndim
    task = "segmentation" if spatial_out else "classification"
    num_classes = int(output.shape[1]) if output.ndim >= 2 else 1
    targets = _targets(settings, task, num_classes)
    if settings.patch_size is None and size is not None and loaded.bundle is not None:
        patch_size: tuple[int, ...] | None = tuple(size)
        overlap = loaded.bundle.overlap if loaded.bundle.overlap is not None else settings.overlap
    else:
        patch_size = tuple(settings.patch_size) if settings.patch_size is not None else None
        overlap = settings.overlap
    if patch_size is not None and task == "classification" and any(t.kind == "predicted" for t in targets):
        raise ConfigurationError(
            "A sliding window over a classifier needs the class to explain: give --target-class K (or crop to the "
            "network's input with --input-size to explain the predicted class)."
        )
    if any(t.kind == "mask" for t in targets) and not settings.extra.get("has_masks"):
        raise ConfigurationError(
            "--target mask needs --target-mask (a mask file, or a folder with one per case)."
        )
    if settings.target_layers:
        layers, infos = _check_layers(network, settings.target_layers, x, settings.output_index)
        suggested, suggestions = False, []
    else:
        from medcam3d.utils.find_layers import suggest_target_layers

        suggestions = suggest_target_layers(network, x, settings.output_index)
        layers, suggested = (suggestions[0].name,), True
        logger.info("Target layer: %s (suggested: %s).", layers[0], suggestions[0].reason)
    cams = _build_cams(network, settings.methods, layers, settings.output_index)
    return ExplainModel(
        loaded=loaded,
        task=task,
        num_classes=num_classes,
        target_layers=layers,
        layers_suggested=suggested,
        targets=targets,
        cams=cams,
        patch_size=patch_size,
        overlap=float(overlap),
        in_channels=channels,
        axis_order=settings.axis_order if loaded.bundle is None else "xyz",
        mirror=settings.mirror,
        gaussian=settings.gaussian,
        layer_suggestions=list(suggestions),
    )


# ------------------------------------------------------------------------------------ outputs
def _stem(case: Case, method: str, target: TargetSpec) -> str:
    return f"{case.identifier}_{method.replace('+', 'p')}_{target.label}"


def expected_outputs(case: Case, settings: ExplainSettings, model: ExplainModel) -> list[Path]:
    """Every file :func:`explain_case` writes for ``case`` (to refuse existing ones up front)."""
    out = Path(settings.output_dir)
    ending = output_ending(case.reference, settings.output_format)
    files = []
    for method in model.cams:
        for target in model.targets:
            stem = _stem(case, method, target)
            files += [out / f"{stem}{ending}", out / f"{stem}.json"]
            if settings.figures:
                files.append(out / f"{stem}.png")
    if model.task == "segmentation" and settings.save_segmentation:
        files.append(out / f"{case.identifier}_segmentation{ending}")
    if settings.viewer:
        files.append(out / f"{case.identifier}_viewer.html")
    return files


# ------------------------------------------------------------------------------------ the CAM
@dataclass
class _Computed:
    maps: torch.Tensor  # (T, *S) network order, on the model grid
    output: torch.Tensor  # (classes,) or (classes, *S) on the model grid
    scores: list[float | None]
    classes: list[int]  # the class of each target (the predicted one resolved)


def _crop_targets(model: ExplainModel, prepared: _Prepared) -> list[list[Any] | None]:
    mask = prepared.volume.mask if prepared.volume is not None else None
    sets: list[list[Any] | None] = []
    for t in model.targets:
        if t.kind == "predicted":
            sets.append(None)
        elif t.kind == "class" or t.kind == "channel":
            sets.append([ClassifierOutputTarget(t.category)])
        elif t.kind == "prediction":
            sets.append([SemanticSegmentationTarget(int(t.category or 0))])
        else:  # mask
            assert mask is not None and t.category is not None
            sets.append([SemanticSegmentationTarget(t.category, mask=_class_region(mask, t.category))])
    return sets


def _class_region(mask: torch.Tensor, category: int) -> torch.Tensor:
    """A binary 0/1 mask is used as it is; a label map gives the voxels labelled ``category``."""
    values = torch.unique(mask)
    binary = bool(((values == 0) | (values == 1)).all())
    return (mask != 0).float() if binary else (mask == category).float()


def _compute_whole(model: ExplainModel, cam: CAMMethod, prepared: _Prepared, normalize: bool) -> _Computed:
    sets = _crop_targets(model, prepared)
    compute_multi = getattr(cam, "compute_multi", None)
    if compute_multi is not None:
        results = compute_multi(prepared.tensor, sets, normalize=normalize)
    else:  # pragma: no cover - every registered method has compute_multi
        results = [cam.compute(prepared.tensor, s, normalize=normalize) for s in sets]
    maps = torch.stack([r.maps[0] for r in results]).to(torch.float32)
    output = results[0].output[0].detach().to(torch.float32)
    classes = [int(output.argmax()) if t.kind == "predicted" else int(t.category or 0) for t in model.targets]
    scores = [float(r.scores[0]) if r.scores is not None else None for r in results]
    return _Computed(maps, output, scores, classes)


def _compute_sliding(
    model: ExplainModel, cam: CAMMethod, prepared: _Prepared, normalize: bool, progress: bool = False
) -> _Computed:
    from medcam3d.sliding import SlidingSegmentationTarget, SlidingWindowCAM

    assert model.patch_size is not None
    mask = prepared.volume.mask if prepared.volume is not None else None
    engine = SlidingWindowCAM(
        cam,
        model.patch_size,
        step_size=max(1.0 - model.overlap, 1e-3),
        mirror_axes=tuple(range(len(model.patch_size))) if model.mirror else None,
        gaussian=model.gaussian,
        normalization="volume" if normalize else "none",
        progress=progress,
    )
    targets: list[Any] = []
    for t in model.targets:
        if model.task == "classification":
            targets.append(ClassifierOutputTarget(t.category))
        elif t.kind == "mask":
            assert mask is not None and t.category is not None
            targets.append(SlidingSegmentationTarget(t.category, mask=_class_region(mask, t.category)))
        else:
            targets.append(SlidingSegmentationTarget(int(t.category or 0), whole_channel=t.kind == "channel"))
    volume = prepared.tensor[0]
    state = engine.new_state(tuple(volume.shape), len(targets))
    logits: dict[str, Any] = {}

    def on_outputs(slicer: tuple[Any, ...], outputs: list[torch.Tensor], importance: torch.Tensor) -> None:
        mean = torch.stack(outputs).mean(0).to(torch.float32)
        if mean.ndim == volume.ndim and tuple(mean.shape[1:]) == tuple(importance.shape):
            on_state = state.weight.device  # the model's device, or the CPU for a volume too big for it
            if "sum" not in logits:
                padded = state.weight.shape
                logits["sum"] = torch.zeros((mean.shape[0], *padded), device=on_state)
                logits["weight"] = torch.zeros(padded, device=on_state)
            w = importance.to(torch.float32)
            logits["sum"][(slice(None), *slicer[1:])] += (mean * w).to(on_state)
            logits["weight"][slicer[1:]] += w.to(on_state)
        else:
            logits.setdefault("list", []).append(mean)

    engine.accumulate(volume, targets, state=state, on_outputs=on_outputs)
    maps = engine.finalize(state).to(torch.float32)
    if "sum" in logits:
        stitched = logits["sum"] / logits["weight"].clamp_min(torch.finfo(torch.float32).tiny)
        output = stitched[(slice(None), *state.crop)]
    else:
        output = torch.stack(logits["list"]).mean(0)
    scores: list[float | None] = []
    for t in model.targets:
        k = int(t.category or 0)
        if model.task == "classification":
            scores.append(float(output[k]))
        elif t.kind == "channel":
            scores.append(float(output[k].sum()))
        elif t.kind == "mask":
            assert mask is not None
            scores.append(float((output[k] * _class_region(mask, k).to(output.device)).sum()))
        else:
            scores.append(float((output[k] * (output.argmax(0) == k)).sum()))
    return _Computed(maps, output, scores, [int(t.category or 0) for t in model.targets])


def compute_maps(
    model: ExplainModel, method: str, prepared: _Prepared, settings: ExplainSettings, progress: bool = False
) -> _Computed:
    """The maps ``(T, *S)`` of one method on the preprocessed tensor (network order, model grid);
    ``progress``: a bar over the sliding-window patches."""
    cam = model.cams[method]
    normalize = settings.normalize == "volume"
    if model.patch_size is not None:
        return _compute_sliding(model, cam, prepared, normalize, progress)
    return _compute_whole(model, cam, prepared, normalize)


# ------------------------------------------------------------------------------------ mapping back
def map_back(model: ExplainModel, prepared: _Prepared, array: np.ndarray, label: bool = False) -> np.ndarray:
    """A ``(*S)`` array on the model grid (network order) → ``(D, H, W)`` on the scan's grid."""
    from medcam3d.io.transforms import map_to_original, resample_to_reference

    interpolation = "nearest" if label else "linear"
    if prepared.volume is not None:
        axis_order = model.axis_order
        zyx = np.ascontiguousarray(from_model_order(array, axis_order)).astype(np.float32, copy=False)
        if prepared.volume.same_grid:
            return zyx
        return resample_to_reference(zyx, prepared.volume.geometry, prepared.original, interpolation)
    assert model.loaded.bundle is not None
    if label:  # the MetaTensor's affine places it; nearest keeps labels (MONAI's inverse would interpolate)
        return map_to_original(array, prepared.original, like=prepared.meta, interpolation="nearest")
    return map_to_original(
        array,
        prepared.original,
        like=prepared.meta,
        transform=model.loaded.bundle.preprocessing,
        key=model.loaded.bundle.image_key,
    )


# ------------------------------------------------------------------------------------ one case
def _prediction(model: ExplainModel, output: torch.Tensor) -> dict[str, Any]:
    if model.task == "classification":
        logits = output.flatten().to(torch.float64)
        probabilities = torch.softmax(logits, 0) if logits.numel() > 1 else torch.sigmoid(logits)
        return {
            "task": "classification",
            "predicted_class": int(logits.argmax()),
            "logits": [float(v) for v in logits],
            "probabilities": [float(v) for v in probabilities],
        }
    labels = output.argmax(0)
    counts = torch.bincount(labels.flatten(), minlength=output.shape[0])
    return {
        "task": "segmentation",
        "voxels_per_class_on_model_grid": {str(k): int(v) for k, v in enumerate(counts.tolist())},
    }


def _provenance(loaded: LoadedModel) -> dict[str, Any]:
    """The model's provenance for sidecars, the same in every process: a network from a
    ``file.py:factory`` lives in a module whose generated name changes from process to process
    (``medcam3d_user_model_<hash>``), so its class is named after the file instead (a resumed run,
    or a Ray worker, then writes the same bytes)."""
    provenance = loaded.provenance()
    module = type(loaded.network).__module__
    factory = loaded.source.factory
    if module.startswith("medcam3d_user_model_") and factory and ":" in factory:
        provenance["class"] = f"{factory.rpartition(':')[0]}:{type(loaded.network).__qualname__}"
    return provenance


def _sha256(path: Path) -> str | None:
    from medcam3d.models.checkpoints import sha256_file

    if path.is_dir():
        import hashlib

        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode())
            digest.update(sha256_file(f).encode())
        return digest.hexdigest()
    return sha256_file(path)


def _explain(
    model: ExplainModel,
    case: Case,
    prepared: _Prepared,
    settings: ExplainSettings,
    out: Path,
    overwrite: bool,
    progress: bool,
    written: list[Path],
    timings: dict[str, float],
) -> tuple[list[MapRecord], dict[str, Any] | None]:
    """CAM per method × class, map back, write (each file atomically); ``written`` grows as files are
    written, ``timings`` gets ``cam``. Raises the case's error."""
    if prepared.tensor.shape[1] != model.in_channels:
        raise InputShapeError(
            f"Case {case.identifier!r} gives {prepared.tensor.shape[1]} channel(s) after preprocessing but the "
            f"network takes {model.in_channels}."
        )
    timings.setdefault("cam", 0.0)
    records, maps_for_viewer = [], {}
    ending = output_ending(case.reference, settings.output_format)
    inputs_meta = [{"path": str(p), "sha256": _sha256(p)} for p in case.files]
    prediction: dict[str, Any] | None = None
    output_for_labels: torch.Tensor | None = None
    from medcam3d import __version__

    for method in model.cams:
        cam_start = time.perf_counter()
        computed = compute_maps(model, method, prepared, settings, progress)
        timings["cam"] += time.perf_counter() - cam_start
        if prediction is None:
            prediction = _prediction(model, computed.output)
            output_for_labels = computed.output
        maps_np = computed.maps.detach().cpu().numpy()
        for index, target in enumerate(model.targets):
            k = computed.classes[index]
            on_scan = map_back(model, prepared, maps_np[index])
            stem = _stem(case, method, target)
            map_file = out / f"{stem}{ending}"
            layers = ",".join(model.target_layers)
            descrip = f"medcam3d {__version__} {method} layer={layers} class={k}"
            write_volume(on_scan, prepared.original, case.reference, map_file, descrip, overwrite)
            written.append(map_file)
            figure = None
            if settings.figures:
                figure = _figure(
                    prepared,
                    on_scan,
                    out / f"{stem}.png",
                    f"{case.identifier} {method} class {k}",
                    overwrite,
                )
                written.append(figure)
            sidecar = {
                "medcam3d_version": __version__,
                "case": case.identifier,
                "inputs": inputs_meta,
                "mask": {"path": str(case.mask), "sha256": _sha256(case.mask)} if case.mask else None,
                "model": _provenance(model.loaded),
                "method": method,
                "target_layers": list(model.target_layers),
                "target_layers_suggested": model.layers_suggested,
                "target": {"kind": target.kind, "class": k, "label": target.label},
                "target_score": computed.scores[index],
                "prediction": prediction,
                "task": model.task,
                "map": {
                    "file": map_file.name,
                    "normalize": settings.normalize,
                    "min": float(on_scan.min()),
                    "max": float(on_scan.max()),
                    "grid": "the input's voxel grid",
                    "model_grid": _geometry_json(prepared),
                    "sliding_window": (
                        {
                            "patch_size": list(model.patch_size),
                            "overlap": model.overlap,
                            "gaussian": settings.gaussian,
                            "mirror": settings.mirror,
                        }
                        if model.patch_size is not None
                        else None
                    ),
                },
                "preprocessing": prepared.volume.steps if prepared.volume is not None else "bundle",
                "settings": settings.results_json(),
            }
            sidecar_file = out / f"{stem}.json"
            write_sidecar(sidecar_file, sidecar, overwrite=overwrite)
            written.append(sidecar_file)
            records.append(
                MapRecord(method, k, target.kind, map_file, sidecar_file, figure, computed.scores[index])
            )
            maps_for_viewer[f"{method} class {k}"] = on_scan
    if model.task == "segmentation" and settings.save_segmentation and output_for_labels is not None:
        labels = output_for_labels.argmax(0).to(torch.float32).cpu().numpy()
        on_scan = np.rint(map_back(model, prepared, labels, label=True))
        seg_file = out / f"{case.identifier}_segmentation{ending}"
        write_volume(
            on_scan,
            prepared.original,
            case.reference,
            seg_file,
            "medcam3d segmentation",
            overwrite,
            dtype=label_dtype(model.num_classes),
        )
        written.append(seg_file)
    if settings.viewer:
        from medcam3d.viz.viewer import write_viewer

        page = write_viewer(
            (prepared.image, prepared.original),
            maps_for_viewer,
            out / f"{case.identifier}_viewer.html",
            title=f"medcam3d {case.identifier}",
            overwrite=overwrite,
        )
        written.append(page)
    return records, prediction


def explain_prepared(
    model: ExplainModel,
    case: Case,
    prepared: _Prepared,
    settings: ExplainSettings,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool | None = None,
    progress: bool = False,
    read_seconds: float = 0.0,
) -> CaseResult:
    """:func:`explain_case` without its read step: ``prepared`` comes from :func:`prepare_case`.

    Args:
        output_dir: where to write (default ``settings.output_dir``).
        overwrite: replace existing files (default ``settings.overwrite``; the batch layer passes
            ``True``: it runs a case only when the folder's manifest has no valid record of it).
        progress: a bar over the sliding-window patches.
        read_seconds: the time :func:`prepare_case` took (reported in ``timings["read"]``).

    Returns:
        the successful :class:`CaseResult` (``ok=True``).

    Raises:
        the case's error (:class:`~medcam3d.errors.MedCAMError`, ``RuntimeError``, ``OSError``); files
        are written atomically, so nothing half-written is left under a final name.
    """
    start = time.perf_counter()
    out = Path(settings.output_dir if output_dir is None else output_dir)
    timings = {"read": float(read_seconds), "cam": 0.0}
    written: list[Path] = []
    records, prediction = _explain(
        model,
        case,
        prepared,
        settings,
        out,
        settings.overwrite if overwrite is None else overwrite,
        progress,
        written,
        timings,
    )
    seconds = float(read_seconds) + time.perf_counter() - start
    timings["write"] = seconds - timings["read"] - timings["cam"]
    return CaseResult(
        case.identifier, case.files, True, tuple(records), tuple(written), prediction, None, seconds, timings
    )


def explain_case(model: ExplainModel, case: Case, settings: ExplainSettings) -> CaseResult:
    """Explain one case: read, preprocess, CAM per method × class, map back, write.

    Writes into ``settings.output_dir`` (see :func:`expected_outputs` for the names); every file
    atomically, refusing existing files unless ``settings.overwrite``. Errors of this case come back
    as a failed :class:`CaseResult` (nothing half-written is left; ``files`` lists what was written
    before the error); the model is never reloaded. (:func:`explain_folder` runs cases through the
    batch layer instead, which resumes and overwrites as its manifest says.)
    """
    start = time.perf_counter()
    written: list[Path] = []
    timings: dict[str, float] = {}
    try:
        prepared = prepare_case(model.loaded, case, settings)
        timings["read"] = time.perf_counter() - start
        records, prediction = _explain(
            model,
            case,
            prepared,
            settings,
            Path(settings.output_dir),
            settings.overwrite,
            False,
            written,
            timings,
        )
        seconds = time.perf_counter() - start
        timings["write"] = seconds - timings["read"] - timings["cam"]
        return CaseResult(
            case.identifier,
            case.files,
            True,
            tuple(records),
            tuple(written),
            prediction,
            None,
            seconds,
            timings,
        )
    except (MedCAMError, RuntimeError, OSError) as exc:
        logger.error("%s: %s", case.identifier, _first_line(exc))
        return CaseResult(
            case.identifier,
            case.files,
            False,
            (),
            tuple(written),
            None,
            _first_line(exc),
            time.perf_counter() - start,
        )


def _geometry_json(prepared: _Prepared) -> dict[str, Any] | None:
    if prepared.volume is None:
        return None
    g = prepared.volume.geometry
    return {
        "shape_zyx": list(g.shape),
        "spacing_xyz": list(g.spacing),
        "origin_xyz_lps": list(g.origin),
        "direction_lps": g.direction.tolist(),
    }


def _figure(prepared: _Prepared, cam: np.ndarray, path: Path, title: str, overwrite: bool) -> Path:
    from medcam3d.viz.figures import three_plane_figure

    high = float(cam.max())
    shown = cam / high if high > 0 else cam
    return three_plane_figure(
        (prepared.image, prepared.original),
        np.clip(shown, 0, 1),
        path,
        geometry=prepared.original,
        title=title,
        overwrite=overwrite,
    )
