"""Reading the examples out of the docs pages (shared by the tests that run them)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def section_commands(page: str, heading: str, prefix: str) -> list[str]:
    """The command lines starting with ``prefix`` in the ``bash`` blocks (not marked ``skip``) of the
    ``## heading`` section of ``docs/<page>``, with backslash continuations joined."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for info, body in FENCE.findall(section):
        if info.split()[:1] == ["bash"] and "skip" not in info.split():
            joined = re.sub(r"\\\n\s*", " ", body)
            commands += [line.strip() for line in joined.splitlines() if line.strip().startswith(prefix)]
    return commands
