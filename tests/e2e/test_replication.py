"""Replication between real processes on 127.0.0.1, driven by reduct-py 1.21.

Two instances (three for the chain); the destination is SIGKILLed mid-stream and restarted, the
source is SIGKILLed mid-stream and restarted, the destination is down for a while; every record
must end up at the destination exactly once (the destination refuses a second copy of a
timestamp, so "count == written" with distinct timestamps means no loss and no duplicate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reduct import Batch, Client, ReplicationMode, ReplicationSettings

from tests.e2e.server import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"RS_REPLICATION_TIMEOUT": "0.5"}  # quick back-off: the tests wait less


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Processes started by the test; killed at teardown whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.kill()


def spawn(procs: list[ServerProcess], path: Path, env: dict[str, str] | None = None,
          port: int | None = None) -> ServerProcess:
    """Start an appliance and remember it for teardown."""
    proc = ServerProcess(path, env={**FAST, **(env or {})}, port=port).start()
    procs.append(proc)
    return proc


async def write_many(client: Client, bucket: str, entry: str, start: int, count: int,
                     size: int = 100, per_batch: int = 500) -> None:
    """``count`` records with timestamps ``start..start+count-1`` in batches."""
    b = await client.get_bucket(bucket)
    for first in range(start, start + count, per_batch):
        batch = Batch()
        for ts in range(first, min(first + per_batch, start + count)):
            batch.add(ts, ts.to_bytes(8, "big") * (size // 8), labels={"i": str(ts % 10)})
        errors = await b.write_batch(entry, batch)
        assert not errors


async def count(client: Client, bucket: str, entry: str) -> int:
    """Records of ``bucket/entry`` (0 if the bucket or entry does not exist)."""
    try:
        b = await client.get_bucket(bucket)
        return len([r async for r in b.query(entry)])
    except Exception:  # noqa: BLE001 - not there (yet)
        return 0


async def drained(client: Client, name: str, timeout: float = 40.0) -> Any:
    """Wait until task ``name`` has nothing pending; returns its detail."""
    deadline = time.monotonic() + timeout
    while True:
        detail = await client.get_replication_detail(name)
        if detail.info.pending_records == 0:
            return detail
        assert time.monotonic() < deadline, f"still pending: {detail}"
        await asyncio.sleep(0.1)


async def timestamps(client: Client, bucket: str, entry: str) -> list[int]:
    """Timestamps stored in ``bucket/entry``, in order."""
    b = await client.get_bucket(bucket)
    return [r.timestamp async for r in b.query(entry)]


async def test_filters_prefix_legacy_and_compression(procs: list[ServerProcess], tmp_path: Path) -> None:
    a = spawn(procs, tmp_path / "a")
    b = spawn(procs, tmp_path / "b")
    async with Client(a.url) as ca, Client(b.url) as cb:
        await ca.create_bucket("src")
        await ca.create_replication("globs", ReplicationSettings(
            src_bucket="src", dst_bucket="globs", dst_host=b.url,
            entries=["cam-*", "site/**", "!site/tmp"], compression="zstd"))
        await ca.create_replication("cond", ReplicationSettings(
            src_bucket="src", dst_bucket="cond", dst_host=b.url, entries=["cam-1"],
            when={"&i": {"$lt": 3}}, dst_prefix="edge-7", compression="gzip"))
        # ReductStore's older settings, as old scripts send them (reduct-py 1.21 cannot)
        legacy = {
            "legacy-in": {"entries": ["cam-1"], "include": {"i": "4"}},
            "legacy-ex": {"entries": ["cam-1"], "exclude": {"i": "4"}},
            "legacy-n": {"entries": ["cam-2"], "each_n": 10},
        }
        for name, extra in legacy.items():
            body = {"src_bucket": "src", "dst_bucket": name, "dst_host": b.url, **extra}
            r = httpx.post(f"{a.url}/api/v1/replications/{name}", json=body)
            assert r.status_code == 200, r.headers
        detail = await ca.get_replication_detail("legacy-in")
        assert detail.settings.when == {"$and": [{"$has": "i"}, {"$eq": ["&i", 4]}]}
        detail = await ca.get_replication_detail("legacy-n")
        assert detail.settings.when == {"$each_n": 10}

        for entry in ("cam-1", "cam-2", "site/a/b", "site/tmp", "other"):
            await write_many(ca, "src", entry, 1000, 40, size=64, per_batch=40)
        big = bytes(range(256)) * (12 * 1024 + 3)  # 3 MiB: streamed from disk, not read whole
        r = httpx.post(f"{a.url}/api/v1/b/src/cam-big?ts=7", content=big)
        assert r.status_code == 200
        for name in ("globs", "cond", *legacy):
            detail = await drained(ca, name)
            assert detail.diagnostics.hourly.errored == 0, detail

        assert await count(cb, "globs", "cam-1") == 40
        assert await count(cb, "globs", "cam-2") == 40
        assert await count(cb, "globs", "site/a/b") == 40
        assert await count(cb, "globs", "site/tmp") == 0
        assert await count(cb, "globs", "other") == 0
        assert httpx.get(f"{b.url}/api/v1/b/globs/cam-big?ts=7").content == big
        # when: i < 3 keeps 3 of every 10; the prefix renames the entry at the destination
        assert await timestamps(cb, "cond", "edge-7/cam-1") == [
            ts for ts in range(1000, 1040) if ts % 10 < 3]
        assert await timestamps(cb, "legacy-in", "cam-1") == [1004, 1014, 1024, 1034]
        assert await count(cb, "legacy-ex", "cam-1") == 36
        # $each_n: the first record replicated is the N-th (ReductStore)
        assert await timestamps(cb, "legacy-n", "cam-2") == [1009, 1019, 1029, 1039]
        # the payload arrives intact through zstd
        got = httpx.get(f"{b.url}/api/v1/b/globs/cam-2?ts=1013")
        assert got.content == (1013).to_bytes(8, "big") * 8
        assert got.headers["x-reduct-label-i"] == "3"


async def test_destination_sigkilled_mid_stream_every_record_once(
    procs: list[ServerProcess], tmp_path: Path
) -> None:
    total = 20_000
    a = spawn(procs, tmp_path / "a")
    b = spawn(procs, tmp_path / "b")
    async with Client(a.url) as ca:
        await ca.create_bucket("src")
        await ca.create_replication("r", ReplicationSettings(
            src_bucket="src", dst_bucket="dst", dst_host=b.url))
        await write_many(ca, "src", "s", 1, total // 2)
        # Kill the destination while the sender is busy with the backlog.
        deadline = time.monotonic() + 20
        async with Client(b.url) as cb:
            while await count(cb, "dst", "s") < 1000 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        b.kill()
        await write_many(ca, "src", "s", 1 + total // 2, total // 2)  # writers keep going
        detail = await ca.get_replication_detail("r")
        assert detail.info.pending_records > 0
        b = spawn(procs, tmp_path / "b", port=b.port)
        detail = await drained(ca, "r", timeout=60)
        assert detail.info.is_active
        # a resent record the destination already had (409) is delivered, not an error
        assert "409" not in {str(code) for code in detail.diagnostics.hourly.errors}
    async with Client(b.url) as cb:
        got = await timestamps(cb, "dst", "s")
    assert got == list(range(1, total + 1))


async def test_source_sigkilled_mid_stream_resumes_from_its_log(
    procs: list[ServerProcess], tmp_path: Path
) -> None:
    total = 10_000
    small = {"RS_IO_BATCH_MAX_RECORDS": "20"}  # a slower sender: the writer surely outruns it
    a = spawn(procs, tmp_path / "a", env=small)
    b = spawn(procs, tmp_path / "b")
    async with Client(a.url) as ca:
        await ca.create_bucket("src")
        await ca.create_replication("r", ReplicationSettings(
            src_bucket="src", dst_bucket="dst", dst_host=b.url))
        await write_many(ca, "src", "s", 1, total)
        pending = (await ca.get_replication_detail("r")).info.pending_records
    a.kill()
    assert pending > 0, "the sender caught up before the kill: nothing to resume"
    async with Client(b.url) as cb:
        before = await count(cb, "dst", "s")
    assert before < total
    a = spawn(procs, tmp_path / "a", env=small, port=a.port)
    async with Client(a.url) as ca:
        await drained(ca, "r", timeout=60)
    async with Client(b.url) as cb:
        assert await timestamps(cb, "dst", "s") == list(range(1, total + 1))


async def test_destination_down_then_up_drains_the_backlog(
    procs: list[ServerProcess], tmp_path: Path
) -> None:
    a = spawn(procs, tmp_path / "a")
    b = spawn(procs, tmp_path / "b")
    b_port = b.port
    b.stop()
    async with Client(a.url) as ca:
        await ca.create_bucket("src")
        await ca.create_replication("r", ReplicationSettings(
            src_bucket="src", dst_bucket="dst", dst_host=b.url))
        await write_many(ca, "src", "s", 1, 3000)
        await asyncio.sleep(1.5)
        detail = await ca.get_replication_detail("r")
        assert detail.info.pending_records == 3000  # nothing dropped while down
        assert not detail.info.is_active
        assert "-3" in {str(k) for k in detail.diagnostics.hourly.errors}  # connection error
        b = spawn(procs, tmp_path / "b", port=b_port)
        detail = await drained(ca, "r")
        assert detail.info.is_active
    async with Client(b.url) as cb:
        assert await count(cb, "dst", "s") == 3000


async def test_chain_a_to_b_to_c(procs: list[ServerProcess], tmp_path: Path) -> None:
    a = spawn(procs, tmp_path / "a")
    b = spawn(procs, tmp_path / "b")
    c = spawn(procs, tmp_path / "c", env={"RS_API_TOKEN": "c-secret"})
    async with Client(a.url) as ca, Client(b.url) as cb, Client(c.url, api_token="c-secret") as cc:
        await ca.create_bucket("src")
        await cb.create_bucket("mid")
        await ca.create_replication("ab", ReplicationSettings(
            src_bucket="src", dst_bucket="mid", dst_host=b.url))
        await cb.create_replication("bc", ReplicationSettings(
            src_bucket="mid", dst_bucket="end", dst_host=c.url, dst_token="c-secret"))
        await write_many(ca, "src", "s", 1, 500)
        await drained(ca, "ab")
        await drained(cb, "bc")
        assert await timestamps(cc, "end", "s") == list(range(1, 501))
        # a label update travels down the chain; a label removal does not (as ReductStore)
        r = httpx.patch(f"{a.url}/api/v1/b/src/s?ts=7",
                        headers={"x-reduct-label-state": "checked", "x-reduct-label-i": ""})
        assert r.status_code == 200

        async def updated() -> bool:
            got = httpx.get(f"{c.url}/api/v1/b/end/s?ts=7",
                            headers={"Authorization": "Bearer c-secret"})
            return got.headers.get("x-reduct-label-state") == "checked"

        await wait_for(updated)
        got = httpx.get(f"{c.url}/api/v1/b/end/s?ts=7", headers={"Authorization": "Bearer c-secret"})
        assert got.headers["x-reduct-label-i"] == "7"  # removed at the source, kept here
        # the token never comes back from the API
        assert (await cb.get_replication_detail("bc")).settings.dst_token is None
    assert "c-secret" not in b.logs()


async def test_wrong_token_shows_401_and_keeps_the_records(
    procs: list[ServerProcess], tmp_path: Path
) -> None:
    a = spawn(procs, tmp_path / "a")
    b = spawn(procs, tmp_path / "b", env={"RS_API_TOKEN": "right"})
    async with Client(a.url) as ca:
        await ca.create_bucket("src")
        await ca.create_replication("r", ReplicationSettings(
            src_bucket="src", dst_bucket="dst", dst_host=b.url, dst_token="wrong-token"))
        await write_many(ca, "src", "s", 1, 10)
        await asyncio.sleep(1.5)
        detail = await ca.get_replication_detail("r")
        assert 401 in detail.diagnostics.hourly.errors or "401" in detail.diagnostics.hourly.errors
        assert detail.info.pending_records == 10 and not detail.info.is_active
        assert "unavailable (401: " in a.logs()  # the operator sees it in the log too
        # fixing the token (PUT) delivers the backlog
        await ca.update_replication("r", ReplicationSettings(
            src_bucket="src", dst_bucket="dst", dst_host=b.url, dst_token="right"))
        await drained(ca, "r")
        await ca.set_replication_mode("r", ReplicationMode.PAUSED)
        assert (await ca.get_replication_detail("r")).info.mode == ReplicationMode.PAUSED
    assert "wrong-token" not in a.logs()


async def wait_for(check: Any, timeout: float = 15.0) -> None:
    """Poll the async ``check`` until it returns true."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_provisioning_from_env_and_yaml_with_live_edits(
    procs: list[ServerProcess], tmp_path: Path
) -> None:
    b = spawn(procs, tmp_path / "b", env={"RS_API_TOKEN": "central-secret"})
    yaml_path = tmp_path / "prov.yaml"

    def write_yaml(entries: str, with_task: bool = True) -> None:
        task = f"""
replications:
  to-central:
    src_bucket: src
    dst_bucket: central
    dst_host: {b.url}
    dst_token: ${{CENTRAL_TOKEN}}
    entries: {entries}
    compression: gzip
""" if with_task else ""
        yaml_path.write_text("buckets:\n  src: {}\n" + task)

    write_yaml("[cam-1]")
    env = {
        "RS_PROVISIONING_PATH": str(yaml_path),
        "CENTRAL_TOKEN": "central-secret",
        "RS_REPLICATION_E_NAME": "from-env",
        "RS_REPLICATION_E_SRC_BUCKET": "src",
        "RS_REPLICATION_E_DST_BUCKET": "envdst",
        "RS_REPLICATION_E_DST_HOST": b.url,
        "RS_REPLICATION_E_DST_TOKEN": "central-secret",
        "RS_REPLICATION_E_ENTRIES": "cam-2",
        "RS_REPLICATION_E_EACH_N": "5",
        "RS_REPLICATION_E_MODE": "enabled",
    }
    a = spawn(procs, tmp_path / "a", env=env)
    async with Client(a.url) as ca, Client(b.url, api_token="central-secret") as cb:
        infos = {r.name: r for r in await ca.get_replications()}
        assert set(infos) == {"to-central", "from-env"}
        assert all(r.is_provisioned for r in infos.values())
        assert (await ca.get_replication_detail("from-env")).settings.when == {"$each_n": 5}
        settings = ReplicationSettings(src_bucket="src", dst_bucket="x", dst_host=b.url)
        r = httpx.put(f"{a.url}/api/v1/replications/to-central", json=settings.model_dump())
        assert r.status_code == 409
        assert r.headers["x-reduct-error"] == "Can't update provisioned replication 'to-central'"
        r = httpx.delete(f"{a.url}/api/v1/replications/from-env")
        assert r.status_code == 409
        assert r.headers["x-reduct-error"] == "Can't remove provisioned replication 'from-env'"

        await write_many(ca, "src", "cam-1", 1, 20)
        await write_many(ca, "src", "cam-2", 1, 20)
        await drained(ca, "to-central")
        await drained(ca, "from-env")
        assert await count(cb, "central", "cam-1") == 20
        assert await timestamps(cb, "envdst", "cam-2") == [5, 10, 15, 20]

        # the mode of a provisioned task may change, and it is persisted
        await ca.set_replication_mode("to-central", ReplicationMode.PAUSED)

        # live edit: the task now replicates cam-2 (the paused mode is kept: YAML sets none)
        write_yaml("[cam-2]")

        async def edited() -> bool:
            detail = await ca.get_replication_detail("to-central")
            return bool(detail.settings.entries == ["cam-2"])

        await wait_for(edited)
        detail = await ca.get_replication_detail("to-central")
        assert detail.info.mode == ReplicationMode.PAUSED
        await ca.set_replication_mode("to-central", ReplicationMode.ENABLED)
        await write_many(ca, "src", "cam-2", 100, 10)
        await drained(ca, "to-central")
        assert await count(cb, "central", "cam-2") == 10

        # removed from the YAML: kept, no longer provisioned (no data or backlog lost)
        write_yaml("[]", with_task=False)

        async def unprovisioned() -> bool:
            infos = {r.name: r for r in await ca.get_replications()}
            return not infos["to-central"].is_provisioned

        await wait_for(unprovisioned)
        r = httpx.delete(f"{a.url}/api/v1/replications/to-central")
        assert r.status_code == 200
    assert "central-secret" not in a.logs()
