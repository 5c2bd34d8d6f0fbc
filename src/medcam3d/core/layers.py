"""Resolve target layers given as modules or dotted names."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Union

import torch.nn as nn

from medcam3d.core.model import unwrap_compiled
from medcam3d.errors import LayerNotFoundError

__all__ = ["LayerSpec", "resolve_layers", "layer_name", "strip_compile_prefix"]

LayerSpec = Union[nn.Module, str]
_COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(name: str) -> str:
    """Remove ``torch.compile``'s ``_orig_mod.`` prefixes from a module name."""
    return name.replace(_COMPILE_PREFIX, "")


def _normalise_name(name: str) -> str:
    # "layer4[-1]" -> "layer4.-1"; "model.layer4" accepted when the user prefixes the root
    name = re.sub(r"\[(-?\d+)\]", r".\1", name.strip())
    return strip_compile_prefix(name).strip(".")


def _walk(model: nn.Module, name: str) -> nn.Module | None:
    module: nn.Module = model
    for part in name.split("."):
        if part == "":
            continue
        children = dict(module.named_children())
        if part in children:
            module = children[part]
            continue
        if re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            index = int(part)
            if -len(module) <= index < len(module):
                module = module[index]
                continue
        return None
    return module


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in unwrap_compiled(model).named_modules():
        if module is layer:
            return name
    return type(layer).__name__


def resolve_layers(
    model: nn.Module, target_layers: Sequence[LayerSpec] | LayerSpec
) -> list[tuple[str, nn.Module]]:
    """Turn modules or dotted names into ``(name, module)`` pairs.

    Names follow ``model.named_modules()`` (``"encoder.stages.4"``); ``"layer4[-1]"`` and
    negative indices into ``Sequential``/``ModuleList`` are accepted, and ``torch.compile``'s
    ``_orig_mod.`` prefix is ignored. An unknown name raises :class:`LayerNotFoundError` listing
    the closest existing names; a module that is not part of ``model`` raises too.
    """
    if target_layers is None:
        raise LayerNotFoundError(
            "target_layers is None: pass the layer(s) to explain, as modules or dotted names (e.g. "
            "[model.layer4] or ['layer4']); medcam3d.utils.find_layers.suggest_target_layer(model, input_shape) "
            "proposes one."
        )
    if isinstance(target_layers, (nn.Module, str)):
        target_layers = [target_layers]
    if not isinstance(target_layers, (list, tuple)):
        target_layers = list(target_layers)
    if len(target_layers) == 0:
        raise LayerNotFoundError(
            "target_layers is empty: pass at least one layer (a module or a dotted name)."
        )
    root = unwrap_compiled(model)
    names = [n for n, _ in root.named_modules() if n]
    resolved: list[tuple[str, nn.Module]] = []
    for spec in target_layers:
        if isinstance(spec, str):
            wanted = _normalise_name(spec)
            module = _walk(root, wanted)
            if module is None:
                close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
                if not close:
                    tail = wanted.split(".")[-1]
                    close = [n for n in names if n.split(".")[-1] == tail][:5]
                hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
                raise LayerNotFoundError(
                    f"The model has no layer named {spec!r}.{hint} "
                    "List the layers with medcam3d.utils.find_layers.list_layers(model, input_shape)."
                )
            resolved.append((layer_name(root, module), module))
        elif isinstance(spec, nn.Module):
            name = layer_name(root, spec)
            if not any(m is spec for m in root.modules()):
                raise LayerNotFoundError(
                    f"The target layer {type(spec).__name__} is not a sub-module of the model. "
                    "Pass a module taken from this model instance (e.g. model.layer4[-1]) or its dotted name."
                )
            resolved.append((name, spec))
        else:
            raise LayerNotFoundError(
                f"A target layer must be an nn.Module or a dotted name, got {type(spec).__name__}."
            )
    return resolved
