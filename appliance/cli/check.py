"""``appliance check``: scrub a data folder offline and report every problem found.

Exit status: 0 clean, 1 problems, 2 no such folder or the cache of an S3-backed instance.
Damage (checksum failures, corrupt metadata) always exits 1. Crash leftovers (torn WAL tails, indexes behind their descriptors,
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
            "--repair only damage exits 1. A folder a running instance holds is only read, "
            "with a warning that the report may be inconsistent; --repair refuses it (exit 2) "
            "unless --force."
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="repair even though a running instance holds the folder (it will not notice: "
        "stop it first unless you know better)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scrub, print the report; exit 1 on damage, or on leftovers without --repair."""
    from appliance import logs
    from appliance.engine.check import check
    from appliance.engine.mirror import STATE_DIR as MIRROR_STATE_DIR
    from appliance.inuse import FolderInUse, InUseLock, identity
    from appliance.settings import LogLevel

    # The report below lists every problem; the engine's per-problem warnings would repeat them.
    logs.configure(LogLevel.ERROR)
    data = args.data or Path(os.environ.get("RS_DATA_PATH") or "data")
    if not data.is_dir():
        print(f"appliance check: data folder {str(data)!r} does not exist", file=sys.stderr)
        return 2
    if (data / MIRROR_STATE_DIR).is_dir():
        # Evicted blocks are zeros here: a scrub would call them damage, or say "clean" of
        # bytes it never read. A backup fetches every block; its verify scrubs the real bytes.
        print(
            f"appliance check: {str(data)!r} is the cache of an S3-backed instance; evicted "
            "blocks are placeholders there, so it cannot be checked offline: take a backup "
            "(`appliance backup create`, it fetches every block) and run `appliance backup verify`",
            file=sys.stderr,
        )
        logs.stop()
        return 2
    lock = InUseLock(data)
    try:
        what = "appliance check" + (" --repair" if args.repair else "")
        lock.acquire(exclusive=True, who=identity(what))
    except FolderInUse as exc:
        if args.repair and not args.force:
            print(
                f"appliance check: refusing to repair {str(data)!r}: "
                f"the folder is in use by {exc}; "
                "stop it first (or pass --force)",
                file=sys.stderr,
            )
            logs.stop()
            return 2
        print(
            f"appliance check: warning: {str(data)!r} is in use by {exc}; "
            "the report may be inconsistent (the instance keeps writing while it is read)",
            file=sys.stderr,
        )
    try:
        report = check(data, repair=args.repair)
    finally:
        lock.release()
    print(report.render())
    logs.stop()
    if report.damaged or (not report.ok and not args.repair):
        return 1
    return 0
