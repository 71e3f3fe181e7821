"""Batched reads with the next batch collected ahead: once a batch that leaves records behind
is sent, the next one is collected while the client reads; what any request answers is what
it would answer without that (removals, label updates, HEAD, single-record reads, v1, TTL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import Harness, asgi_call

API = "/api/v1"
N = 12


@pytest.fixture
async def hp(harness_factory: Any) -> Harness:
    """Batches of 3 records; entry ``e`` holds ts 1..12 with payload ``p<ts>``."""
    h = await harness_factory(io_batch_max_records=3)
    await h.client.post(API + "/b/bkt")
    for ts in range(1, N + 1):
        data = b"p%d" % ts
        r = await h.client.post(API + f"/b/bkt/e?ts={ts}", data=data,
                                headers={"Content-Length": str(len(data)), "x-reduct-label-k": "a"})
        assert r.status_code == 200
    return h


async def _query(h: Harness, **extra: Any) -> int:
    r = await h.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"],
                                                     **extra})
    assert r.status_code == 200
    return int((await r.get_json())["id"])


async def _read(h: Harness, qid: int, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asgi_call(h.app, method, API + "/io/bkt/read",
                           headers={"x-reduct-query-id": str(qid)})


def _stamps(headers: dict[str, str]) -> list[int]:
    start = int(headers["x-reduct-start-ts"])
    return sorted(start + int(k.rsplit("-", 1)[1]) for k in headers if k.startswith("x-reduct-0-"))


async def _ahead(h: Harness, qid: int) -> Any:
    """The batch collected ahead for query ``qid`` (waits for it), None if none started."""
    query = h.services.queries._queries[qid]  # noqa: SLF001 - the state under test
    if query.ahead is None:
        return None
    await asyncio.shield(query.ahead)
    return query.ahead.result()


async def test_next_batch_is_collected_after_a_batch_is_sent(hp: Harness) -> None:
    qid = await _query(hp)
    seen: list[int] = []
    body = b""
    for expected_ahead in (True, True, True, False):
        status, headers, chunk = await _read(hp, qid)
        assert status == 200
        seen += _stamps(headers)
        body += chunk
        ahead = await _ahead(hp, qid)
        assert (ahead is not None) == expected_ahead  # none after the last batch
        if ahead is not None:
            assert [m.timestamp for _, m in ahead.batch.records] == [seen[-1] + i for i in (1, 2, 3)]
    assert headers["x-reduct-last"] == "true"
    assert seen == list(range(1, N + 1))
    assert body == b"".join(b"p%d" % ts for ts in range(1, N + 1))
    assert (await _read(hp, qid))[0] == 204
    assert hp.services.queries.budget.used == 0  # every batch sent: nothing held


async def test_records_removed_meanwhile_are_not_sent(hp: Harness) -> None:
    qid = await _query(hp)
    status, headers, _ = await _read(hp, qid)
    assert _stamps(headers) == [1, 2, 3]
    assert await _ahead(hp, qid) is not None  # 4, 5, 6 already collected
    for ts in (4, 5):
        r = await hp.client.delete(API + f"/b/bkt/e?ts={ts}")
        assert r.status_code == 200
    status, headers, body = await _read(hp, qid)
    assert status == 200 and _stamps(headers) == [6, 7, 8]
    assert body == b"p6p7p8"


async def test_labels_updated_meanwhile_are_sent(hp: Harness) -> None:
    qid = await _query(hp)
    await _read(hp, qid)
    assert await _ahead(hp, qid) is not None
    r = await hp.client.patch(API + "/b/bkt/e?ts=4", headers={"x-reduct-label-k": "b"})
    assert r.status_code == 200
    status, headers, body = await _read(hp, qid)
    assert _stamps(headers) == [4, 5, 6] and body == b"p4p5p6"
    first = headers[f"x-reduct-0-{4 - int(headers['x-reduct-start-ts'])}"]
    assert first.endswith("0=b"), first  # the label as it is now, not as prefetched


async def test_head_after_get_loses_no_record(hp: Harness) -> None:
    qid = await _query(hp)
    seen: list[int] = []
    for method in ("GET", "HEAD", "GET", "HEAD"):
        status, headers, body = await _read(hp, qid, method)
        assert status == 200
        stamps = _stamps(headers)
        seen += stamps
        if method == "HEAD":
            assert body == b""
            assert headers["content-length"] == str(sum(len(b"p%d" % t) for t in stamps))
        else:
            assert body == b"".join(b"p%d" % t for t in stamps)
    assert seen == list(range(1, N + 1))


async def test_v1_batches_and_single_record_reads_interleaved(hp: Harness) -> None:
    r = await hp.client.get(API + "/b/bkt/e/q")
    qid = (await r.get_json())["id"]
    status, headers, body = await asgi_call(hp.app, "GET", API + "/b/bkt/e/batch",
                                            query=f"q={qid}")
    assert status == 200 and body == b"p1p2p3"
    assert sorted(int(k[len("x-reduct-time-"):]) for k in headers
                  if k.startswith("x-reduct-time-")) == [1, 2, 3]
    # A single-record read after a batch whose successor was collected ahead: the next record.
    r = await hp.client.get(API + f"/b/bkt/e?q={qid}")
    assert r.status_code == 200 and r.headers["x-reduct-time"] == "4"
    assert await r.get_data() == b"p4"
    status, headers, body = await asgi_call(hp.app, "GET", API + "/b/bkt/e/batch",
                                            query=f"q={qid}")
    assert body == b"p5p6p7" and headers["x-reduct-last"] == "false"


async def test_only_metadata_with_prefetch(hp: Harness) -> None:
    qid = await _query(hp, only_metadata=True)
    seen: list[int] = []
    for _ in range(4):
        status, headers, body = await _read(hp, qid)
        assert status == 200 and body == b"" and headers["content-length"] == "0"
        seen += _stamps(headers)
    assert seen == list(range(1, N + 1))


async def test_expired_query_with_a_batch_ahead(hp: Harness) -> None:
    qid = await _query(hp, ttl=1)
    await _read(hp, qid)
    assert await _ahead(hp, qid) is not None
    assert hp.services.queries.budget.used > 0
    await asyncio.sleep(1.1)
    status, headers, _ = await _read(hp, qid)
    assert status == 404
    assert hp.services.queries.budget.used == 0  # dropped with its query


async def test_continuous_query_with_a_batch_ahead(hp: Harness) -> None:
    qid = await _query(hp, start=8, continuous=True)
    status, headers, _ = await _read(hp, qid)
    assert _stamps(headers) == [8, 9, 10]
    assert [m.timestamp for _, m in (await _ahead(hp, qid)).batch.records] == [11, 12]
    r = await hp.client.post(API + "/b/bkt/e?ts=13", data=b"p13", headers={"Content-Length": "3"})
    assert r.status_code == 200
    status, headers, body = await _read(hp, qid)  # the batch collected ahead, as it was
    assert _stamps(headers) == [11, 12] and body == b"p11p12"
    assert headers["x-reduct-last"] == "false"  # v2 continuous: never
    assert await _ahead(hp, qid) is None  # it ran the query dry: nothing collected ahead
    status, headers, body = await _read(hp, qid)
    assert _stamps(headers) == [13] and body == b"p13"
    assert (await _read(hp, qid))[0] == 204


async def test_span_read_skips_records_removed_before_it(
    harness_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records above JOIN_RECORD_BYTES lying back to back are read as one span (the body as
    read); a record removed between listing and reading is left out, not an error."""
    from appliance.engine import Entry

    h = await harness_factory(io_batch_max_records=4)
    await h.client.post(API + "/b/bkt")
    size = 40_000
    for ts in range(1, 11):
        data = bytes([ts]) * size
        r = await h.client.post(API + f"/b/bkt/big?ts={ts}", data=data,
                                headers={"Content-Length": str(size)})
        assert r.status_code == 200
    original = Entry.read_run
    spans: list[list[int]] = []

    def remove_then_read(self: Any, metas: Any) -> Any:
        stamps = [m.timestamp for m in metas]
        spans.append(stamps)
        if 6 in stamps:
            self.remove_records([6])
        return original(self, metas)

    monkeypatch.setattr(Entry, "read_run", remove_then_read)
    r = await h.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["big"]})
    qid = (await r.get_json())["id"]
    seen: list[int] = []
    for _ in range(5):
        status, headers, body = await _read(h, qid)
        if status == 204:
            break
        stamps = _stamps(headers)
        assert body == b"".join(bytes([ts]) * size for ts in stamps)
        seen += stamps
        if headers["x-reduct-last"] == "true":
            break
    assert seen == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert [1, 2, 3, 4] in spans and [5, 6, 7, 8] in spans  # read as spans (the 2nd fell back)


async def test_batch_ahead_whose_encoding_failed_is_collected_again(
    hp: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.api import queries

    real = queries.encode_batch
    calls: list[int] = []

    def failing_once(batch: Any, *args: Any) -> None:
        calls.append(len(batch.records))
        if len(calls) == 2:  # the batch collected ahead
            raise ValueError("boom")
        real(batch, *args)

    monkeypatch.setattr(queries, "encode_batch", failing_once)
    qid = await _query(hp)
    await _read(hp, qid)
    assert (await _ahead(hp, qid)).batch.encoded is None
    status, headers, body = await _read(hp, qid)
    assert status == 200 and _stamps(headers) == [4, 5, 6] and body == b"p4p5p6"
