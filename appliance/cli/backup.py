"""``appliance backup create|list|verify|delete``, ``appliance restore``, ``appliance
set-read-write`` (issue 12).

``backup create`` drives the running instance (``POST /api/v1/backups``: only the server can
pause its own writes); it prints the backup id on its last line. ``list``, ``verify`` and
``delete`` work on the target alone, no server needed. ``restore`` and ``set-read-write
--data`` work on a stopped instance's folder (a running one is refused); ``set-read-write
--url`` asks a running instance. Exit codes: 0 ok, 1 failure or damage found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _env(name: str, default: str = "") -> str:
    return next((v for k, v in os.environ.items() if k.upper() == name), default)


def _target_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=None,
        help="backup folder or s3://bucket/prefix[?endpoint=URL&region=R] (default: RS_BACKUP_TARGET)",
    )


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="instance URL (default http://127.0.0.1:$RS_PORT)")
    parser.add_argument("--token", default=None, help="API token with full access (default RS_API_TOKEN)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``backup``, ``restore`` and ``set-read-write`` subcommands."""
    parser = commands.add_parser("backup", help="online backups: create, list, verify, delete")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="take a consistent backup of a running instance")
    _server_args(create)
    _target_arg(create)
    create.add_argument("--bucket", action="append", default=None, help="only this bucket (repeatable)")
    create.set_defaults(handler=run_create)
    lister = actions.add_parser("list", help="backups in a target (id, cut time, size, new bytes, complete)")
    _target_arg(lister)
    lister.set_defaults(handler=run_list)
    verify = actions.add_parser(
        "verify", help="check a backup against its manifest and scrub every payload checksum"
    )
    verify.add_argument("id")
    _target_arg(verify)
    verify.set_defaults(handler=run_verify)
    delete = actions.add_parser("delete", help="delete one backup (the others stay whole)")
    delete.add_argument("id")
    _target_arg(delete)
    delete.set_defaults(handler=run_delete)

    restore = commands.add_parser(
        "restore", help="restore a backup into a stopped instance's data folder (read-only after)"
    )
    restore.add_argument("id", nargs="?", default=None, help="backup id")
    _target_arg(restore)
    restore.add_argument("--data", type=Path, default=None, help="data folder (default RS_DATA_PATH)")
    restore.add_argument("--bucket", default=None, help="restore only this bucket")
    restore.add_argument("--entry", default=None, help="restore only this entry (needs --bucket)")
    restore.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    restore.add_argument(
        "--to-time",
        default=None,
        help="point-in-time recovery (no ID): the state at this instant (µs or ISO 8601), "
        "from the newest backup before it plus the archived journal",
    )
    restore.set_defaults(handler=run_restore)

    rw = commands.add_parser(
        "set-read-write", help="lift the read-only mode of an instance restored from a backup"
    )
    rw.add_argument("--data", type=Path, default=None, help="data folder of a stopped instance")
    _server_args(rw)
    rw.set_defaults(handler=run_set_read_write)


