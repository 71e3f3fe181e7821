"""The command line as an operator meets it: bad settings, the config table, check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import server_environ

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m appliance ARGS`` with a clean RS_* environment plus ``env`` (and
    ``RS_DISABLE_AUTH=true`` unless ``env`` chooses authentication)."""
    base = server_environ(env)
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


def _crashed_folder(data: Path) -> Path:
    """A folder as a SIGKILL leaves it: the last WAL frame is torn. Returns the WAL."""
    from appliance.engine import Storage
    from appliance.engine.models import EngineOptions

    storage = Storage.open(EngineOptions(data_path=data))
    bucket = storage.create_bucket("b")
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, b"x" * 10, "application/octet-stream", {})
    storage.abandon()  # close the files without flushing: the records live only in the WAL
    wal = next((data / "b" / "e" / ".wal").glob("*.wal"))
    with wal.open("r+b") as handle:
        handle.truncate(wal.stat().st_size - 3)
    return wal


def test_cli_check_crash_leftovers_fail_only_without_repair(tmp_path: Path) -> None:
    _crashed_folder(tmp_path)
    result = run_cli("check", "--data", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "wal_torn (crash leftover)" in result.stdout
    assert "left by an unclean shutdown" in result.stdout and "(damage)" not in result.stdout
    result = run_cli("check", "--data", str(tmp_path), "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recovered after an unclean shutdown: 1 torn WAL tail truncated" in result.stdout
    assert run_cli("check", "--data", str(tmp_path)).returncode == 0


def test_cli_check_damage_fails_even_with_repair(tmp_path: Path) -> None:
    wal = _crashed_folder(tmp_path)
    blob = bytearray(wal.read_bytes())
    blob[0] ^= 0xFF  # a bad WAL header: damage, not a torn append
    wal.write_bytes(bytes(blob))
    result = run_cli("check", "--data", str(tmp_path), "--repair")
    assert result.returncode == 1, result.stdout + result.stderr
    # The WAL and the data file it left without metadata: both damage, nothing a crash leaves.
    assert "2 problem(s) (damage) after repair" in result.stdout
    assert "crash leftover" not in result.stdout
