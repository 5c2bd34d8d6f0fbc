"""pytorch-grad-cam's ``sobel_cam``: the Sobel gradient magnitude of an image, as a baseline map, N-D."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcam3d.errors import InputShapeError

__all__ = ["sobel_cam", "sobel_magnitude"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _gray(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB → ``(H, W)``; grayscale images and volumes unchanged (float64)."""
    if img.ndim == 3 and img.shape[-1] == 3:
        if img.dtype == np.uint8:  # OpenCV's fixed-point RGB2GRAY
            rgb = img.astype(np.int64)
            return ((rgb[..., 0] * 4899 + rgb[..., 1] * 9617 + rgb[..., 2] * 1868 + 8192) >> 14).astype(
                np.float64
            )
        return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return img.astype(np.float64)


def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """``|∂_a image|`` for every axis ``a`` of ``image`` ``(*S)``, stacked → ``(len(S), *S)``.

    The 3-tap Sobel operator: ``[-1, 0, 1]`` along ``a`` and ``[1, 2, 1]`` along every other axis,
    mirrored borders (OpenCV's ``BORDER_REFLECT_101``, scipy's ``mode="mirror"``).
    """
    rank = image.ndim
    if rank not in _CONV:
        raise InputShapeError(f"sobel_magnitude takes 1 to 3 axes, got shape {tuple(image.shape)}.")
    if any(size < 2 for size in image.shape):
        raise InputShapeError(
            f"Every axis needs at least 2 voxels for the Sobel operator, got {tuple(image.shape)}."
        )
    x = F.pad(image[None, None], [1, 1] * rank, mode="reflect")
    derivative = torch.tensor([-1.0, 0.0, 1.0], dtype=image.dtype, device=image.device)
    smoothing = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    results = []
    for axis in range(rank):
        kernel = torch.ones((1,) * 0, dtype=image.dtype, device=image.device)
        for other in range(rank):
            tap = derivative if other == axis else smoothing
            kernel = torch.tensordot(kernel, tap, dims=0) if kernel.ndim else tap
        results.append(_CONV[rank](x, kernel[None, None])[0, 0].abs())
    return torch.stack(results)


def sobel_cam(img: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of an image or a volume.

    ``img``: RGB ``(H, W, 3)`` (converted to gray as OpenCV's ``RGB2GRAY``), grayscale
    ``(H, W)`` or a volume ``(D, H, W)``. A uint8 image gives pytorch-grad-cam's uint8 result:
    each axis's ``|∂|`` rounded and saturated to [0, 255], then their mean, rounded and
    saturated (in 2D, OpenCV's ``addWeighted(|∂x|, 0.5, |∂y|, 0.5, 0)``). A float image gives the
    float32 mean of ``|∂|`` over the axes, unsaturated (CT values are not clipped to 255).
    Returns the spatial shape.
    """
    array = np.asarray(img)
    gray = _gray(array)
    grads = sobel_magnitude(torch.from_numpy(np.ascontiguousarray(gray)))
    if array.dtype == np.uint8:
        saturated = torch.clamp(torch.round(grads), 0, 255)
        return torch.clamp(torch.round(saturated.mean(dim=0)), 0, 255).to(torch.uint8).numpy()
    return grads.mean(dim=0).to(torch.float32).numpy()
