"""Real process, real client: ``python -m appliance`` driven by reduct-py 1.21 over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from reduct import Batch, Bucket, BucketSettings, Client, QuotaType, ReductError, RecordBatch
from reduct.msg.token import Permissions

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    """A reduct-py client of the running server (auth off)."""
    async with Client(server.url) as c:
        yield c


async def test_reduct_py_bucket_lifecycle(client: Client) -> None:
    settings = BucketSettings(quota_type=QuotaType.FIFO, quota_size=10_000_000, max_block_records=64)
    bucket = await client.create_bucket("lifecycle", settings)
    got = await bucket.get_settings()
    assert got.quota_type == QuotaType.FIFO
    assert got.quota_size == 10_000_000
    assert got.max_block_records == 64
    assert got.max_block_size == 64_000_000
    with pytest.raises(ReductError) as info:
        await client.create_bucket("lifecycle")
    assert info.value.status_code == 409
    assert (await client.create_bucket("lifecycle", exist_ok=True)).name == "lifecycle"
    await bucket.set_settings(BucketSettings(max_block_records=128))
    assert (await bucket.get_settings()).max_block_records == 128
    assert (await bucket.get_settings()).quota_type == QuotaType.FIFO
    await bucket.rename("renamed")
    names = [b.name for b in await client.list()]
    assert "renamed" in names and "lifecycle" not in names
    await bucket.remove()
    with pytest.raises(ReductError) as info:
        await client.get_bucket("renamed")
    assert info.value.status_code == 404


async def test_reduct_py_single_records_labels_and_latest(client: Client) -> None:
    bucket = await client.create_bucket("records")
    await bucket.write("sensor/temp", b"21.5", timestamp=1_000, labels={"unit": "C", "n": 1}, content_type="text/plain")
    await bucket.write("sensor/temp", b"22.0", timestamp=3_000, labels={"unit": "C"})
    await bucket.write("sensor/temp", b"21.0", timestamp=2_000)  # belated write is allowed
    async with bucket.read("sensor/temp", timestamp=1_000) as record:
        assert await record.read_all() == b"21.5"
        assert record.labels == {"unit": "C", "n": "1"}
        assert record.content_type == "text/plain"
        assert record.size == 4
    async with bucket.read("sensor/temp") as latest:
        assert latest.timestamp == 3_000
    with pytest.raises(ReductError) as info:
        await bucket.write("sensor/temp", b"dup", timestamp=1_000)
    assert info.value.status_code == 409
    assert "1000 already exists" in info.value.message
    with pytest.raises(ReductError) as info:
        async with bucket.read("sensor/temp", timestamp=999):
            pass
    assert info.value.status_code == 404
    entries = {e.name: e for e in await bucket.get_entry_list()}
    assert {"sensor", "sensor/temp"} <= set(entries)
    assert entries["sensor/temp"].record_count == 3
    assert entries["sensor/temp"].oldest_record == 1_000
    assert entries["sensor/temp"].latest_record == 3_000


async def test_reduct_py_update_remove_and_rename_entry(client: Client) -> None:
    bucket = await client.create_bucket("mutations")
    for ts in range(1, 6):
        await bucket.write("e", f"v{ts}".encode(), timestamp=ts, labels={"keep": "yes", "drop": "x"})
    await bucket.update("e", 2, {"drop": "", "new": "1"})
    async with bucket.read("e", timestamp=2) as record:
        assert record.labels == {"keep": "yes", "new": "1"}
    await bucket.remove_record("e", 3)
    with pytest.raises(ReductError):
        async with bucket.read("e", timestamp=3):
            pass
    removed = await bucket.remove_query("e", start=4, stop=6)
    assert removed == 2
    got = [r.timestamp async for r in bucket.query("e")]
    assert got == [1, 2]
    await bucket.rename_entry("e", "f")
    assert [r.timestamp async for r in bucket.query("f")] == [1, 2]
    await bucket.remove_entry("f")
    assert "f" not in [e.name for e in await bucket.get_entry_list()]


async def test_reduct_py_batch_v1_and_v2_write_then_query_with_when(client: Client) -> None:
    bucket = await client.create_bucket("batches")
    batch = Batch()
    for i in range(200):
        batch.add(1_000 + i, f"r{i}".encode(), labels={"i": i, "even": str(i % 2 == 0).lower()})
    errors = await bucket.write_batch("v1", batch)
    assert errors == {}
    dup = Batch()
    dup.add(1_000, b"again")
    dup.add(5_000, b"new")
    errors = await bucket.write_batch("v1", dup)
    assert list(errors) == [1_000] and errors[1_000].status_code == 409

    records = RecordBatch()
    for i in range(50):
        records.add("v2/a", 10_000 + i, f"a{i}".encode(), labels={"k": "a"})
        records.add("v2/b", 10_000 + i, f"b{i}".encode(), labels={"k": "b"})
    assert await bucket.write_record_batch(records) == {}

    evens = [r async for r in bucket.query("v1", when={"&even": {"$eq": True}})]
    assert len(evens) == 100
    assert all(int(r.labels["i"]) % 2 == 0 for r in evens)
    payloads = [await r.read_all() async for r in bucket.query("v1", start=1_000, stop=1_010)]
    assert payloads == [f"r{i}".encode() for i in range(10)]
    big = [r.timestamp async for r in bucket.query("v1", when={"&i": {"$gte": 190}, "$limit": 5})]
    assert big == [1_190 + i for i in range(5)]
    every_10th = [r async for r in bucket.query("v1", when={"$each_n": 10})]
    assert len(every_10th) == 20  # 201 records: the 10th, 20th, ... 200th
    both = [(r.entry, r.timestamp) async for r in bucket.query(["v2/a", "v2/b"])]
    assert len(both) == 100
    assert sorted(both, key=lambda p: (p[1], p[0])) == both
    heads = [r async for r in bucket.query("v2/*", head=True)]
    assert len(heads) == 100
    assert {(r.entry, r.timestamp): r.size for r in heads}[("v2/b", 10_011)] == len(b"b11")


async def test_reduct_py_large_batched_read_crosses_many_batches(client: Client) -> None:
    bucket = await client.create_bucket("many")
    batch = Batch()
    for i in range(1_000):
        batch.add(1 + i, bytes([i % 256]) * 100)
    assert await bucket.write_batch("e", batch) == {}
    seen = 0
    async for record in bucket.query("e"):
        assert await record.read_all() == bytes([seen % 256]) * 100
        seen += 1
    assert seen == 1_000


async def test_reduct_py_attachments(client: Client) -> None:
    bucket = await client.create_bucket("attach")
    await bucket.write("cam", b"frame", timestamp=1)
    await bucket.write_attachments("cam", {"calibration": {"k": [1, 2, 3]}, "owner": {"name": "x"}})
    await bucket.write_attachments("cam", {"owner": {"name": "y"}})  # upsert by key
    got = await bucket.read_attachments("cam")
    assert got == {"calibration": {"k": [1, 2, 3]}, "owner": {"name": "y"}}
    await bucket.remove_attachments("cam", ["calibration"])
    assert await bucket.read_attachments("cam") == {"owner": {"name": "y"}}
    assert [e.name for e in await bucket.get_entry_list()] == ["cam"]


async def test_reduct_py_info_list_me_and_continuous_query(client: Client) -> None:
    info = await client.info()
    assert info.version.startswith("1.21")
    assert info.bucket_count == 0
    bucket = await client.create_bucket("live")
    await bucket.write("e", b"1", timestamp=10)
    assert (await client.me()).name == "AUTHENTICATION-DISABLED"
    got: list[int] = []

    async def consume() -> None:
        async for record in bucket.subscribe("e", start=10, poll_interval=1):
            got.append(record.timestamp)
            if len(got) == 3:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await bucket.write("e", b"2", timestamp=20)
    await bucket.write("e", b"3", timestamp=30)
    await asyncio.wait_for(task, timeout=10)
    assert got == [10, 20, 30]
    info = await client.info()
    assert info.bucket_count == 1 and info.oldest_record == 10 and info.latest_record == 30


async def test_reduct_py_tokens_and_permissions(auth_server: ServerProcess) -> None:
    async with Client(auth_server.url) as anonymous:
        with pytest.raises(ReductError) as info:
            await anonymous.info()
        assert info.value.status_code == 401
    async with Client(auth_server.url, api_token="init-secret") as admin:
        assert (await admin.me()).name == "init-token"
        await admin.create_bucket("data")
        await admin.create_bucket("data-extra")
        await admin.create_bucket("private")
        writer_value = await admin.create_token("writer", Permissions(full_access=False, write=["data*"]))
        reader_value = await admin.create_token("reader", Permissions(full_access=False, read=["data"]))
        names = [t.name for t in await admin.get_token_list()]
        assert names == ["init-token", "reader", "writer"]
        with pytest.raises(ReductError) as info:
            await admin.remove_token("init-token")
        assert info.value.status_code == 409
    async with Client(auth_server.url, api_token=writer_value) as writer:
        with pytest.raises(ReductError) as info:
            await writer.get_bucket("data")
        assert info.value.status_code == 403
        bucket = Bucket("data", writer._http)
        await bucket.write("e", b"x", timestamp=1)
        await Bucket("data-extra", writer._http).write("e", b"x", timestamp=1)
        with pytest.raises(ReductError) as info:
            await Bucket("private", writer._http).write("e", b"x", timestamp=1)
        assert info.value.status_code == 403
        with pytest.raises(ReductError) as info:
            async with bucket.read("e", timestamp=1):
                pass
        assert info.value.status_code == 403
    async with Client(auth_server.url, api_token=reader_value) as reader:
        assert [b.name for b in await reader.list()] == ["data"]
        bucket = await reader.get_bucket("data")
        async with bucket.read("e", timestamp=1) as record:
            assert await record.read_all() == b"x"
        with pytest.raises(ReductError) as info:
            await bucket.write("e", b"y", timestamp=2)
        assert info.value.status_code == 403
    async with Client(auth_server.url, api_token="init-secret") as admin:
        new_value = await admin.rotate_token("reader")
        assert new_value != reader_value
        await admin.remove_token("writer")
    async with Client(auth_server.url, api_token=reader_value) as stale:
        with pytest.raises(ReductError) as info:
            await stale.list()
        assert info.value.status_code == 401
    token_file = (auth_server.data_path / ".auth").read_bytes()
    assert b"init-secret" not in token_file and new_value.encode() not in token_file
