"""The ``appliance`` command: parse arguments, dispatch to a subcommand module.

Subcommands: ``serve`` (the default: ``python -m appliance`` and ``appliance`` alone serve),
``check``, ``provision``, ``alias``, ``cp``, ``backup``, ``restore`` and ``set-read-write``.
Exit codes: 0 ok, 1 problems found / runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.cli import alias, backup, check, cp, provision, serve

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="ReductStore-compatible time-series blob store (HTTP API v1.21).",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.register(commands)
    check.register(commands)
    provision.register(commands)
    alias.register(commands)
    cp.register(commands)
    backup.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m appliance``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or [])])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
