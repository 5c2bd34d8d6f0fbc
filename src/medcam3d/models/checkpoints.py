"""Checkpoints: hashing, reading state dicts safely, unwrapping the usual containers, loading strictly.

State dicts are read with ``torch.load(weights_only=True)``: no code runs. Common wrappers are
unwrapped (``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``,
``{"network": ...}``, ``{"net": ...}``), and prefixes such as Lightning's ``model.``, DataParallel's
``module.`` or ``torch.compile``'s ``_orig_mod.`` are removed when that makes the keys match.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medcam3d.models.errors import CheckpointError

__all__ = ["sha256_file", "read_state_dict", "unwrap_state_dict", "load_into", "WRAPPER_KEYS", "PREFIXES"]

logger = logging.getLogger(__name__)

#: keys under which training scripts store the weights, tried in this order
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "network", "net", "weights")
#: prefixes removed from every key when the keys then match the model
PREFIXES: tuple[str, ...] = ("model.", "module.", "_orig_mod.", "net.", "network.")

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes (cached per path, size and modification time)."""
    p = Path(path)
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    found = _HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with open(p, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        found = digest.hexdigest()
        _HASHES[key] = found
    return found


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def unwrap_state_dict(obj: Any, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` state dict inside ``obj`` (itself, or under one of :data:`WRAPPER_KEYS`)."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner: Any = obj.get(key)
            if _is_state_dict(inner):
                logger.info("Using the weights under %r of %s.", key, source)
                return dict(inner)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"{source} holds no state dict: a dict with keys {keys}, none of them ({', '.join(WRAPPER_KEYS)}) "
            "a mapping of parameter names to tensors. Save the weights with torch.save(model.state_dict(), path)."
        )
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    raise CheckpointError(
        f"{source} holds a {type(obj).__name__}, not a state dict. Save the weights with "
        "torch.save(model.state_dict(), path)."
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` (no code runs) and unwrap it.

    Raises:
        CheckpointError: the file is missing or unreadable, or it is a pickled object (a whole
            module) that only ``--trust-checkpoint`` may load.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {p} does not exist (or is not a file).")
    with open(p, "rb") as stream:
        head = stream.read(4)
    if not zipfile.is_zipfile(p) and head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
        raise CheckpointError(
            f"Could not read checkpoint {p}: it is not a file written by torch.save (no zip archive, no pickle). "
            "Check the path; the file may be damaged or in another format (TorchScript, ONNX, safetensors)."
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p} is not a plain state dict: it pickles Python objects (e.g. a whole nn.Module), which "
            "torch.load(weights_only=True) refuses because unpickling runs code. If you trust the file, pass "
            "--trust-checkpoint (trust_checkpoint=True); better, save torch.save(model.state_dict(), path) and "
            f"load it with --model package.module:factory. ({str(exc).splitlines()[0][:200]})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"Could not read checkpoint {p}: {str(exc).splitlines()[0][:300]}") from exc
    return unwrap_state_dict(obj, str(p))


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _best_match(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The state dict with the prefixes removed that make most keys match ``expected``."""
    best, best_hits = state, len(expected & set(state))
    frontier = [state]
    for _ in range(3):  # e.g. "model.module._orig_mod."
        nxt = []
        for candidate in frontier:
            for prefix in PREFIXES:
                if not any(k.startswith(prefix) for k in candidate):
                    continue
                stripped = _strip(candidate, prefix)
                hits = len(expected & set(stripped))
                if hits > best_hits:
                    best, best_hits = stripped, hits
                nxt.append(stripped)
        frontier = nxt
    if best_hits < len(expected) and best is state:
        return state
    return best


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Load ``state`` into ``model`` strictly (after removing wrapper prefixes that make keys match).

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ; the message lists the
            first of each.
    """
    expected_state = model.state_dict()
    expected = set(expected_state)
    state = _best_match(state, expected)
    missing = [k for k in expected_state if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected_state[k].shape)}"
        for k in expected_state
        if k in state and tuple(state[k].shape) != tuple(expected_state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:5])}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), first: {'; '.join(shapes[:3])}")
        raise CheckpointError(
            f"The weights in {source} do not fit the model {type(model).__name__}: {'; '.join(parts)}. Check that "
            "the factory builds the network that was trained (same --model-kwargs: channels, classes, features)."
        )
    model.load_state_dict(state, strict=True)