def _target(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The target of ``--target`` or ``RS_BACKUP_TARGET`` (None after a message on stderr)."""
    from appliance.backup.targets import open_target
    from appliance.errors import ApplianceError

    raw = args.target or _env("RS_BACKUP_TARGET")
    if not raw:
        print("appliance: no backup target: pass --target or set RS_BACKUP_TARGET", file=sys.stderr)
        return None
    try:
        return open_target(raw)
    except ApplianceError as exc:
        print(f"appliance: {exc.message}", file=sys.stderr)
        return None


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import httpx

    url = args.url or f"http://127.0.0.1:{_env('RS_PORT', '8383')}"
    token = args.token if args.token is not None else _env("RS_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=None)


def _fail(response) -> int:  # type: ignore[no-untyped-def]
    message = response.headers.get("x-reduct-error") or response.text
    print(f"appliance: {response.status_code}: {message}", file=sys.stderr)
    return EXIT_FAILED


def run_create(args: argparse.Namespace) -> int:
    """Ask the running instance for a backup; print its summary, the id last."""
    import httpx

    body: dict[str, object] = {}
    if args.target:
        body["target"] = args.target
    if args.bucket:
        body["buckets"] = args.bucket
    try:
        with _client(args) as client:
            response = client.post("/api/v1/backups", json=body)
    except httpx.HTTPError as exc:
        print(f"appliance: cannot reach the instance: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if response.status_code != 200:
        return _fail(response)
    made = response.json()
    print(
        f"backup complete: {made['files']} file(s), {made['bytes']} byte(s), "
        f"{made['new_bytes']} new, writes paused {made['pause_ms']:.1f} ms"
    )
    for removed in made.get("removed", []):
        print(f"retention removed {removed}")
    print(made["id"])
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print the backups of the target, oldest first."""
    from appliance.backup import manifest as mf

    target = _target(args)
    if target is None:
        return EXIT_USAGE
    found, code = _offline(target.list_backups)
    if found is None:
        return code
    print(f"{'id':<24} {'cut time (UTC)':<32} {'bytes':>14} {'new bytes':>14}  state")
    for b in found:
        when = mf.iso(b.cut_us) if b.cut_us else "-"
        state = "complete" if b.complete else (b.problem or "incomplete")
        print(f"{b.id:<24} {when:<32} {b.bytes:>14} {b.new_bytes:>14}  {state}")
    return EXIT_OK


def _offline(fn, *args):  # type: ignore[no-untyped-def]
    """Run an offline operation; ApplianceError → one line on stderr and exit 1."""
    from appliance.errors import ApplianceError

    try:
        return fn(*args), EXIT_OK
    except ApplianceError as exc:
        print(f"appliance: {exc.message}", file=sys.stderr)
        return None, EXIT_FAILED


def run_verify(args: argparse.Namespace) -> int:
    """Verify one backup; exit 1 when anything is wrong."""
    from appliance import logs
    from appliance.settings import LogLevel

    logs.configure(LogLevel.ERROR)
    target = _target(args)
    if target is None:
        return EXIT_USAGE
    report, code = _offline(target.verify, args.id)
    if report is None:
        return code
    print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def run_delete(args: argparse.Namespace) -> int:
    """Delete one backup."""
    target = _target(args)
    if target is None:
        return EXIT_USAGE
    _, code = _offline(target.delete, args.id)
    if code == EXIT_OK:
        print(f"deleted {args.id}")
    return code


def _data(args: argparse.Namespace) -> Path:
    return args.data or Path(_env("RS_DATA_PATH") or "data")


def run_restore(args: argparse.Namespace) -> int:
    """Restore (or with --dry-run, plan) a backup into a data folder."""
    from appliance import logs
    from appliance.backup import restore
    from appliance.settings import LogLevel

    logs.configure(LogLevel.ERROR)
    target = _target(args)
    if target is None:
        return EXIT_USAGE
    if args.to_time is not None:
        return _restore_to_time(args, target)
    if args.id is None:
        print(
            "appliance restore: give a backup id (see `appliance backup list`) or --to-time",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.entry and not args.bucket:
        print("appliance restore: --entry needs --bucket", file=sys.stderr)
        return EXIT_USAGE
    fn = restore.plan if args.dry_run else restore.restore
    result, code = _offline(fn, target, args.id, _data(args), args.bucket, args.entry)
    if result is None:
        return code
    print(result.render())
    if args.dry_run:
        print("dry run: nothing was changed")
    else:
        print(
            f"restored into {_data(args)}; the instance starts read-only until "
            "`appliance set-read-write`"
        )
    return EXIT_OK


def _restore_to_time(args: argparse.Namespace, target) -> int:  # type: ignore[no-untyped-def]
    """``restore --to-time``: base backup + archived journal up to the instant."""
    from appliance.backup import pitr
    from appliance.backup import manifest as mf

    if args.id is not None or args.bucket or args.entry:
        print("appliance restore: --to-time restores everything; give no ID, --bucket or --entry",
              file=sys.stderr)
        return EXIT_USAGE
    at, code = _offline(pitr.parse_time, args.to_time)
    if at is None:
        return EXIT_USAGE
    if args.dry_run:
        base, code = _offline(pitr.choose_base, target, at)
        if base is None:
            return code
        print(f"would restore backup {base.id} (cut {mf.iso(base.cut_us)}) and replay the "
              f"archived journal up to {mf.iso(at)}\ndry run: nothing was changed")
        return EXIT_OK
    result, code = _offline(pitr.restore_to_time, target, at, _data(args))
    if result is None:
        return code
    print(result.render())
    print(f"restored into {_data(args)}; the instance starts read-only until "
          "`appliance set-read-write`")
    return EXIT_OK if not result.failed else EXIT_FAILED


def run_set_read_write(args: argparse.Namespace) -> int:
    """Lift the restored read-only mode: on a stopped folder (--data) or a running instance."""
    import httpx

    from appliance.backup import instance

    if args.data is not None:

        def lift(data: Path) -> bool:
            with instance.stopped(data):
                return instance.clear_restored(data)

        was, code = _offline(lift, args.data)
        if code == EXIT_OK:
            print(f"{args.data}: read-write" + ("" if was else " (it was not read-only)"))
        return code
    try:
        with _client(args) as client:
            response = client.post("/api/v1/set-read-write")
    except httpx.HTTPError as exc:
        print(f"appliance: cannot reach the instance: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if response.status_code != 200:
        return _fail(response)
    print("instance is read-write")
    return EXIT_OK
