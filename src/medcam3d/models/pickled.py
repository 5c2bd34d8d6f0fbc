"""Whole pickled modules (``torch.save(model, path)``), loaded only when the user trusts the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medcam3d.models.checkpoints import read_state_dict
from medcam3d.models.errors import CheckpointError

__all__ = ["load_pickled_module"]


def load_pickled_module(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> nn.Module:
    """The ``nn.Module`` pickled in ``path``.

    Unpickling runs arbitrary code from the file, so this happens only with
    ``trust_checkpoint=True`` (``--trust-checkpoint``); without it a clear error says so (and a plain
    state dict is pointed to ``--model factory``).

    Raises:
        CheckpointError: not trusted, unreadable, or the file does not hold a module.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {p} does not exist (or is not a file).")
    if not trust_checkpoint:
        read_state_dict(p)  # raises with the --trust-checkpoint advice when the file pickles objects
        raise CheckpointError(
            f"{p} holds a state dict (weights only): give the code that builds the network with --model "
            "package.module:factory (and --model-kwargs)."
        )
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything; say which file
        raise CheckpointError(
            f"Could not unpickle {p}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. The classes it "
            "pickles must be importable (the training code on PYTHONPATH)."
        ) from exc
    if isinstance(obj, dict):
        for key in ("model", "network", "net"):
            if isinstance(obj.get(key), nn.Module):
                obj = obj[key]
                break
    if isinstance(obj, torch.jit.ScriptModule) or isinstance(obj, nn.Module):
        return obj
    raise CheckpointError(
        f"{p} holds a {type(obj).__name__}, not an nn.Module; for a state dict use --model package.module:factory."
    )
