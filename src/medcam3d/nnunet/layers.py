"""Choosing a target layer of an nnU-Net network: the suggested layers and the ``--list-layers`` table."""

from __future__ import annotations

from typing import Any

import torch

from medcam3d.core.model import unwrap_compiled
from medcam3d.nnunet.loading import plain_network

__all__ = ["layer_table", "suggested_layers"]


def suggested_layers(network: torch.nn.Module) -> dict[str, str]:
    """Sensible target layers of an nnU-Net network (PlainConvUNet, ResidualEncoderUNet):
    ``{name: why}`` for the bottleneck (last encoder stage) and the last decoder stages.

    Block outputs are suggested (not the in-place LeakyReLU inside them, whose output tensor is
    modified in place).
    """
    net = unwrap_compiled(network)
    names = {n for n, _ in net.named_modules()}
    out: dict[str, str] = {}
    encoder = getattr(net, "encoder", None)
    stages = getattr(encoder, "stages", None)
    if stages is not None and len(stages) > 0:
        out[f"encoder.stages.{len(stages) - 1}"] = "bottleneck (last encoder stage): coarse, most semantic"
    decoder = getattr(net, "decoder", None)
    dstages = getattr(decoder, "stages", None)
    if dstages is not None and len(dstages) > 0:
        out[f"decoder.stages.{len(dstages) - 1}"] = "last decoder stage: full resolution, sharp"
        if len(dstages) > 1:
            out[f"decoder.stages.{len(dstages) - 2}"] = "second-to-last decoder stage: half resolution"
    return {k: v for k, v in out.items() if k in names}


def layer_table(predictor: Any) -> str:
    """The module tree of the predictor's network, in tree order, with each layer's type, output
    channels and feature-map size at the configuration's patch size (one forward pass of zeros);
    the suggested layers are marked with ``*``."""
    from medcam3d.utils.find_layers import list_layers

    network = plain_network(predictor)
    patch = tuple(int(s) for s in predictor.configuration_manager.patch_size)
    channels = next(m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)).in_channels
    infos = list_layers(network, (1, channels, *patch))
    tree_order = {name: i for i, (name, _) in enumerate(network.named_modules())}
    infos = sorted(infos, key=lambda info: tree_order.get(info.name, len(tree_order)))
    marks = suggested_layers(network)
    width = max(2 * i.name.count(".") + len(i.name) for i in infos)
    lines = [
        f"Layers of {type(network).__name__} at patch size {patch} (channels, feature-map size; * = suggested):"
    ]
    for info in infos:
        shape = "x".join(str(s) for s in info.spatial_shape) if info.output_shape else "-"
        chans = str(info.output_shape[1]) if info.output_shape and len(info.output_shape) > 1 else "-"
        mark = f"  * {marks[info.name]}" if info.name in marks else ""
        label = "  " * info.name.count(".") + info.name
        lines.append(f"{label.ljust(width)}  {info.type:<22} {chans:>5} ch  {shape}{mark}")
    lines.append(
        "In-place activations (LeakyReLU(inplace=True)) are best tapped through their block's output."
    )
    return "\n".join(lines) + "\n"
