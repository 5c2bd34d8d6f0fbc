"""The suite's own layout rules: test modules are imported by basename (no ``__init__.py``), so two
test files with one name, or ``from conftest import ...`` (which gets whichever conftest came first),
break collection of the whole suite."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_modules_have_unique_basenames() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [name for name, count in names.items() if count > 1] == []


def test_no_module_imports_from_conftest() -> None:
    pattern = re.compile(r"^\s*(from conftest import|import conftest)", re.M)
    offenders = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
