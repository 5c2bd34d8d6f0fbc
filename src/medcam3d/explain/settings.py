"""The settings of one ``medcam3d explain`` run (:class:`ExplainSettings`), checked once up front."""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medcam3d.errors import ConfigurationError

__all__ = ["ExplainSettings", "TargetKind", "check_settings", "resolve_method"]

TargetKind = Literal["auto", "class", "prediction", "channel", "mask"]
_ORIENTATION = re.compile(
    r"^[RL][AP][SI]$|^[RL][SI][AP]$|^[AP][RL][SI]$|^[AP][SI][RL]$|^[SI][RL][AP]$|^[SI][AP][RL]$"
)
_FORMATS = ("nifti", "input", "nii", "nii.gz", "mha", "nrrd")


@dataclass(frozen=True)
class ExplainSettings:
    """Everything a run needs besides the inputs and the model.

    Sizes (``input_size``, ``patch_size``) are in the order of the network's spatial input axes:
    ``(D, H, W)`` = (z, y, x) with ``axis_order="zyx"`` (the default, the order of
    :func:`medcam3d.io.read_image` arrays), ``(X, Y, Z)`` with ``axis_order="xyz"`` (the order MONAI's
    ``LoadImage`` gives, for networks trained with MONAI transforms). ``spacing`` is always
    ``(x, y, z)`` mm, like MONAI's ``Spacingd(pixdim=...)``.

    Attributes:
        output_dir: where the maps, sidecars, figures and viewer pages go.
        methods: names from ``medcam3d methods`` (one map per method × class).
        target_layers: dotted layer names (several are averaged); ``None``: the suggested layer.
        target_classes: class indices; ``None`` means the predicted class for a classifier and
            class 1 for a segmenter. ``-1`` in the tuple also means "predicted" (classifiers).
        target: ``"auto"`` (``"class"`` for classifiers, ``"prediction"`` for segmenters),
            ``"prediction"`` (the class logit over the voxels predicted as the class, Seg-Grad-CAM),
            ``"channel"`` (the whole class channel) or ``"mask"`` (the voxels of ``masks`` files).
        normalize: ``"volume"`` (min-max over the map) or ``"none"`` (raw maps, comparable across
            cases).
        output_index: which element of a tuple/dict output holds the logits.
        orientation: reorient to these axis codes first (``"RAS"``, ``"LPS"``...: the letter says
            where each index axis x, y, z points, as nibabel and MONAI's ``Orientationd``).
        spacing: resample to this voxel size first (linear for the image, nearest for masks).
        window: a CT preset of :data:`medcam3d.viz.CT_WINDOWS` or ``(low, high)``: clip and scale to [0, 1].
        zscore: subtract the mean and divide by the standard deviation (over non-zero voxels when
            ``zscore_nonzero``).
        percentiles: clip to these intensity percentiles and scale to [0, 1].
        input_size: centre crop / zero pad to this size (the network's fixed input).
        patch_size: sliding window of this size instead (volumes larger than the network's input).
        overlap: fraction of the patch two neighbouring patches share (0.5; the step is ``1 - overlap``).
        gaussian: Gaussian patch weighting (σ = patch / 8, nnU-Net's).
        mirror: mirroring test-time augmentation over all spatial axes of the patch.
        output_format: ``"nifti"`` (``.nii.gz``, default), ``"input"`` (the input's own format when it
            can be written atomically: ``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``; ``.mhd`` → ``.mha``,
            ``.nhdr`` → ``.nrrd``, DICOM → ``.nii.gz``), or an ending (``"mha"``, ``"nrrd"``).
        figures: a three-plane PNG per map; viewer: one HTML viewer page per case.
        save_segmentation: for segmenters, also write the predicted label map (integer).
        overwrite: recompute every case and replace its outputs (``--overwrite``); otherwise
            :func:`~medcam3d.explain.explain_folder` resumes: the output folder's manifest decides
            which cases run (finished ones are skipped), and :func:`~medcam3d.explain.explain_case`
            alone refuses existing files.
        progress: tqdm bars.
        extra: internal facts of the run (``has_masks``), part of the results' settings.
    """

    output_dir: Path = Path("explain_out")
    methods: tuple[str, ...] = ("gradcam",)
    target_layers: tuple[str, ...] | None = None
    target_classes: tuple[int, ...] | None = None
    target: TargetKind = "auto"
    normalize: Literal["volume", "none"] = "volume"
    output_index: int | str = 0
    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    window: str | tuple[float, float] | None = None
    zscore: bool = False
    zscore_nonzero: bool = False
    percentiles: tuple[float, float] | None = None
    input_size: tuple[int, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    gaussian: bool = True
    mirror: bool = False
    axis_order: Literal["zyx", "xyz"] = "zyx"
    output_format: str = "nifti"
    figures: bool = False
    viewer: bool = False
    save_segmentation: bool = True
    overwrite: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (paths as strings)."""
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out

    def results_json(self) -> dict[str, Any]:
        """The settings that shape the results, JSON-ready: :meth:`as_json` without ``output_dir``,
        ``overwrite`` and ``progress`` (how and where a run writes, not what). They go into every
        sidecar and the output folder's batch manifest, so that a resumed run writes the same bytes."""
        out = self.as_json()
        for name in ("output_dir", "overwrite", "progress"):
            out.pop(name)
        return out


def resolve_method(name: str) -> str:
    """The registered name for ``name`` (case-insensitive); unknown names list close matches."""
    from medcam3d.methods.registry import available_methods

    methods = available_methods()
    key = name.strip().lower().replace("_", "").replace("-", "")
    for registered in methods:
        if registered.replace("+", "p") == key.replace("+", "p") or registered == key:
            return registered
    close = difflib.get_close_matches(key, list(methods), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigurationError(
        f"Unknown CAM method {name!r}.{hint} Available: {', '.join(methods)} (see `medcam3d methods`)."
    )


def check_settings(settings: ExplainSettings) -> ExplainSettings:
    """Check every option (no file or model is touched); returns the settings with canonical
    method names. Raises :class:`~medcam3d.errors.ConfigurationError` naming the option."""
    from dataclasses import replace

    if not settings.methods:
        raise ConfigurationError("Give at least one --method (see `medcam3d methods`).")
    methods = tuple(dict.fromkeys(resolve_method(m) for m in settings.methods))
    if settings.target not in ("auto", "class", "prediction", "channel", "mask"):
        raise ConfigurationError(
            f"--target must be auto, class, prediction, channel or mask, got {settings.target!r}."
        )
    if settings.normalize not in ("volume", "none"):
        raise ConfigurationError(f"--normalize must be 'volume' or 'none', got {settings.normalize!r}.")
    if settings.axis_order not in ("zyx", "xyz"):
        raise ConfigurationError(f"--axis-order must be 'zyx' or 'xyz', got {settings.axis_order!r}.")
    orientation = settings.orientation.upper() if settings.orientation else None
    if orientation is not None and not _ORIENTATION.match(orientation):
        raise ConfigurationError(
            f"--orientation {settings.orientation!r} is not an orientation code: give three letters, one of R/L, "
            "A/P, S/I each, e.g. RAS or LPS (where index axes x, y, z point)."
        )
    if settings.spacing is not None and (len(settings.spacing) != 3 or min(settings.spacing) <= 0):
        raise ConfigurationError(
            f"--spacing needs three positive sizes (x, y, z) in mm, got {settings.spacing}."
        )
    intensity = [
        name
        for name, on in (
            ("--window", settings.window is not None),
            ("--zscore", settings.zscore),
            ("--percentiles", settings.percentiles is not None),
        )
        if on
    ]
    if len(intensity) > 1:
        raise ConfigurationError(f"Choose one intensity normalisation, not {' and '.join(intensity)}.")
    if settings.window is not None:
        import numpy as np

        from medcam3d.viz.windowing import window_limits

        window_limits(np.zeros(1), settings.window)  # an unknown preset is a ConfigurationError
    if settings.percentiles is not None:
        low, high = settings.percentiles
        if not 0 <= low < high <= 100:
            raise ConfigurationError(
                f"--percentiles needs 0 <= low < high <= 100, got {settings.percentiles}."
            )
    if settings.input_size is not None and settings.patch_size is not None:
        raise ConfigurationError(
            "Give either --input-size (crop/pad to the network's fixed input) or --patch-size (sliding window), "
            "not both."
        )
    for flag, size in (("--input-size", settings.input_size), ("--patch-size", settings.patch_size)):
        if size is not None and (not 1 <= len(size) <= 3 or min(size) < 1):
            raise ConfigurationError(f"{flag} needs 1 to 3 positive sizes, got {size}.")
    if not 0 <= settings.overlap < 1:
        raise ConfigurationError(f"--overlap must be in [0, 1), got {settings.overlap}.")
    fmt = settings.output_format.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ConfigurationError(
            f"--output-format must be one of {', '.join(_FORMATS)}, got {settings.output_format!r}."
        )
    if settings.target_classes is not None:
        if not settings.target_classes:
            raise ConfigurationError("--target-class needs at least one class.")
        if any(c < -1 for c in settings.target_classes):
            raise ConfigurationError(
                f"--target-class takes class indices >= 0 (or 'predicted'), got {list(settings.target_classes)}."
            )
    if settings.target_layers is not None and not settings.target_layers:
        raise ConfigurationError(
            "--target-layer needs at least one layer name (or leave it out for the suggestion)."
        )
    return replace(settings, methods=methods, orientation=orientation, output_format=fmt)
