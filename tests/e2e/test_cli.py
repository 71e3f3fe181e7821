"""The command line as an operator meets it: bad settings, the config table, check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m appliance ARGS`` with a clean RS_* environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("RS_PORT", "http"), ("RS_ENGINE_COMPACTION_INTERVAL", "10 parsecs"), ("RS_INSTANCE_ROLE", "BOSS")],
)
def test_cli_bad_setting_stops_startup_with_one_line(name: str, value: str, tmp_path: Path) -> None:
    result = run_cli(env={name: value, "RS_DATA_PATH": str(tmp_path)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and repr(value) in lines[0]


def test_cli_check_reports_missing_folder(tmp_path: Path) -> None:
    result = run_cli("check", "--data", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_cli_check_on_empty_folder_is_clean(tmp_path: Path) -> None:
    result = run_cli("check", "--data", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
