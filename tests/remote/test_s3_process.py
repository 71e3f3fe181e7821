"""Real processes on S3 (moto's server on 127.0.0.1), driven by reduct-py 1.21."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest
from reduct import BucketSettings, Client

from tests.e2e.server import ServerProcess
from tests.remote.conftest import s3_env
from tests.remote.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL_BLOCKS = BucketSettings(max_block_size=100_000, max_block_records=4)


def payload(ts: int, size: int = 30_000) -> bytes:
    """Deterministic bytes per timestamp."""
    seed = hashlib.sha256(str(ts).encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def start(servers: list[ServerProcess], cache: Path, env: dict[str, str], wait: bool = True) -> ServerProcess:
    """Start one appliance on ``cache`` and remember it for cleanup."""
    server = ServerProcess(cache, env=env)
    servers.append(server)
    return server.start(wait_ready=wait)


async def write(url: str, timestamps: range, size: int = 30_000) -> list[int]:
    """Write one record per timestamp into b/e; return the acknowledged ones."""
    acked = []
    async with Client(url) as client:
        bucket = await client.create_bucket("b", SMALL_BLOCKS, exist_ok=True)
        for ts in timestamps:
            await bucket.write("e", payload(ts, size), timestamp=ts, labels={"n": str(ts)})
            acked.append(ts)
    return acked


async def check(url: str, timestamps: list[int], size: int = 30_000) -> None:
    """Every record comes back with identical bytes and labels."""
    async with Client(url) as client:
        bucket = await client.get_bucket("b")
        for ts in timestamps:
            async with bucket.read("e", timestamp=ts) as record:
                assert await record.read_all() == payload(ts, size), ts
                assert record.labels["n"] == str(ts)


async def settled(url: str, seconds: float = 30.0) -> dict:
    """Wait until everything is uploaded without error (the background sync); the info."""
    for _ in range(int(seconds * 10)):
        info = remote_info(url)
        if info["unsynced_bytes"] == 0 and info["last_error"] is None and info["last_sync"]:
            if info["cache_bytes"] <= info["cache_size"]:
                return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"not settled: {info}")


def remote_info(url: str) -> dict:
    """The ``remote`` section of /api/v1/info."""
    return httpx.get(f"{url}/api/v1/info", timeout=10).json()["remote"]


async def test_round_trip_then_a_new_node_with_an_empty_cache_serves_everything(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    env = s3_env(moto_url, tmp_path / "cache-a", prefix)
    first = start(servers, tmp_path / "cache-a", env)
    acked = await write(first.url, range(1, 41))
    await check(first.url, acked)
    assert first.stop() == 0  # SIGTERM: compaction, then a last upload
    second_env = s3_env(moto_url, tmp_path / "cache-b", prefix)
    second = start(servers, tmp_path / "cache-b", second_env)
    info = remote_info(second.url)
    # Restored from the bucket's manifest (HEAD + GET), not from a listing of the data.
    assert info["requests"].get("list", 0) <= 1  # at most the first pass's leftover sweep
    assert info["requests"]["download"] == 1
    await check(second.url, acked)
    exposed = httpx.get(f"{second.url}/metrics", timeout=10).text
    assert 'reduct_s3_requests_total{operation="GetObject"}' in exposed
    assert "reduct_s3_unsynced_bytes" in exposed
    blocks = len(list((tmp_path / "cache-b" / "b" / "e").glob("*.blk")))
    # Every data object of b/e started as a placeholder and was fetched on first use.
    assert blocks > 5 and info["evicted_files"] - remote_info(second.url)["evicted_files"] == blocks
    second.stop()


async def test_a_cache_far_smaller_than_the_data_returns_every_byte(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    env = s3_env(moto_url, tmp_path / "cache", prefix, RS_REMOTE_CACHE_SIZE="300KB")
    server = start(servers, tmp_path / "cache", env)
    acked = await write(server.url, range(1, 61))  # 1.8 MB of payload, 6x the cache
    await settled(server.url)
    assert remote_info(server.url)["evicted_files"] > 0
    for _ in range(2):
        await check(server.url, acked)
    info = remote_info(server.url)
    assert info["evicted_files"] > 0  # evicted again while reading: the cache stays bounded
    assert info["requests"].get("download", 0) >= 2 * 15
    assert info["cache_bytes"] <= info["cache_size"]
    blocks = sum(p.stat().st_blocks * 512 for p in (tmp_path / "cache").rglob("*.blk"))
    assert blocks <= 300_000 + 2 * SMALL_BLOCKS.max_block_size  # what is in use may go over
    server.stop()


async def test_sigkill_with_the_cache_intact_loses_no_acknowledged_record(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    env = s3_env(moto_url, tmp_path / "cache", prefix, RS_REMOTE_SYNC_INTERVAL="1h")
    server = start(servers, tmp_path / "cache", env)
    acked = await write(server.url, range(1, 31))
    server.kill()  # nothing was uploaded yet (sync interval 1 h)
    again = start(servers, tmp_path / "cache", env)  # WAL replay from the cache
    await check(again.url, acked)
    assert again.stop() == 0  # uploads at shutdown
    fresh = start(servers, tmp_path / "other", s3_env(moto_url, tmp_path / "other", prefix))
    await check(fresh.url, acked)
    fresh.stop()


async def test_sync_interval_zero_every_acknowledged_record_survives_losing_the_disk(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    env = s3_env(moto_url, tmp_path / "cache", prefix, RS_REMOTE_SYNC_INTERVAL="0")
    server = start(servers, tmp_path / "cache", env)
    acked = await write(server.url, range(1, 21), size=5_000)
    server.kill()  # and the cache is never used again: a lost disk
    fresh = start(servers, tmp_path / "new", s3_env(moto_url, tmp_path / "new", prefix))
    await check(fresh.url, acked, size=5_000)
    fresh.stop()


# What the one log line says for each fault: unreachable, wrong credentials, S3 hanging.
STARTUP_FAULTS = {"refuse": "check bucket failed", "403": "access denied", "delay": "Read timeout"}


@pytest.mark.parametrize("fault", sorted(STARTUP_FAULTS))
async def test_ready_is_503_while_s3_is_unreachable_at_startup(
    tmp_path: Path, proxy: FaultProxy, prefix: str, servers: list[ServerProcess], fault: str
) -> None:
    proxy.fault(fault)
    proxy.delay_seconds = 2.0  # past the read timeout below
    env = s3_env(proxy.url, tmp_path / "cache", prefix, RS_REMOTE_READ_TIMEOUT="500ms")
    server = start(servers, tmp_path / "cache", env, wait=False)
    deadline = 50
    for _ in range(deadline):
        try:
            response = httpx.get(f"{server.url}/api/v1/ready", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    assert response.status_code == 503
    for _ in range(300):  # the first restore gives up after botocore's own retries
        if "remote storage unreachable at startup" in server.logs():
            break
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/api/v1/ready", timeout=1).status_code == 503
    proxy.fault(None)
    server.wait_ready(timeout=40)
    logs = server.logs()
    assert logs.count("remote storage unreachable at startup") == 1
    line = next(x for x in logs.splitlines() if "remote storage unreachable at startup" in x)
    assert STARTUP_FAULTS[fault] in line
    assert "Traceback" not in logs
    server.stop()


@pytest.mark.parametrize("fault", ["500", "drop"])  # 503 SlowDown: the fetch test
async def test_upload_faults_lose_nothing_and_show_in_info(
    tmp_path: Path, proxy: FaultProxy, prefix: str, servers: list[ServerProcess], fault: str
) -> None:
    env = s3_env(proxy.url, tmp_path / "cache", prefix)
    server = start(servers, tmp_path / "cache", env)
    proxy.fault(fault, methods={"PUT"})  # every upload fails until cleared
    acked = await write(server.url, range(1, 21))
    for _ in range(300):
        info = remote_info(server.url)
        if info["last_error"]:
            break
        await asyncio.sleep(0.1)
    assert info["last_error"] and "botocore" not in info["last_error"].lower()
    assert info["unsynced_bytes"] > 0
    await check(server.url, acked)  # served from the cache meanwhile
    proxy.fault(None)
    await settled(server.url)
    server.stop()
    fresh = start(servers, tmp_path / "new", s3_env(proxy.url, tmp_path / "new", prefix))
    await check(fresh.url, acked)
    fresh.stop()


@pytest.mark.parametrize("fault", ["503", "drop"])  # 500: the upload test
async def test_fetch_faults_never_give_a_wrong_byte(
    tmp_path: Path, proxy: FaultProxy, moto_url: str, prefix: str,
    servers: list[ServerProcess], fault: str,
) -> None:
    writer = start(servers, tmp_path / "w", s3_env(moto_url, tmp_path / "w", prefix))
    acked = await write(writer.url, range(1, 21))
    writer.stop()
    env = s3_env(proxy.url, tmp_path / "cache", prefix)
    server = start(servers, tmp_path / "cache", env)
    proxy.fault(fault, methods={"GET"})  # every data fetch fails (listing and metadata are in)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.get("/api/v1/b/b/e", params={"ts": acked[0]})
    assert response.status_code == 503
    error = response.headers["x-reduct-error"]
    assert error.startswith("Remote storage is unavailable") and "botocore" not in error.lower()
    proxy.fault(fault, count=1, methods={"GET"})  # one failure: the retry gets the object
    await check(server.url, acked)
    proxy.fault(None)
    server.stop()


async def eventually(probe, seconds: float = 20.0):  # noqa: ANN001, ANN201
    """Await ``probe()`` until it returns something truthy (or fail after ``seconds``)."""
    last: object = None
    for _ in range(int(seconds * 5)):
        try:
            last = await probe()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - not visible yet
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"not seen within {seconds} s: {last!r}")


async def test_a_replica_on_s3_sees_writes_labels_removals_and_new_buckets(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    # A replica reads compacted descriptors (as on a shared folder): compact every second.
    writer_env = s3_env(moto_url, tmp_path / "w", prefix, RS_ENGINE_COMPACTION_INTERVAL="1s")
    writer = start(servers, tmp_path / "w", writer_env)
    acked = await write(writer.url, range(1, 11))
    replica_env = s3_env(
        moto_url, tmp_path / "r", prefix,
        RS_INSTANCE_ROLE="REPLICA", RS_ENGINE_REPLICA_UPDATE_INTERVAL="1s",
    )
    replica = start(servers, tmp_path / "r", replica_env)

    async def sees_all() -> bool:
        await check(replica.url, acked)
        return True

    await eventually(sees_all)
    async with Client(writer.url) as client:
        bucket = await client.get_bucket("b")
        await bucket.write("e", payload(11), timestamp=11, labels={"n": "11"})
        await bucket.update("e", 1, {"n": "changed"})
        await bucket.remove_record("e", 2)
        await client.create_bucket("new-bucket")
    async with Client(replica.url) as client:

        async def sees_changes() -> bool:
            names = [b.name for b in await client.list()]
            bucket = await client.get_bucket("b")
            async with bucket.read("e", timestamp=11) as record:
                assert await record.read_all() == payload(11)
            async with bucket.read("e", timestamp=1) as record:
                assert record.labels["n"] == "changed"
            try:
                async with bucket.read("e", timestamp=2):
                    return False
            except Exception:  # noqa: BLE001 - 404: the removal is visible
                pass
            return "new-bucket" in names

        await eventually(sees_changes)
        bucket = await client.get_bucket("b")
        with pytest.raises(Exception) as refused:
            await bucket.write("e", b"x", timestamp=99)
        assert "read-only" in str(refused.value)
    writer.stop()
    replica.stop()


def lease_env(url: str, cache: Path, prefix: str, role: str, **extra: str) -> dict[str, str]:
    """A PRIMARY/SECONDARY on S3 with a short lease (TTL 2 s)."""
    return s3_env(
        url, cache, prefix,
        RS_INSTANCE_ROLE=role, RS_LOCK_FILE_TTL="2", RS_LOCK_FILE_POLLING_INTERVAL="0.3",
        RS_LOCK_FILE_TIMEOUT="0", **extra,
    )


async def write_until(url: str, first: int, stop: asyncio.Event, acked: list[int]) -> None:
    """Write b/e records from ``first`` on until ``stop`` or the server goes; only 200s count."""
    async with Client(url, timeout=10) as client:
        bucket = await client.create_bucket("b", SMALL_BLOCKS, exist_ok=True)
        for ts in range(first, first + 2_000):  # bounded: ~15 s at most of load
            if stop.is_set():
                return
            try:
                await bucket.write("e", payload(ts, 5_000), timestamp=ts, labels={"n": str(ts)})
            except Exception:  # noqa: BLE001 - killed or stepping down: not acknowledged
                return
            acked.append(ts)


async def under_load(url: str, first: int, after: int, action) -> list[int]:  # noqa: ANN001
    """Run ``action()`` once ``after`` records were acknowledged while a writer keeps going;
    the acknowledged timestamps (the writer ends when the server does)."""
    acked: list[int] = []
    stop = asyncio.Event()
    writer = asyncio.create_task(write_until(url, first, stop, acked))
    for _ in range(300):
        if len(acked) >= after or writer.done():
            break
        await asyncio.sleep(0.05)
    assert len(acked) >= after, f"only {len(acked)} writes acknowledged"
    await asyncio.to_thread(action)
    stop.set()
    await asyncio.wait_for(writer, 30)
    return acked


async def test_sigkill_of_the_primary_the_secondary_serves_every_acknowledged_record(
    tmp_path: Path, moto_url: str, prefix: str, servers: list[ServerProcess]
) -> None:
    # moto evaluates If-None-Match/If-Match sequentially without a lock: this test proves the
    # hand-over and the data, not the atomicity of the lease (that needs MinIO or AWS S3).
    primary = start(
        servers, tmp_path / "p", lease_env(moto_url, tmp_path / "p", prefix, "PRIMARY",
                                           RS_REMOTE_SYNC_INTERVAL="0"),
    )
    secondary = start(
        servers, tmp_path / "s", lease_env(moto_url, tmp_path / "s", prefix, "SECONDARY",
                                           RS_REMOTE_SYNC_INTERVAL="0"),
        wait=False,
    )
    secondary.wait_ready(path="/api/v1/alive")
    assert httpx.get(f"{secondary.url}/api/v1/ready", timeout=5).status_code == 503  # waiting
    acked = await under_load(primary.url, 1, 15, primary.kill)  # SIGKILL mid-write
    secondary.wait_ready(timeout=30)
    await check(secondary.url, acked, size=5_000)  # every acknowledged record (sync 0)
    # SIGTERM hand-over under load to a standby with an empty cache, waiting meanwhile.
    standby = start(
        servers, tmp_path / "p2", lease_env(moto_url, tmp_path / "p2", prefix, "SECONDARY"),
        wait=False,
    )
    standby.wait_ready(path="/api/v1/alive")
    codes: list[int] = []
    more = await under_load(
        secondary.url, 1_000, 10, lambda: codes.append(secondary.stop())
    )
    assert codes == [0]  # uploads everything, then releases the lease
    standby.wait_ready(timeout=30)
    await check(standby.url, acked + more, size=5_000)
    standby.stop()


async def test_a_lease_needs_a_store_that_honours_conditional_writes(
    tmp_path: Path, proxy: FaultProxy, prefix: str, servers: list[ServerProcess]
) -> None:
    proxy.ignore_conditions = True  # a store that drops If-None-Match / If-Match
    env = lease_env(proxy.url, tmp_path / "c", prefix, "PRIMARY")
    server = start(servers, tmp_path / "c", env, wait=False)
    assert server.proc is not None
    assert server.proc.wait(timeout=30) == 2
    assert "does not honour conditional writes" in server.logs()
