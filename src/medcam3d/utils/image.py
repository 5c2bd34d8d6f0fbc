"""Image helpers with pytorch-grad-cam's names and signatures, for 2D images and 3D volumes.

No OpenCV: colour maps are computed in numpy (JET by default, as ``cv2.COLORMAP_JET``) or taken
from matplotlib by name. Like pytorch-grad-cam, overlays are BGR unless ``use_rgb=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from medcam3d.core.tensors import interpolation_mode
from medcam3d.errors import InputShapeError, ValueRangeError

__all__ = [
    "COLORMAP_JET",
    "apply_colormap",
    "show_cam_on_image",
    "scale_cam_image",
    "scale_accross_batch_and_channels",
    "deprocess_image",
    "preprocess_image",
    "cam_resize",
    "create_labels_legend",
    "show_factorization_on_image",
]

#: OpenCV's constant for the JET colour map (the default of ``show_cam_on_image``)
COLORMAP_JET = 2
_CV2_NAMES = {
    0: "autumn",
    1: "bone",
    2: "jet",
    3: "winter",
    4: "rainbow",
    5: "ocean",
    6: "summer",
    7: "spring",
    8: "cool",
    9: "hsv",
    10: "pink",
    11: "hot",
    12: "viridis",
    13: "magma",
    14: "inferno",
    15: "plasma",
    16: "viridis",
    17: "cividis",
    18: "twilight",
    19: "twilight_shifted",
    20: "turbo",
}
Colormap = Union[int, str, Callable[[np.ndarray], np.ndarray]]


def _jet(x: np.ndarray) -> np.ndarray:
    four = 4.0 * x[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue
    return np.clip(1.5 - np.abs(four - centres), 0.0, 1.0)


def apply_colormap(values: np.ndarray, colormap: Colormap = COLORMAP_JET) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB floats in [0, 1], shape ``values.shape + (3,)``.

    ``colormap``: an OpenCV constant (2 = JET, computed here; others via matplotlib), a matplotlib
    colour-map name, or a callable returning RGB. Values are clipped to [0, 1], never wrapped.
    """
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    if callable(colormap):
        return np.asarray(colormap(x), dtype=np.float32)[..., :3]
    name = _CV2_NAMES.get(colormap, None) if isinstance(colormap, (int, np.integer)) else colormap
    if name is None:
        raise ValueError(
            f"Unknown colormap {colormap!r}: pass an OpenCV constant, a matplotlib name or a callable."
        )
    if name == "jet":
        return _jet(x).astype(np.float32)
    from medcam3d.errors import require_extra

    require_extra("matplotlib", "viz", "colour maps other than JET")
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return np.asarray(cmap(x), dtype=np.float32)[..., :3]


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: Colormap = COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Overlay a CAM on an image or a volume as a heat map.

    Args:
        img: float image in [0, 1]: ``(H, W, 3)`` / ``(H, W)`` for 2D, ``(D, H, W)`` /
            ``(D, H, W, 3)`` for a volume (grayscale is repeated to 3 channels).
        mask: the map, the image's spatial shape (``(H, W)`` or ``(D, H, W)``), values in [0, 1]
            (clipped).
        use_rgb: return RGB (default BGR, as pytorch-grad-cam / OpenCV).
        colormap: see :func:`apply_colormap`.
        image_weight: result = ``image_weight * img + (1 - image_weight) * heatmap``, rescaled to max 1.

    Returns:
        uint8 array of shape ``mask.shape + (3,)``: ``(H, W, 3)`` or ``(D, H, W, 3)``.
    """
    img = np.asarray(img, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if img.shape == mask.shape:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[:-1] == mask.shape and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.shape[:-1] != mask.shape or img.shape[-1] != 3:
        raise InputShapeError(
            f"Image shape {img.shape} does not match the CAM's shape {mask.shape}: expected the same spatial "
            "shape, grayscale or with 3 channels last."
        )
    if img.size and float(np.max(img)) > 1.0 + 1e-6:
        raise ValueRangeError("The input image should be float32 in the range [0, 1]; divide by 255 first.")
    if not 0.0 <= image_weight <= 1.0:
        raise ValueRangeError(f"image_weight should be in the range [0, 1], got {image_weight}.")
    heatmap = apply_colormap(mask, colormap)
    if not use_rgb:
        heatmap = heatmap[..., ::-1]
    cam = (1.0 - image_weight) * heatmap + image_weight * img
    cam = cam / max(float(np.max(cam)), 1e-7)
    return np.round(255 * np.clip(cam, 0.0, 1.0)).astype(np.uint8)


def _resize_numpy(maps: np.ndarray, size_in_tensor_order: Sequence[int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    out = F.interpolate(
        t,
        size=tuple(size_in_tensor_order),
        mode=interpolation_mode(len(size_in_tensor_order)),
        align_corners=False,
    )
    return out[:, 0].numpy()


def scale_cam_image(cam: np.ndarray, target_size: Sequence[int] | None = None) -> np.ndarray:
    """Min-max scale each map of ``cam`` ``(N, *s)`` to [0, 1] and optionally resize.

    ``target_size`` follows pytorch-grad-cam (OpenCV order, the *reverse* of the array's axes):
    ``(W, H)`` for 2D maps and ``(W, H, D)`` for 3D maps. Returns float32 ``(N, *size)``.
    """
    cam = np.asarray(cam, dtype=np.float32)
    low = cam.reshape(cam.shape[0], -1).min(axis=1).reshape(-1, *([1] * (cam.ndim - 1)))
    shifted = cam - low
    high = shifted.reshape(cam.shape[0], -1).max(axis=1).reshape(-1, *([1] * (cam.ndim - 1)))
    scaled = shifted / (1e-7 + high)
    if target_size is not None:
        if len(target_size) != cam.ndim - 1:
            raise InputShapeError(
                f"target_size {tuple(target_size)} has {len(target_size)} entries but the maps have "
                f"{cam.ndim - 1} spatial axes."
            )
        scaled = _resize_numpy(scaled, tuple(target_size)[::-1])
    return np.asarray(scaled, dtype=np.float32)


def scale_accross_batch_and_channels(tensor: np.ndarray, target_size: Sequence[int]) -> np.ndarray:
    """:func:`scale_cam_image` over ``(N, C, *s)`` (pytorch-grad-cam's spelling kept)."""
    tensor = np.asarray(tensor, dtype=np.float32)
    n, c = tensor.shape[:2]
    result = scale_cam_image(tensor.reshape(n * c, *tensor.shape[2:]), target_size)
    return result.reshape(n, c, *result.shape[1:])


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Standardise, scale to 0.5 ± 0.1·σ, clip and convert to uint8 (for guided backprop images), any shape."""
    img = np.asarray(img, dtype=np.float32)
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1 + 0.5
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """Normalise an image and make a batch of one: ``(H, W, C)`` → ``(1, C, H, W)``; a volume
    ``(D, H, W)`` (or ``(D, H, W, C)``) → ``(1, C, D, H, W)``. ``mean``/``std`` per channel.

    A uint8 image is scaled by 1/255 first, as torchvision's ``ToTensor`` (which
    pytorch-grad-cam uses); float images are taken as they are.
    """
    raw = np.asarray(img)
    arr = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and len(mean) == arr.shape[-1]:
        channels_last = arr  # a 2D colour image (H, W, C)
    elif arr.ndim in (2, 3):
        channels_last = arr[..., None]  # grayscale image or volume
    elif arr.ndim == 4:
        channels_last = arr
    else:
        raise InputShapeError(
            f"preprocess_image expects (H, W, C), (D, H, W) or (D, H, W, C); got {arr.shape}."
        )
    c = channels_last.shape[-1]
    m = np.asarray(mean, dtype=np.float32)[:c] if len(mean) >= c else np.full(c, mean[0], np.float32)
    s = np.asarray(std, dtype=np.float32)[:c] if len(std) >= c else np.full(c, std[0], np.float32)
    normalised = (channels_last - m) / s
    moved = np.moveaxis(normalised, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(moved))[None]


def cam_resize(cam: np.ndarray, target_size: Sequence[int] | None = None) -> np.ndarray:
    """The original medcam3d's resize: maps ``(N, *s)`` → ``(N, *size)``, linear, no rescaling of values.

    ``target_size`` in the same order as :func:`scale_cam_image` (OpenCV's, the reverse of the
    array's axes: ``(W, H)``, ``(W, H, D)``), which is what ``cam.get_target_width_height(x)``
    returns. (The original passed that reversed size to MONAI's ``Resize`` for volumes, which
    transposed non-cubic volumes; this does not.) ``None`` returns the maps unchanged, as float32.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if target_size is None:
        return cam
    if len(target_size) != cam.ndim - 1:
        raise InputShapeError(
            f"target_size {tuple(target_size)} has {len(target_size)} entries but the maps have "
            f"{cam.ndim - 1} spatial axes."
        )
    return _resize_numpy(cam, tuple(target_size)[::-1])


def create_labels_legend(concept_scores: np.ndarray, labels: Mapping[int, str], top_k: int = 2) -> list[str]:
    """For each concept (a row of ``concept_scores`` ``(concepts, classes)``), its ``top_k`` classes
    as ``"name:score"`` lines (the first three comma-separated parts of the name), as pytorch-grad-cam."""
    scores = np.asarray(concept_scores)
    best = np.argsort(scores, axis=1)[:, ::-1][:, :top_k]
    legend = []
    for concept, categories in enumerate(best):
        lines = []
        for category in categories:
            name = ",".join(str(labels[int(category)]).split(",")[:3])
            lines.append(f"{name}:{scores[concept, category]:.2f}")
        legend.append("\n".join(lines))
    return legend


def _default_colors(count: int) -> list[np.ndarray]:
    from medcam3d.errors import require_extra

    require_extra("matplotlib", "viz", "the default concept colours (gist_rainbow)")
    import matplotlib

    cmap = matplotlib.colormaps["gist_rainbow"]
    return [np.asarray(cmap(i), dtype=np.float32) for i in np.arange(0, 1, 1.0 / count)]


def _rgb_tuple(color: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(c) for c in np.asarray(color)[:3])
    return (r, g, b)


def _legend_image(
    height: int, width: int, colors: Sequence[np.ndarray], concept_labels: Sequence[str]
) -> np.ndarray:
    from medcam3d.errors import require_extra

    require_extra("matplotlib", "viz", "the concept legend")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    px = 1 / plt.rcParams["figure.dpi"]
    fig = plt.figure(figsize=(width * px, height * px))
    try:
        count = len(concept_labels)
        fontsize = max(1, int(14 * height / 256 / max(1, count / 6)))
        lines = [Line2D([0], [0], color=_rgb_tuple(colors[i]), lw=5 * height / 256) for i in range(count)]
        plt.legend(lines, list(concept_labels), mode="expand", fancybox=True, shadow=True, fontsize=fontsize)
        with warnings.catch_warnings():  # a legend taller than a small image cannot be laid out tightly
            warnings.simplefilter("ignore", UserWarning)
            plt.tight_layout(pad=0, w_pad=0, h_pad=0)
        plt.axis("off")
        fig.canvas.draw()
        data = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]
    finally:
        plt.close(fig)
    if data.shape[:2] != (height, width):
        t = torch.from_numpy(data.astype(np.float32)).permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
        data = t[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
    return data


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Sequence[np.ndarray] | None = None,
    image_weight: float = 0.5,
    concept_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Colour each voxel by the concept whose map is strongest there, brightness = that map.

    Args:
        img: float RGB in [0, 1], ``(H, W, 3)`` (or a volume ``(D, H, W, 3)``).
        explanations: ``(concepts, *S)`` maps in [0, 1] (not modified).
        colors: one RGB(A) colour in [0, 1] per concept (default: matplotlib's ``gist_rainbow``).
        image_weight: result = ``image_weight · img + (1 − image_weight) · colours``.
        concept_labels: one legend entry per concept; a legend of the same size is appended to
            the right (2D images only; needs matplotlib).

    Returns:
        uint8 ``(H, W, 3)`` (``(H, 2W, 3)`` with the legend), as pytorch-grad-cam. Setting HSV's
        value of a constant colour to ``v`` scales its RGB by ``v / max(RGB)``: that is how the
        brightness is applied (pytorch-grad-cam goes through OpenCV's uint8 HSV, ±1 level apart).
    """
    image = np.asarray(img, dtype=np.float32)
    maps = np.asarray(explanations, dtype=np.float32)
    count = maps.shape[0]
    if image.shape[:-1] != maps.shape[1:] or image.shape[-1] != 3:
        raise InputShapeError(
            f"The image {image.shape} and the explanations {maps.shape} do not match: expected an RGB image "
            "(*S, 3) and (concepts, *S) maps."
        )
    palette = list(colors) if colors is not None else _default_colors(count)
    winner = maps.argmax(axis=0)
    mask = np.zeros(image.shape, dtype=np.float32)
    for i in range(count):
        color = np.asarray(palette[i], dtype=np.float32)[:3]
        peak = float(color.max())
        value = np.where(winner == i, np.clip(maps[i], 0.0, 1.0), 0.0)
        if peak > 0:
            mask += value[..., None] * (color / peak)
    result = image * image_weight + mask * (1 - image_weight)
    result = (np.clip(result, 0.0, 1.0) * 255).astype(np.uint8)
    if concept_labels is not None:
        if result.ndim != 3:
            raise InputShapeError("The concept legend is drawn for 2D images only; pass concept_labels=None.")
        legend = _legend_image(result.shape[0], result.shape[1], palette, concept_labels)
        result = np.hstack((result, legend))
    return result
