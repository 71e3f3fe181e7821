"""Backups of an S3-backed instance with real processes (moto's server on 127.0.0.1): the
cache is far smaller than the data, so most blocks are placeholders when the backup runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.server import ServerProcess
from tests.e2e.test_cli import run_cli
from tests.remote.conftest import s3_env
from tests.remote.faultproxy import FaultProxy
from tests.remote.test_s3_process import check, remote_info, settled, start, write

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_backup_of_an_evicted_cache_restores_every_byte(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    cache, target, restored = tmp_path / "cache", tmp_path / "backups", tmp_path / "restored"
    env = s3_env(moto_url, cache, prefix, RS_REMOTE_CACHE_SIZE="300KB")
    server = start(servers, cache, env)
    acked = await write(server.url, range(1, 61))  # 1.8 MB of payload, 6x the cache
    await settled(server.url)
    assert remote_info(server.url)["evicted_files"] > 5

    result = run_cli("backup", "create", "--url", server.url, "--target", str(target), timeout=120)
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.strip().splitlines()[-1]
    # The fetched blocks were only held for the backup: the cache is bounded again.
    info = await settled(server.url)
    assert info["evicted_files"] > 5 and info["cache_bytes"] <= info["cache_size"]
    assert server.stop() == 0

    verified = run_cli("backup", "verify", backup_id, "--target", str(target))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Offline, the cache folder cannot be scrubbed: its placeholders are not the data.
    refused = run_cli("check", "--data", str(cache))
    assert refused.returncode == 2
    assert "is the cache of an S3-backed instance" in refused.stderr
    assert refused.stderr.count("\n") == 1

    result = run_cli("restore", backup_id, "--target", str(target), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    assert run_cli("check", "--data", str(restored)).returncode == 0
    local = start(servers, restored, {})  # a plain local folder, no RS_REMOTE_*
    await check(local.url, acked)  # every record's bytes and labels as written
    local.stop()


async def test_s3_down_fails_the_backup_with_a_clear_error_and_leaves_no_backup(
    tmp_path: Path, proxy: FaultProxy, prefix: str, servers: list[ServerProcess]
) -> None:
    cache, target = tmp_path / "cache", tmp_path / "backups"
    env = s3_env(proxy.url, cache, prefix, RS_REMOTE_CACHE_SIZE="300KB")
    server = start(servers, cache, env)
    acked = await write(server.url, range(1, 31))  # 900 KB of payload, 3x the cache
    await settled(server.url)
    assert remote_info(server.url)["evicted_files"] > 0
    proxy.fault("503", methods={"GET"})  # every fetch of an evicted block fails
    result = run_cli("backup", "create", "--url", server.url, "--target", str(target), timeout=120)
    assert result.returncode == 1
    assert "503: backup failed: b/e/" in result.stderr
    assert "could not be fetched from remote storage" in result.stderr
    assert "botocore" not in result.stderr.lower()
    listed = run_cli("backup", "list", "--target", str(target))
    assert listed.returncode == 0 and "complete" not in listed.stdout, listed.stdout
    assert not list((cache / ".backup-staging").iterdir())
    proxy.fault(None)
    result = run_cli("backup", "create", "--url", server.url, "--target", str(target), timeout=120)
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.strip().splitlines()[-1]
    assert run_cli("backup", "verify", backup_id, "--target", str(target)).returncode == 0
    await check(server.url, acked)
    server.stop()
