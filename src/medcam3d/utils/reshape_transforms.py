"""Turn transformer tokens into feature-map grids ``(N, C, *grid)`` so CAM methods can use them.

Same names as ``pytorch_grad_cam.utils.reshape_transforms`` for 2D (ViT, Swin), plus 3D
transformers: MONAI ``ViT``/``UNETR`` hidden states ``(N, tokens, C)`` and ``SwinUNETR`` blocks,
whose outputs are channels-last ``(N, D, H, W, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medcam3d.core.tensors import resize_maps
from medcam3d.errors import LayerOutputError

__all__ = [
    "vit_reshape_transform",
    "swinT_reshape_transform",
    "fasterrcnn_reshape_transform",
    "tokens_to_grid",
    "vit3d_reshape_transform",
    "monai_vit_reshape_transform",
    "channels_last_to_first",
    "swinunetr_reshape_transform",
]


def tokens_to_grid(
    tokens: torch.Tensor, grid_size: Sequence[int], num_prefix_tokens: int = 0
) -> torch.Tensor:
    """``(N, prefix + prod(grid), C)`` tokens → ``(N, C, *grid)``, dropping ``num_prefix_tokens``
    leading tokens (class/register tokens). Works for 2D and 3D grids."""
    grid = tuple(int(g) for g in grid_size)
    if tokens.ndim != 3:
        raise LayerOutputError(f"Expected tokens of shape (N, tokens, C), got {tuple(tokens.shape)}.")
    n, count, channels = tokens.shape
    expected = math.prod(grid) + num_prefix_tokens
    if count != expected:
        hint = ""
        if count == math.prod(grid) + 1 and num_prefix_tokens == 0:
            hint = " There is one extra token: pass num_prefix_tokens=1 for a class token."
        elif count == math.prod(grid) and num_prefix_tokens > 0:
            hint = " The model has no class token here: pass num_prefix_tokens=0."
        raise LayerOutputError(
            f"The layer gives {count} tokens but a grid of {grid} with {num_prefix_tokens} prefix token(s) needs "
            f"{expected}.{hint} The grid is the input size divided by the patch size, per axis."
        )
    body = tokens[:, num_prefix_tokens:, :]
    return body.reshape(n, *grid, channels).movedim(-1, 1)


def vit_reshape_transform(tensor: torch.Tensor, height: int = 14, width: int = 14) -> torch.Tensor:
    """2D ViT (with a class token): ``(N, 1 + H·W, C)`` → ``(N, C, H, W)``."""
    return tokens_to_grid(tensor, (height, width), num_prefix_tokens=1)


def swinT_reshape_transform(tensor: torch.Tensor, height: int = 7, width: int = 7) -> torch.Tensor:
    """2D Swin: ``(N, H·W, C)`` tokens (or channels-last ``(N, H, W, C)``) → ``(N, C, H, W)``."""
    if tensor.ndim == 4:
        return tensor.movedim(-1, 1)
    return tokens_to_grid(tensor, (height, width), num_prefix_tokens=0)


def fasterrcnn_reshape_transform(x: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """FPN features (a dict or list of ``(N, C, *s)``) resized to the smallest level and concatenated."""
    features = list(x.values()) if isinstance(x, dict) else list(x)
    target = min((f.shape[2:] for f in features), key=lambda s: math.prod(s))
    resized = [resize_maps(torch.abs(f), tuple(target)) for f in features]
    return torch.cat(resized, dim=1)


def vit3d_reshape_transform(
    tensor: torch.Tensor, grid_size: Sequence[int], num_prefix_tokens: int = 0
) -> torch.Tensor:
    """3D ViT tokens ``(N, prefix + d·h·w, C)`` → ``(N, C, d, h, w)``."""
    return tokens_to_grid(tensor, grid_size, num_prefix_tokens)


def monai_vit_reshape_transform(
    img_size: Sequence[int], patch_size: Sequence[int] | int, num_prefix_tokens: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform for MONAI ``ViT``/``UNETR`` blocks: grid = ``img_size // patch_size`` per axis.

    Use ``num_prefix_tokens=1`` for ``ViT(classification=True)`` (it prepends a class token).
    Example: ``GradCAM(unetr, ["vit.blocks.11"], reshape_transform=monai_vit_reshape_transform((96,)*3, 16))``.
    """
    if isinstance(patch_size, int):
        patch_size = [patch_size] * len(img_size)
    grid = [int(i) // int(p) for i, p in zip(img_size, patch_size)]

    def transform(tensor: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tensor, grid, num_prefix_tokens)

    return transform


def channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    """``(N, *s, C)`` → ``(N, C, *s)`` (Swin blocks keep features channels-last)."""
    return tensor.movedim(-1, 1)


def swinunetr_reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
    """For a block inside MONAI ``SwinUNETR.swinViT`` (channels-last ``(N, D, H, W, C)``).

    Whole stages (``swinViT.layers4``) already return ``(N, C, D, H, W)`` and need no transform.
    """
    if tensor.ndim < 3:
        raise LayerOutputError(f"Expected a channels-last feature map, got shape {tuple(tensor.shape)}.")
    return channels_last_to_first(tensor)
