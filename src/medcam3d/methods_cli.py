"""``medcam3d methods``: print the registry of CAM methods."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``methods`` sub-command."""
    p = subparsers.add_parser("methods", help="list the CAM methods and whether they need gradients")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the table (name, class, needs gradients, description) to stdout."""
    from medcam3d.methods.registry import method_table

    rows = [
        (m.name, m.cls.__name__, "yes" if m.uses_gradients else "no", m.description) for m in method_table()
    ]
    header = ("name", "class", "gradients", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
