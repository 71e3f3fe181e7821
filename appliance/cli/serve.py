"""``appliance serve``: build Settings from the environment, log them, and run the server."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys

from rich import box
from rich.console import Console
from rich.table import Table

from appliance import REDUCTSTORE_VERSION, __version__, logs
from appliance.errors import ConfigError
from appliance.settings import Settings, describe, load_settings, unknown_env_names

log = logging.getLogger("appliance")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    parser = commands.add_parser(
        "serve", help="run the HTTP server (configured by RS_* environment variables)"
    )
    parser.set_defaults(handler=run)


def config_table(settings: Settings) -> str:
    """The effective configuration as a text table (secrets masked)."""
    table = Table(title="effective configuration", box=box.ASCII)
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for name, value, source in describe(settings):
        table.add_row(name, value, source)
    buffer = io.StringIO()
    Console(file=buffer, width=110, no_color=True, force_terminal=False).print(table)
    return buffer.getvalue().rstrip()


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, warn about unknown RS_* names, and serve until stopped."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 2
    logs.configure_from(settings)
    log.info("appliance %s (ReductStore API %s) starting", __version__, REDUCTSTORE_VERSION)
    log.info("%s", "\n" + config_table(settings))
    for name, close in unknown_env_names():
        hint = f" (did you mean {close}?)" if close else ""
        log.warning("unknown setting %s is ignored%s", name, hint)
    from appliance.server import serve  # late: keeps `appliance check` free of Quart imports

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        logs.stop()
        return 2
    logs.stop()
    return 0
