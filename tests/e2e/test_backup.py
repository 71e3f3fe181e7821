"""Backups with real processes: a server driven by reduct-py, the `appliance` CLI beside it.

Backup under concurrent write load (no write fails, the pause a writer sees is measured),
incremental size, verify finding a flipped byte, restore read-only then set-read-write, a
SIGKILL of the instance and of the backup CLI mid-backup, and scheduled backups with retention.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from reduct import BucketSettings, Client, ReductError

from appliance.backup import folder as ft
from tests.e2e.server import ServerProcess
from tests.e2e.test_cli import run_cli

pytestmark = pytest.mark.integration
KIB = 1024


async def _writer(url: str, stop: asyncio.Event, latencies: list[float], errors: list[str]) -> None:
    """Write 1 KiB records back to back until ``stop``; record every latency."""
    async with Client(url) as client:
        bucket = await client.get_bucket("load")
        ts = 10_000_000
        while not stop.is_set() and len(latencies) < 20_000:
            started = time.perf_counter()
            try:
                await bucket.write("stream", os.urandom(KIB), timestamp=ts)
            except ReductError as exc:  # pragma: no cover - the assertion below reports it
                errors.append(str(exc))
            latencies.append(time.perf_counter() - started)
            ts += 1


async def _cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", *args, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_backup_under_load_incremental_verify_restore_read_only(tmp_path: Path) -> None:
    target = tmp_path / "backups"
    server = ServerProcess(tmp_path / "data").start()
    try:
        async with Client(server.url) as client:
            load = await client.create_bucket("load", BucketSettings(max_block_size=256 * KIB))
            for ts in range(1, 301):
                await load.write("base", os.urandom(KIB), timestamp=ts, labels={"n": ts})
        stop = asyncio.Event()
        latencies: list[float] = []
        errors: list[str] = []
        writer = asyncio.create_task(_writer(server.url, stop, latencies, errors))
        await asyncio.sleep(0.5)
        before = len(latencies)
        code, out, err = await _cli("backup", "create", "--url", server.url, "--target", str(target))
        await asyncio.sleep(0.3)
        during = len(latencies) - before
        stop.set()
        await writer
        assert code == 0, out + err
        first = out.strip().splitlines()[-1]
        assert not errors and during > 0
        worst = max(latencies)
        print(f"\nbackup under load: {len(latencies)} writes, longest write {worst * 1000:.1f} ms")
        assert worst < 1.0, f"a write waited {worst:.3f} s"

        # Incremental: after a baseline (the writer's last records), ~2 MiB more; the next
        # backup costs about that.
        baseline = httpx.post(f"{server.url}/api/v1/backups", json={"target": str(target)}, timeout=60)
        assert baseline.status_code == 200
        async with Client(server.url) as client:
            load = await client.get_bucket("load")
            for i in range(64):
                await load.write("delta", os.urandom(32 * KIB), timestamp=1_000_000_000 + i)
        made = httpx.post(f"{server.url}/api/v1/backups", json={"target": str(target)}, timeout=60).json()
        delta = 64 * 32 * KIB
        print(f"second backup after {delta} new bytes: {made['new_bytes']} new bytes")
        assert delta <= made["new_bytes"] < delta + 2 * 256 * KIB + 64 * KIB

        # `appliance cp` reads a complete backup as a source (the contract with issue 12 §3).
        result = run_cli("cp", f"{target / first}/load", f"{server.url}/from-backup")
        assert result.returncode == 0, result.stdout + result.stderr
        async with Client(server.url) as client:
            copied = await client.get_bucket("from-backup")
            counts = {e.name: e.record_count for e in await copied.get_entry_list()}
            assert counts["base"] == 300 and counts.get("stream", 0) > 0

        # The CLI refuses to restore into the folder the running server holds.
        result = run_cli("restore", first, "--target", str(target), "--data", str(server.data_path),
                         "--bucket", "load")
        assert result.returncode == 1 and "in use by a running instance" in result.stderr
    finally:
        server.stop()

    listed = run_cli("backup", "list", "--target", str(target))
    assert listed.returncode == 0 and listed.stdout.count("complete") == 3, listed.stdout
    assert run_cli("backup", "verify", first, "--target", str(target)).returncode == 0

    restored = tmp_path / "restored"
    result = run_cli("restore", first, "--target", str(target), "--data", str(restored), "--dry-run")
    assert result.returncode == 0 and "dry run" in result.stdout and not restored.exists()
    result = run_cli("restore", first, "--target", str(target), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    second = ServerProcess(restored).start()
    try:
        async with Client(second.url) as client:
            load = await client.get_bucket("load")
            async with load.read("base", timestamp=300) as record:
                assert record.labels["n"] == "300" and len(await record.read_all()) == KIB
            with pytest.raises(ReductError) as info:
                await load.write("base", b"x", timestamp=5000)
            assert info.value.status_code == 403
            assert f"restored from backup {first}" in info.value.message
        info = httpx.get(f"{second.url}/api/v1/info").json()["backup"]
        assert info["read_only"] and info["restored_from"] == first
        result = run_cli("set-read-write", "--url", second.url)
        assert result.returncode == 0, result.stderr
        async with Client(second.url) as client:
            await (await client.get_bucket("load")).write("base", b"x", timestamp=5000)
        assert httpx.get(f"{second.url}/api/v1/info").json()["backup"]["read_only"] is False
    finally:
        second.stop()

    # A flipped byte in a data file is found and named.
    blk = sorted((target / first / "data" / "load" / "base").glob("*.blk"))[0]
    raw = bytearray(blk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    blk.write_bytes(bytes(raw))
    result = run_cli("backup", "verify", first, "--target", str(target))
    assert result.returncode == 1
    assert f"load/base/{blk.name}: checksum mismatch" in result.stdout
    assert "payload checksum mismatch" in result.stdout


def _start_backup(url: str, target: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "backup", "create", "--url", url, "--target", str(target)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
async def test_sigkill_of_instance_and_of_backup_cli_mid_backup(tmp_path: Path) -> None:
    target = tmp_path / "backups"
    server = ServerProcess(tmp_path / "data", env={"RS_BACKUP_KEEP_LAST": "5"}).start()
    async with Client(server.url) as client:
        bucket = await client.create_bucket("big", BucketSettings(max_block_size=8 * 1024 * KIB))
        chunk = os.urandom(1024 * KIB)
        for ts in range(1, 97):  # 96 MiB: the copy takes long enough to be interrupted
            await bucket.write("e", chunk, timestamp=ts)
    proc = _start_backup(server.url, target)
    try:
        assert _wait_for(lambda: any(p.name != ".lock" for p in target.glob("*/data/big/e/*.blk")))
        server.kill()  # mid-copy: the backup has files but no manifest
    finally:
        proc.wait(30)
    assert proc.returncode == 1
    infos = ft.list_backups(target)
    assert len(infos) == 1 and not infos[0].complete, infos
    listed = run_cli("backup", "list", "--target", str(target))
    assert "incomplete" in listed.stdout

    server.start()  # recovery: every acknowledged record is there, staging leftovers cleared
    assert not (server.data_path / ".backup-staging").exists()
    async with Client(server.url) as client:
        bucket = await client.get_bucket("big")
        assert (await bucket.get_entry_list())[0].record_count == 96
    # SIGKILL of the CLI: the instance finishes the backup anyway.
    proc = _start_backup(server.url, target)
    assert _wait_for(lambda: len(ft.list_backups(target)) == 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _wait_for(lambda: sum(i.complete for i in ft.list_backups(target)) == 1, 60)
    # The next backup's retention removes the incomplete leftover.
    made = httpx.post(f"{server.url}/api/v1/backups", json={"target": str(target)}, timeout=120).json()
    assert made["new_bytes"] < 1024 * KIB  # nothing changed: everything shared
    assert [i.complete for i in ft.list_backups(target)] == [True, True]
    server.stop()


async def test_scheduled_backups_apply_retention(tmp_path: Path) -> None:
    target = tmp_path / "backups"
    env = {
        "RS_BACKUP_TARGET": str(target),
        "RS_BACKUP_INTERVAL": "300ms",
        "RS_BACKUP_KEEP_LAST": "2",
    }
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        async with Client(server.url) as client:
            bucket = await client.create_bucket("b")
            for ts in range(1, 50):
                await bucket.write("e", b"x" * 100, timestamp=ts)
                await asyncio.sleep(0.02)
        assert _wait_for(lambda: len(ft.list_backups(target)) >= 2, 20)
        await asyncio.sleep(1.0)
        infos = ft.list_backups(target)
        complete = [i for i in infos if i.complete]
        assert 1 <= len(complete) <= 3 and len(infos) <= 3  # 2 kept (+1 being written)
        info = httpx.get(f"{server.url}/api/v1/info").json()["backup"]
        assert info["last_backup"] is not None and info["last_error"] is None
    finally:
        server.stop()
    infos = ft.list_backups(target)
    assert len(infos) == 2 and all(i.complete for i in infos)
    assert ft.verify(target, infos[-1].id).ok


def _now_us() -> int:
    return time.time_ns() // 1000


async def test_point_in_time_restore_undoes_a_bucket_removed_by_mistake(tmp_path: Path) -> None:
    target = tmp_path / "backups"
    env = {"RS_BACKUP_TARGET": str(target), "RS_BACKUP_ARCHIVE_INTERVAL": "200ms"}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        async with Client(server.url) as client:
            bucket = await client.create_bucket("precious")
            for ts in range(1, 21):
                await bucket.write("e", b"v%d" % ts, timestamp=ts, labels={"n": ts})
            code, out, err = await _cli("backup", "create", "--url", server.url)
            assert code == 0, out + err
            for ts in range(21, 41):
                await bucket.write("e", b"v%d" % ts, timestamp=ts, labels={"n": ts})
            await bucket.update("e", 5, {"n": "changed"})
            before_mistake = _now_us()
            await asyncio.sleep(0.01)
            await bucket.remove()
            await client.create_bucket("other")
        await asyncio.sleep(1.0)  # > the archive interval: everything shipped
    finally:
        server.kill()  # the machine is lost; the target survives
    restored = tmp_path / "restored"
    when = mf_iso(before_mistake)
    started = time.perf_counter()
    result = run_cli("restore", "--to-time", when, "--target", str(target), "--data", str(restored))
    rto = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nPITR restore (small data set) took {rto:.2f} s: {result.stdout.splitlines()[-2]}")
    second = ServerProcess(restored).start()
    try:
        async with Client(second.url) as client:
            assert [b.name for b in await client.list()] == ["precious"]
            bucket = await client.get_bucket("precious")
            async with bucket.read("e", timestamp=40) as record:
                assert await record.read_all() == b"v40"
            async with bucket.read("e", timestamp=5) as record:
                assert record.labels["n"] == "changed"
            assert (await bucket.get_entry_list())[0].record_count == 40
    finally:
        second.stop()


def mf_iso(us: int) -> str:
    """ISO 8601 of an instant in µs (what an operator would type)."""
    from appliance.backup.manifest import iso

    return iso(us)
