"""``appliance serve``: load the provisioning and Settings from the environment, log them, serve.

The desired state is loaded once, here: its ``instance:`` keys feed Settings (an explicit
``RS_*`` variable wins over them, ARCHITECTURE §6) and the same object is handed to the server,
whose provisioner applies its buckets and tokens at boot. A bad file or setting stops startup
with one line on stderr and exit code 2, before anything is opened.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Mapping, Set
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

import provisioning
from appliance import REDUCTSTORE_VERSION, __version__, logs
from appliance.errors import ConfigError
from appliance.settings import (
    Settings,
    check_auth_choice,
    describe,
    env_name,
    load_settings,
    unknown_env_names,
    unsupported_env_names,
)

log = logging.getLogger("appliance")

EXIT_CONFIG = 2


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    parser = commands.add_parser(
        "serve",
        help="run the HTTP server (configured by RS_* environment variables and the "
        "provisioning at RS_PROVISIONING_PATH)",
    )
    parser.set_defaults(handler=run)


def config_table(settings: Settings, from_yaml: Set[str] = frozenset()) -> str:
    """The effective configuration as a text table (secrets masked); ``from_yaml``: the
    ``RS_*`` names whose value came from the provisioning's ``instance:`` section."""
    table = Table(title="effective configuration", box=box.ASCII)
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for name, value, source in describe(settings):
        table.add_row(name, value, "provisioning" if name in from_yaml else source)
    buffer = io.StringIO()
    Console(file=buffer, width=110, no_color=True, force_terminal=False).print(table)
    return buffer.getvalue().rstrip()


def provisioning_path(environ: Mapping[str, str]) -> Path | None:
    """``RS_PROVISIONING_PATH`` (names are case-insensitive, as for Settings); None if unset."""
    wanted = env_name("provisioning_path")
    value = next((v for k, v in environ.items() if k.upper() == wanted), "").strip()
    return Path(value) if value else None


def load(environ: Mapping[str, str]) -> tuple[provisioning.DesiredState, Settings, set[str]]:
    """The desired state, the Settings built over its ``instance:`` keys, and the names those
    keys set; ConfigError (one line) if either is invalid."""
    desired = provisioning.load_desired(environ, provisioning_path(environ))
    from_yaml = provisioning.as_environ(provisioning.instance_overrides(desired))
    settings = load_settings({**from_yaml, **environ})
    present = {k.upper() for k in environ}
    return desired, settings, {name for name in from_yaml if name not in present}


def run(args: argparse.Namespace) -> int:
    """Load provisioning and settings, configure logging, report, and serve until stopped."""
    environ = dict(os.environ)
    from appliance.server import hypercorn_config  # late: keeps `appliance check` free of it

    try:
        desired, settings, from_yaml = load(environ)
        # Every configuration error is one line and exit 2, before anything is logged.
        check_auth_choice(settings)
        hypercorn_config(settings)
    except ConfigError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure_from(settings)
    log.info("appliance %s (ReductStore API %s) starting", __version__, REDUCTSTORE_VERSION)
    log.info("%s", "\n" + config_table(settings, from_yaml))
    for name, reason in unsupported_env_names(environ):
        log.warning("%s is a ReductStore setting this appliance does not support (%s); "
                    "it is ignored", name, reason)
    for name, close in unknown_env_names(environ):
        hint = f" (did you mean {close}?)" if close else ""
        log.warning("unknown setting %s is ignored%s", name, hint)
    provisioning.report_loaded(desired, environ)
    from appliance.server import run as run_loop
    from appliance.server import serve

    try:
        code = run_loop(serve(settings, desired=desired, environ=environ))
    except ConfigError as exc:
        log.error("%s", exc)
        code = EXIT_CONFIG
    logs.stop()
    return code
