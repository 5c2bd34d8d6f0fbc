"""Metrics that say whether a map is faithful to the model, whether it localises, and whether it
would look the same for a random network; pytorch-grad-cam 1.5.7's metric modules at the same
import paths (``medcam3d.metrics.road``, ``medcam3d.metrics.cam_mult_image``, ...).

Every public name of the families below is also available here, loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

#: the metric families, one module each
FAMILIES = (
    "cam_mult_image",
    "perturbation_confidence",
    "road",
    "arcc",
    "curves",
    "localisation",
    "sanity",
    "comparison",
    "evaluate",
)


def _family_names(family: str) -> list[str]:
    try:
        module = importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as error:
        if error.name == f"{__name__}.{family}":
            return []
        raise
    return list(getattr(module, "__all__", []))


def __getattr__(name: str) -> Any:
    for family in FAMILIES:
        if name in _family_names(family):
            return getattr(importlib.import_module(f"{__name__}.{family}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for family in FAMILIES for n in _family_names(family))})
