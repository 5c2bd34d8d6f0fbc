"""``medcam3d demo``: a real 3D scan, a trained lesion detector and its CAMs, end to end.

>>> from medcam3d.demo import run_demo          # doctest: +SKIP
>>> result = run_demo("demo_out", methods=["hirescam", "layercam"])   # doctest: +SKIP
>>> result.hits, result.lesion_mni                                    # doctest: +SKIP

The package's top level stays light (``medcam3d --help`` must not pay for the demo): the names
below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from medcam3d.demo.runner import (
        AUTO_LAYER,
        DEFAULT_CANDIDATE_LAYERS,
        DEFAULT_METHODS,
        DEFAULT_REFERENCE_METHODS,
        DEFAULT_SEED,
        DEFAULT_STEPS,
        DEFAULT_TOLERANCE_MM,
        DemoResult,
        MethodResult,
        pointing_game,
        run_demo,
    )

__all__ = [
    "AUTO_LAYER",
    "DEFAULT_CANDIDATE_LAYERS",
    "DEFAULT_METHODS",
    "DEFAULT_REFERENCE_METHODS",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "DEFAULT_TOLERANCE_MM",
    "DemoResult",
    "MethodResult",
    "pointing_game",
    "run_demo",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("medcam3d.demo.runner"), name)
    raise AttributeError(f"module 'medcam3d.demo' has no attribute {name!r}")
