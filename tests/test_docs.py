"""The README stays true: every setting and every CLI command is documented there."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.main import build_parser
from appliance.settings import Settings, env_name

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_readme(field: str) -> None:
    assert f"`{env_name(field)}`" in README


def test_every_cli_command_is_documented_in_readme() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    names = sorted(commands.choices)  # type: ignore[union-attr]
    assert names, "the CLI has no subcommands"
    for name in names:
        assert f"`appliance {name}" in README, name
