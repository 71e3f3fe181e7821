"""Real process, real client: batched reads whose next batch is collected ahead of its request
(reduct-py 1.21 reads a query one batch request at a time, 85 records each by default)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from reduct import Batch, Client

from tests.e2e.server import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
COUNT = 1_000


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    """A reduct-py client of the running server (auth off)."""
    async with Client(server.url) as c:
        yield c


async def _fill(client: Client, sizes: dict[int, int]) -> dict[int, bytes]:
    """Entry ``e`` of bucket ``b``: one record per timestamp with a payload of that size."""
    bucket = await client.create_bucket("b", exist_ok=True)
    payloads = {ts: os.urandom(size) for ts, size in sizes.items()}
    batch = Batch()
    for ts, data in payloads.items():
        batch.add(ts, data, labels={"k": str(ts % 7)})
    assert not await bucket.write_batch("e", batch)
    return payloads


async def test_every_record_once_in_order_small_and_large(client: Client) -> None:
    # Mostly 1 KiB, some large enough to be streamed and not preloaded (> 1 MiB).
    sizes = {ts: (1_200_000 if ts % 250 == 0 else 1_000 + ts % 13) for ts in range(1, COUNT + 1)}
    payloads = await _fill(client, sizes)
    bucket = await client.get_bucket("b")
    seen = []
    async for record in bucket.query("e"):
        assert await record.read_all() == payloads[record.timestamp]
        assert record.labels == {"k": str(record.timestamp % 7)}
        seen.append(record.timestamp)
    assert seen == list(range(1, COUNT + 1))


async def test_removal_between_batches_is_seen(client: Client) -> None:
    payloads = await _fill(client, {ts: 100 for ts in range(1, COUNT + 1)})
    bucket = await client.get_bucket("b")
    seen = []
    async for record in bucket.query("e"):
        assert await record.read_all() == payloads[record.timestamp]
        seen.append(record.timestamp)
        if record.timestamp == 85:
            # The first batch is read; the next one was collected ahead: change what it holds.
            assert await bucket.remove_query("e", start=100, stop=150) == 50
            await bucket.update("e", 160, {"k": "changed"})
        if record.timestamp == 160:
            assert record.labels == {"k": "changed"}
    assert seen == [ts for ts in range(1, COUNT + 1) if not 100 <= ts < 150]


async def test_past_hypercorns_requests_per_connection(client: Client,
                                                       server: ServerProcess) -> None:
    """More batches than Hypercorn serves on one connection (1,000; most answered in the
    protocol lane): the answer that reaches the cap says ``connection: close``, the client
    opens a new connection, and every record arrives once, in order."""
    total = 1_100 * 85
    bucket = await client.create_bucket("b", exist_ok=True)
    for start in range(0, total, 4_000):
        batch = Batch()
        for ts in range(start + 1, min(total, start + 4_000) + 1):
            batch.add(ts, b"%d" % ts, labels={"k": str(ts % 3)})
        assert not await bucket.write_batch("e", batch)
    expected = 1
    async for record in bucket.query("e"):
        assert record.timestamp == expected
        assert await record.read_all() == b"%d" % expected
        expected += 1
    assert expected == total + 1
    log = server.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


async def test_history_read_with_blocks_made_ready_ahead(client: Client) -> None:
    """An entry of more blocks than the block cache holds (100 of 32 records), read twice:
    each batch collected ahead gets the next block decoded and its columns ready after it
    was handed over. Every payload comes back as written; a removal and a relabel in blocks
    ahead of the reader, made while it reads, are seen."""
    from reduct import BucketSettings

    bucket = await client.create_bucket("h", BucketSettings(max_block_records=32))
    payloads = {ts: os.urandom(1_000 + ts % 7) for ts in range(1, 3_201)}
    batch = Batch()
    for ts, data in payloads.items():
        batch.add(ts, data, labels={"n": str(ts % 10)})
    assert not await bucket.write_batch("e", batch)
    for reading in range(2):
        seen = []
        async for record in bucket.query("e"):
            assert await record.read_all() == payloads[record.timestamp]
            seen.append(record.timestamp)
            if reading == 1 and record.timestamp == 500:
                assert await bucket.remove_query("e", start=700, stop=710) == 10
                await bucket.update("e", 900, {"n": "changed"})
            if reading == 1 and record.timestamp == 900:
                assert record.labels == {"n": "changed"}
        gone = range(700, 710) if reading == 1 else range(0)
        assert seen == [ts for ts in payloads if ts not in gone]
