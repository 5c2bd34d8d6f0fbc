"""The explain tests' fixtures (defined in ``explain_helpers``, a uniquely named module: test files
import its helpers, and ``from conftest import ...`` would pick whichever conftest came first)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from explain_helpers import classifier_checkpoint, scans, segmenter_checkpoint  # noqa: E402

__all__ = ["classifier_checkpoint", "scans", "segmenter_checkpoint"]
