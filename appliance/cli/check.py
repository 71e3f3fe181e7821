"""``appliance check``: scrub a data folder offline and report every problem found.

Exit status: 0 clean, 1 problems, 2 no such folder. Damage (checksum failures, corrupt
metadata) always exits 1. Crash leftovers (torn WAL tails, indexes behind their descriptors,
unfinished files: what a SIGKILL leaves) are listed either way but exit 1 only without
``--repair``: then nothing was changed and the folder still needs recovery, which a script
should notice; with ``--repair`` they have just been cleaned up, so they are no reason to fail.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``check`` subcommand."""
    parser = commands.add_parser(
        "check",
        help=(
            "verify every checksum and index of a data folder; exit 1 on damage, and on crash "
            "leftovers (torn WAL tails, indexes behind their descriptors) unless --repair "
            "cleaned them up"
        ),
        description=(
            "Scrub a stopped instance's data folder. Damage (checksum failures, corrupt "
            "metadata) exits 1. Crash leftovers (what a SIGKILL leaves: torn WAL tails, "
            "indexes behind their descriptors, unfinished files) are reported too and exit 1 "
            "without --repair; --repair (or starting the server) cleans them up, so with "
            "--repair only damage exits 1."
        ),
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
    """Run the scrub, print the report; exit 1 on damage, or on leftovers without --repair."""
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
    if report.damaged or (not report.ok and not args.repair):
        return 1
    return 0
