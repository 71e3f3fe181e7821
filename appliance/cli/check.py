"""``appliance check``: scrub a data folder offline and report every problem found."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``check`` subcommand."""
    parser = commands.add_parser(
        "check",
        help="verify every checksum and index of a data folder (exit 1 if problems are found)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder to check (default: RS_DATA_PATH, else ./data)",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="repair what startup recovery repairs (replay WAL, rebuild indexes, quarantine)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scrub, print the report, and exit 1 when problems remain."""
    from appliance import logs
    from appliance.engine.check import check
    from appliance.settings import LogLevel

    # The report below lists every problem; the engine's per-problem warnings would repeat them.
    logs.configure(LogLevel.ERROR)
    data = args.data or Path(os.environ.get("RS_DATA_PATH") or "data")
    if not data.is_dir():
        print(f"appliance check: data folder {str(data)!r} does not exist", file=sys.stderr)
        return 2
    report = check(data, repair=args.repair)
    print(report.render())
    logs.stop()
    return 0 if report.ok else 1
