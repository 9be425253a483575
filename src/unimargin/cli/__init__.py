"""The ``unimargin`` command (docs/cli.md): one module per sub-command.

Options come from flags and/or ``--config file.yaml``; flags override the file, the file
overrides the defaults. Bad input prints ``error: ...`` and exits with status 2; a run that
diverged exits with status 3 (its last good checkpoint is kept).

Adding a command: write ``unimargin/cli/<name>.py`` with ``register(subparsers)`` (adds its
parser and ``set_defaults(func=...)``; ``func(args) -> int``), then add ``"<name>"`` to
:data:`COMMANDS` — a one-line edit.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import EXIT_DIVERGED, EXIT_ERROR, EXIT_OK

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_OK", "EXIT_ERROR", "EXIT_DIVERGED"]

# Sub-command modules, in the order `unimargin --help` lists them.
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "compare",
    "sweep",
    "calibrate",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    from unimargin import __version__

    parser = argparse.ArgumentParser(
        prog="unimargin",
        description="Train and compare classifiers with large-margin (LMDL) and unified-threshold "
                    "(BCE-u) heads.")
    parser.add_argument("--version", action="version", version=f"unimargin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``unimargin`` command; returns the exit status (0 ok, 2 error, 3 diverged)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
