"""``appliance alias add|ls|rm``: named instances for ``appliance cp`` (issue 12 §3).

Stored in ``$XDG_CONFIG_HOME/appliance/aliases.toml`` (``~/.config/appliance/aliases.toml``
by default), file mode 0600, folder 0700. Exit status: 0 ok, 2 bad name/URL or unknown alias.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.hotcopy.aliases import AliasStore


def config_folder() -> Path:
    """The user's config folder for the appliance (XDG base directory rules)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "appliance"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``alias`` subcommand and its three actions."""
    parser = commands.add_parser(
        "alias",
        help="manage named instances (URL + token) for `appliance cp`",
        description=f"Named instances, kept in {config_folder() / 'aliases.toml'} (mode 0600).",
    )
    actions = parser.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="remember an instance under a name")
    add.add_argument("name")
    add.add_argument("--url", required=True, help="http(s)://host:port of the instance")
    add.add_argument(
        "--token",
        default="",
        help="API token (empty: authentication off; '-' reads it from stdin, out of the "
        "shell history)",
    )
    add.add_argument("--force", action="store_true", help="replace an alias of that name")
    add.set_defaults(handler=run_add)
    ls = actions.add_parser("ls", help="list aliases (tokens masked)")
    ls.set_defaults(handler=run_ls)
    rm = actions.add_parser("rm", help="forget an alias")
    rm.add_argument("name")
    rm.set_defaults(handler=run_rm)


def _store() -> AliasStore:
    from appliance.hotcopy.aliases import AliasStore

    return AliasStore(config_folder())


def run_add(args: argparse.Namespace) -> int:
    """Store the alias."""
    from appliance.hotcopy.aliases import AliasError

    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    try:
        alias = _store().add(args.name, args.url, token, replace_existing=args.force)
    except (AliasError, OSError) as exc:
        print(f"appliance alias add: {exc}", file=sys.stderr)
        return 2
    print(f"alias {alias.name!r} -> {alias.url}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    """Print one line per alias: name, URL, masked token."""
    from appliance.hotcopy.aliases import AliasError

    try:
        aliases = _store().load()
    except AliasError as exc:
        print(f"appliance alias ls: {exc}", file=sys.stderr)
        return 2
    width = max([len(name) for name in aliases] + [4])
    print(f"{'NAME':<{width}}  URL  TOKEN")
    for alias in sorted(aliases.values(), key=lambda a: a.name):
        print(f"{alias.name:<{width}}  {alias.url}  {alias.masked_token}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    """Remove the alias."""
    from appliance.hotcopy.aliases import AliasError

    try:
        _store().remove(args.name)
    except (AliasError, OSError) as exc:
        print(f"appliance alias rm: {exc}", file=sys.stderr)
        return 2
    print(f"alias {args.name!r} removed")
    return 0
