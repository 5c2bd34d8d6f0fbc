"""The ``medcam3d`` command.

Sub-commands live in their own modules and are registered lazily, so ``medcam3d --help``
works without the optional extras. Each module provides ``register(subparsers)``, which adds
its parser and sets ``func`` (``args -> int`` exit code) as the default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from medcam3d.errors import MedCAMError

# (module providing register(subparsers)); the order is the order shown in --help.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "medcam3d.demo.cli",
    "medcam3d.nnunet.cli",
    "medcam3d.explain.cli",
    "medcam3d.viz.viewer_cli",
    "medcam3d.methods_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from medcam3d import __version__

    parser = argparse.ArgumentParser(
        prog="medcam3d",
        description="Class Activation Maps for 3D (and 2D) medical-imaging networks.",
    )
    parser.add_argument("--version", action="version", version=f"medcam3d {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("medcam3d"):
                continue  # sub-command not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except MedCAMError as exc:
        sys.stderr.write(f"medcam3d: error: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
