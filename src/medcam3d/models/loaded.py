"""What loading a user's model gives: :class:`LoadedModel` (the network and where it came from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medcam3d.core.model import conv_spatial_rank

__all__ = ["BundleInfo", "LoadedModel", "ModelSource", "first_conv_channels"]


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: exactly one of a MONAI ``bundle`` folder, a ``factory``
    (``"package.module:function"`` or ``"path/to/file.py:function"``, called with ``model_kwargs``)
    with an optional state-dict ``checkpoint``, or a pickled whole-module ``checkpoint`` loaded only
    with ``trust_checkpoint=True`` (unpickling runs code)."""

    bundle: Path | None = None
    factory: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    trust_checkpoint: bool = False

    def describe(self) -> str:
        if self.bundle is not None:
            return f"MONAI bundle {self.bundle}"
        if self.factory is not None:
            return f"factory {self.factory}" + (f" + {self.checkpoint}" if self.checkpoint else "")
        return f"pickled module {self.checkpoint}"


@dataclass
class BundleInfo:
    """A MONAI bundle's parts used for explaining: its preprocessing (a MONAI ``Compose`` of
    dictionary transforms, applied to ``{image_key: path}``), the sliding-window size of its
    inferer (``roi_size``, MONAI axis order x, y, z) and overlap, and its metadata."""

    root: Path
    config_file: Path
    preprocessing: Any
    image_key: str = "image"
    roi_size: tuple[int, ...] | None = None
    overlap: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A user's network, in eval mode on ``device``, and its provenance.

    Attributes:
        network: the ``nn.Module``; it takes ``(N, C, *S)``.
        source: how it was given (:class:`ModelSource`).
        kind: ``"bundle"``, ``"factory"`` or ``"pickle"``.
        checkpoint: the weights file (``None`` for a factory without checkpoint).
        checkpoint_sha256: its sha256 (hex).
        in_channels: channels of the first convolution (``None`` if it has none).
        spatial_dims: spatial axes of its convolutions (``None`` if mixed or none).
        device: where it lives.
        bundle: the bundle's preprocessing and inferer settings (bundles only).
    """

    network: nn.Module
    source: ModelSource
    kind: str
    checkpoint: Path | None
    checkpoint_sha256: str | None
    in_channels: int | None
    spatial_dims: int | None
    device: torch.device
    bundle: BundleInfo | None = None

    def provenance(self) -> dict[str, Any]:
        """A JSON-ready description for sidecars."""
        return {
            "kind": self.kind,
            "source": self.source.describe(),
            "class": f"{type(self.network).__module__}.{type(self.network).__qualname__}",
            "factory": self.source.factory,
            "model_kwargs": self.source.model_kwargs,
            "bundle": str(self.source.bundle) if self.source.bundle else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "in_channels": self.in_channels,
            "spatial_dims": self.spatial_dims,
            "parameters": int(sum(p.numel() for p in self.network.parameters())),
        }


def first_conv_channels(network: nn.Module) -> int | None:
    """``in_channels`` of the first convolution in module order (``None`` without convolutions)."""
    for module in network.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def finish(
    network: nn.Module,
    source: ModelSource,
    kind: str,
    checkpoint: Path | None,
    checkpoint_sha256: str | None,
    device: torch.device,
    bundle: BundleInfo | None = None,
) -> LoadedModel:
    network = network.to(device).eval()
    return LoadedModel(
        network=network,
        source=source,
        kind=kind,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        in_channels=first_conv_channels(network),
        spatial_dims=conv_spatial_rank(network),
        device=device,
        bundle=bundle,
    )
