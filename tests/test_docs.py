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


ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT_FILES = sorted(
    p for p in [*ROOT.joinpath("compose").glob("*"), *ROOT.joinpath("systemd").glob("*")] if p.is_file()
)


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_deployment_files_use_only_known_settings_and_are_documented(path: Path) -> None:
    import re

    from appliance.settings import KNOWN_ENV_NAMES

    names = set(re.findall(r"\bRS_[A-Z0-9_]+", path.read_text()))
    assert names <= KNOWN_ENV_NAMES, names - KNOWN_ENV_NAMES
    assert f"`{path.parent.name}/{path.name}`" in README


def test_systemd_env_example_is_a_valid_configuration() -> None:
    from appliance.settings import load_settings

    env = {}
    for line in (ROOT / "systemd" / "appliance.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    settings = load_settings(env)
    assert settings.engine_sync_writes is True


EXAMPLES = sorted(ROOT.joinpath("provisioning", "examples").glob("*.yaml"))


def test_provisioning_examples_exist() -> None:
    assert EXAMPLES, "provisioning/examples/ holds no *.yaml"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_provisioning_example_validates_on_its_own(path: Path) -> None:
    from provisioning import InstanceSpec, load_desired

    desired = load_desired({}, path, keep_missing_vars=True)  # secrets are ${VAR}: not set here
    assert desired.source == str(path)
    assert desired.buckets or desired.tokens or desired.instance != InstanceSpec()


def test_docs_stand_on_their_own() -> None:
    """No pointers to design notes or issue numbers a user of the repository does not have."""
    import re

    for path in [ROOT / "README.md", *ROOT.joinpath("compose").glob("*"), *ROOT.joinpath("systemd").glob("*")]:
        text = path.read_text()
        assert "ARCHITECTURE" not in text, path
        assert not re.search(r"\bissues?\b|#\d+\b", text, re.I), path


def test_license_file_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
