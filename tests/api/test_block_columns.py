"""Batched v2 reads of a block other than the last are encoded from that block's columns
(``engine.block.Columns``, ``v2_run_lines``). What a client decodes from them must be what
was written, across block borders, and after an out-of-order write, a relabel and a removal
in an old block whose columns were already built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance.api import queries
from appliance.api.batch_codec import parse_v1_headers, parse_v2_request
from tests.api.conftest import Harness

API = "/api/v1"


def _written(ts: int) -> tuple[str, dict[str, str], bytes]:
    content_type = "text/plain" if ts % 3 else "application/x-thing"
    return content_type, {"n": str(ts % 4), "note": "a,b"}, b"p%d-" % ts * (ts % 5 + 1)


async def _put(h: Harness, ts: int, content_type: str, labels: dict[str, str],
               data: bytes) -> None:
    r = await h.client.post(
        API + f"/b/bkt/e?ts={ts}", data=data,
        headers={"Content-Length": str(len(data)), "Content-Type": content_type,
                 **{f"x-reduct-label-{k}": v for k, v in labels.items()}},
    )
    assert r.status_code == 200, await r.get_data()


async def _read_v2(h: Harness) -> list[tuple[int, str, dict[str, str], bytes]]:
    """Every record of a v2 query of ``e``, decoded as a client decodes a batch."""
    r = await h.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"]})
    assert r.status_code == 200
    qid = (await r.get_json())["id"]
    got: list[tuple[int, str, dict[str, str], bytes]] = []
    for _ in range(100):
        r = await h.client.get(API + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)})
        if r.status_code == 204:
            return got
        assert r.status_code == 200, r.headers.get("x-reduct-error")
        body = await r.get_data()
        headers: dict[str, Any] = {k.lower(): v for k, v in r.headers.items()}
        pos = 0
        for record in parse_v2_request(headers).records:
            got.append((record.timestamp, record.content_type, dict(record.labels),
                        body[pos : pos + record.content_length]))
            pos += record.content_length
        assert pos == len(body)
        if headers.get("x-reduct-last") == "true":
            return got
    raise AssertionError("the query did not end")


def _count_run_lines(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Patch ``queries.<name>`` (``v2_run_lines`` or ``v1_run_lines``) to note, for every
    batch it writes, how many blocks' spans the batch has."""
    spans_per_batch: list[int] = []
    run_lines = getattr(queries, name)

    def counted(spans: Any) -> Any:
        built = run_lines(spans)
        if built is not None:
            spans_per_batch.append(len(spans))
        return built

    monkeypatch.setattr(queries, name, counted)
    return spans_per_batch


async def _fill(h: Harness) -> dict[int, tuple[str, dict[str, str], bytes]]:
    """A bucket of blocks of 16 records and 100 records in ``e``: six full blocks and a
    last one."""
    r = await h.client.post(API + "/b/bkt", json={"max_block_records": 16})
    assert r.status_code == 200
    expected = {ts: _written(ts) for ts in range(10, 1010, 10)}
    for ts, written in expected.items():
        await _put(h, ts, *written)
    return expected


async def test_v2_reads_of_old_blocks_decode_to_what_was_written(
    harness_factory: Callable[..., Awaitable[Harness]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 8 in blocks of 16: most batches are a run of one block.
    h = await harness_factory(io_batch_max_records=8)
    from_columns = _count_run_lines(monkeypatch, "v2_run_lines")
    expected = await _fill(h)

    def wanted() -> list[tuple[int, str, dict[str, str], bytes]]:
        return [(ts, *expected[ts]) for ts in sorted(expected)]

    assert await _read_v2(h) == wanted()  # a block read before gets its columns
    assert 6 <= len(from_columns) < 12  # not each block's first batch: the block is new
    from_columns.clear()
    assert await _read_v2(h) == wanted()
    assert len(from_columns) == 12  # both batches of each

    expected[255] = ("text/other", {"n": "late", "note": "x"}, b"late")
    await _put(h, 255, *expected[255])  # out of order, into an old block
    r = await h.client.patch(API + "/b/bkt/e?ts=330", headers={"x-reduct-label-n": "relabelled"})
    assert r.status_code == 200
    expected[330][1]["n"] = "relabelled"
    r = await h.client.delete(API + "/b/bkt/e?ts=500")
    assert r.status_code == 200
    del expected[500]
    from_columns.clear()
    assert await _read_v2(h) == wanted()
    assert len(from_columns) >= 8  # the changed blocks' batches too, once rebuilt


async def test_v2_batches_running_into_the_next_block_decode_to_what_was_written(
    harness_factory: Callable[..., Awaitable[Harness]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 6 in blocks of 16: every third batch runs from one block into the next,
    and is read and encoded from both blocks' columns."""
    h = await harness_factory(io_batch_max_records=6)
    spans_per_batch = _count_run_lines(monkeypatch, "v2_run_lines")
    expected = await _fill(h)
    wanted = [(ts, *expected[ts]) for ts in sorted(expected)]
    assert await _read_v2(h) == wanted
    assert await _read_v2(h) == wanted
    spans_per_batch.clear()
    assert await _read_v2(h) == wanted
    # 16 batches lie in the six full blocks (the 17th reaches the last, which has none), and
    # four of them run from one block into the next (records 13-18, 31-36, 61-66, 79-84).
    assert sorted(spans_per_batch) == [1] * 12 + [2] * 4, spans_per_batch


async def test_v1_reads_of_old_blocks_decode_to_what_was_written(
    harness_factory: Callable[..., Awaitable[Harness]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 batches (``GET /b/{bucket}/{entry}/batch?q=``) of 6 in blocks of 16, from the
    blocks' columns (``v1_run_lines``) once read before, across block borders too."""
    h = await harness_factory(io_batch_max_records=6)
    from_columns = _count_run_lines(monkeypatch, "v1_run_lines")
    expected = await _fill(h)
    wanted = [(ts, *expected[ts]) for ts in sorted(expected)]

    async def read_v1() -> list[tuple[int, str, dict[str, str], bytes]]:
        r = await h.client.post(API + "/b/bkt/e/q", json={"query_type": "QUERY"})
        assert r.status_code == 200
        qid = (await r.get_json())["id"]
        got: list[tuple[int, str, dict[str, str], bytes]] = []
        for _ in range(100):
            r = await h.client.get(API + f"/b/bkt/e/batch?q={qid}")
            if r.status_code == 204:
                return got
            assert r.status_code == 200, r.headers.get("x-reduct-error")
            body = await r.get_data()
            pos = 0
            for record in parse_v1_headers({k.lower(): v for k, v in r.headers.items()}):
                got.append((record.timestamp, record.content_type, dict(record.labels),
                            body[pos : pos + record.content_length]))
                pos += record.content_length
            assert pos == len(body)
            if r.headers.get("x-reduct-last") == "true":
                return got
        raise AssertionError("the query did not end")

    assert await read_v1() == wanted
    from_columns.clear()
    assert await read_v1() == wanted
    assert sorted(from_columns) == [1] * 12 + [2] * 4, from_columns
