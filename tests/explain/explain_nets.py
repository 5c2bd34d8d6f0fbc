"""Factories for ``--model explain_nets:...`` in the tests (tests/explain is put on sys.path)."""

from __future__ import annotations

import torch.nn as nn

from helpers_models import TinyResNet, TinySegNet

#: how often each factory ran (the model must be loaded once per run)
CALLS: dict[str, int] = {"classifier": 0, "segmenter": 0}


def classifier(**kwargs: object) -> nn.Module:
    CALLS["classifier"] += 1
    return TinyResNet(ndim=3, **kwargs)  # type: ignore[arg-type]


def segmenter(**kwargs: object) -> nn.Module:
    CALLS["segmenter"] += 1
    return TinySegNet(ndim=3, **kwargs)  # type: ignore[arg-type]


def not_a_module() -> object:
    return {"conv": 1}
