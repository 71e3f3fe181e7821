"""``appliance provision schema|validate``: the provisioning format for editors and CI."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``provision`` subcommand and its two actions."""
    parser = commands.add_parser("provision", help="provisioning files: JSON Schema, validation")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    schema = actions.add_parser("schema", help="print the JSON Schema of the provisioning YAML")
    schema.set_defaults(handler=run_schema)
    validate = actions.add_parser(
        "validate",
        help="validate a provisioning file or folder with the RS_* env groups of this shell "
        "(exit 1 and one line naming file, line and field if invalid)",
    )
    validate.add_argument("path", type=Path, help="a YAML file or a folder of *.yaml files")
    validate.add_argument(
        "--allow-missing-vars",
        action="store_true",
        help="leave ${VAR} unreplaced when VAR is not set (CI without the secrets)",
    )
    validate.set_defaults(handler=run_validate)


def run_schema(args: argparse.Namespace) -> int:
    """Print the schema."""
    from provisioning.schema import render

    sys.stdout.write(render())
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Load the provisioning as the server would; print ``ok: ...`` or the error line."""
    from appliance.errors import ConfigError
    from provisioning import load_desired

    try:
        desired = load_desired(
            dict(os.environ), args.path, keep_missing_vars=args.allow_missing_vars
        )
    except ConfigError as exc:
        print(f"appliance provision validate: {exc}", file=sys.stderr)
        return 1
    for warning in desired.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {desired.summary()}")
    return 0
