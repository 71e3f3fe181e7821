"""``appliance cp SRC/BUCKET DST/BUCKET``: copy records between instances (issue 12 §3).

SRC and DST are aliases (``appliance alias add``) or URLs; SRC may also be a local data folder
or a complete backup folder, opened read-only. Only the public HTTP API is used on the wire.
Prints progress on stderr (a bar on a terminal, plain lines otherwise) and one summary line on
stdout. Exit status: 0 everything copied or skipped, 1 anything failed (or the copy could not
start: unreachable, refused token, missing bucket), 2 bad arguments or unknown alias.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.hotcopy.copier import CopyOptions
    from appliance.hotcopy.filters import CopyFilter
    from appliance.hotcopy.locations import Location
    from appliance.hotcopy.model import Source
    from appliance.hotcopy.progress import Reporter


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``cp`` subcommand."""
    parser = commands.add_parser(
        "cp",
        help="copy a bucket's records to another instance (safe to re-run: copies nothing twice)",
        description=(
            "Copy records from SRC/BUCKET to DST/BUCKET. SRC and DST are aliases or URLs "
            "(http://host:port); SRC may also be a local data folder or backup folder. The "
            "destination bucket is created with the source's settings when missing; records "
            "it already has are skipped and counted."
        ),
    )
    parser.add_argument("source", metavar="SRC/BUCKET")
    parser.add_argument("destination", metavar="DST/BUCKET")
    parser.add_argument("--start", help="first timestamp (µs since the epoch or ISO 8601)")
    parser.add_argument("--stop", help="end timestamp, exclusive (µs or ISO 8601)")
    parser.add_argument(
        "--entries",
        action="append",
        default=[],
        metavar="GLOBS",
        help="entries to copy, comma-separated or repeated: names, globs (* within a "
        "segment, ** across segments), !exclusions (default: all)",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="copy only records with this label value (repeat: all must match)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="skip records with this label value (repeat: skipped when all match)",
    )
    parser.add_argument("--when", help="conditional query (JSON), evaluated by the source")
    parser.add_argument("--limit", type=int, help="at most this many records per entry")
    parser.add_argument(
        "--parallel", type=int, default=4, help="entries copied at once (default 4)"
    )
    parser.add_argument(
        "--from-last",
        action="store_true",
        help="start each entry after the newest record the destination already has",
    )
    parser.add_argument(
        "--no-attachments",
        action="store_true",
        help="don't copy the attachments ($meta) of the copied entries",
    )
    parser.add_argument("--src-token", help="token for a SRC URL (overrides an alias's)")
    parser.add_argument("--dst-token", help="token for a DST URL (overrides an alias's)")
    parser.add_argument(
        "--ca-cert",
        metavar="PEM",
        help="trust this CA certificate for https:// ends (e.g. an instance's self-signed "
        "RS_CERT_PATH); default: the system's CAs",
    )
    parser.set_defaults(handler=run)


def _filter(args: argparse.Namespace) -> CopyFilter:
    from appliance.hotcopy.filters import CopyFilter, parse_labels, parse_time, parse_when

    entries = tuple(p.strip() for item in args.entries for p in item.split(",") if p.strip())
    return CopyFilter(
        start=parse_time(args.start, "--start") if args.start else None,
        stop=parse_time(args.stop, "--stop") if args.stop else None,
        entries=entries,
        include=parse_labels(args.include, "--include"),
        exclude=parse_labels(args.exclude, "--exclude"),
        when=parse_when(args.when),
        limit=args.limit,
    )


def run(args: argparse.Namespace) -> int:
    """Resolve both ends, copy, print the summary; see the module docstring for exit codes."""
    from appliance import logs
    from appliance.cli.alias import config_folder
    from appliance.hotcopy.aliases import AliasError, AliasStore
    from appliance.hotcopy.copier import CopyOptions
    from appliance.hotcopy.filters import FilterError
    from appliance.hotcopy.locations import resolve
    from appliance.settings import LogLevel

    logs.configure(LogLevel.ERROR)  # the engine's own warnings would interleave with progress
    try:
        store = AliasStore(config_folder())
        src = resolve(args.source, store, allow_folder=True, token=args.src_token)
        dst = resolve(args.destination, store, allow_folder=False, token=args.dst_token)
        if src.url is not None and (src.url, src.bucket) == (dst.url, dst.bucket):
            raise FilterError("source and destination are the same bucket")
        options = CopyOptions(
            _filter(args),
            parallel=args.parallel,
            from_last=args.from_last,
            attachments=not args.no_attachments,
        )
        if args.parallel < 1:
            raise FilterError("--parallel must be at least 1")
    except (AliasError, FilterError) as exc:
        print(f"appliance cp: {exc}", file=sys.stderr)
        return 2
    if args.ca_cert and not os.path.isfile(args.ca_cert):
        print(f"appliance cp: --ca-cert {args.ca_cert!r} is not a file", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_copy(src, dst, options, args.ca_cert))
    except KeyboardInterrupt:
        # Safe to stop at any point: a re-run skips what arrived (or use --from-last).
        print("appliance cp: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130
    finally:
        logs.stop()


def _open_source(src: Location, reporter: Reporter, ca_cert: str | None) -> Source:
    """The source end: a local folder read-only (warning about WALs), or a Remote."""
    from appliance.hotcopy.local import LocalSource
    from appliance.hotcopy.remote import Remote

    if src.folder is None:
        assert src.url is not None
        return Remote(src.url, src.token, src.bucket, "source", ca_cert=ca_cert)
    local = LocalSource(src.folder, src.bucket)
    if local.uncompacted_wals:
        reporter.note(
            f"warning: {local.uncompacted_wals} WAL segment(s) in {local.folder} were not "
            "compacted (unclean stop, or a running instance): records only in a WAL are not "
            "copied; `appliance check --repair` on a stopped folder folds them in"
        )
    return local


async def _copy(
    src: Location, dst: Location, options: CopyOptions, ca_cert: str | None = None
) -> int:
    from appliance.hotcopy.copier import Copier
    from appliance.hotcopy.model import CopyError
    from appliance.hotcopy.progress import make_reporter
    from appliance.hotcopy.remote import Remote

    reporter = make_reporter()
    assert dst.url is not None
    destination = Remote(dst.url, dst.token, dst.bucket, "destination", ca_cert=ca_cert)
    source: Source | None = None
    try:
        source = _open_source(src, reporter, ca_cert)
        copier = Copier(source, destination, options, reporter)
        stats = await copier.run()
    except CopyError as exc:
        print(f"appliance cp: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await destination.aclose()
        if source is not None:
            await source.aclose()
    for line in stats.errors:
        print(f"error: {line}", file=sys.stderr)
    failed_entries = f", {copier.entry_errors} entr(ies) failed" if copier.entry_errors else ""
    print(
        f"copied {stats.copied} record(s), skipped {stats.skipped}, failed {stats.failed}"
        f"{failed_entries}, {stats.bytes} bytes in {stats.seconds:.2f} s ({stats.rates()})"
    )
    return 0 if copier.ok else 1
