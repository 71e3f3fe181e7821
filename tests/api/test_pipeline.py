"""The write pipeline (``streaming.Pipeline``): chunk N is written in a worker thread while chunk
N+1 arrives; order kept, memory bounded, errors surfaced; and the batch paths built on it."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.api.streaming import Pipeline, RecordSink
from appliance.workers import Workers
from tests.api.conftest import Harness, asgi_call, asgi_scope

API = "/api/v1"
KIB = 1024


@pytest.fixture
def svc() -> Any:
    pool = ThreadPoolExecutor(2)
    yield SimpleNamespace(workers=Workers(pool))
    pool.shutdown(wait=True)


async def test_pipeline_keeps_order_and_writes_in_few_hops(svc: Any) -> None:
    pieces = [os.urandom(16 * KIB) for _ in range(200)]
    calls: list[list[bytes]] = []
    pipe = Pipeline(svc, calls.append, limit=1024 * KIB, hop_bytes=64 * KIB)
    for piece in pieces:
        await pipe.put(piece, len(piece))
        await asyncio.sleep(0)  # let hops run meanwhile, as a socket would
    assert await pipe.close(lambda: "finished") == "finished"
    assert b"".join(b"".join(group) for group in calls) == b"".join(pieces)
    assert 1 < len(calls) < len(pieces)  # overlapped, and not one hop per piece


async def test_pipeline_bounds_what_it_queues_ahead_of_a_slow_sink(svc: Any) -> None:
    gate = threading.Event()
    written: list[int] = []

    def slow_sink(group: list[bytes]) -> None:
        gate.wait(10)
        written.extend(len(p) for p in group)

    pipe = Pipeline(svc, slow_sink, limit=256 * KIB, hop_bytes=64 * KIB)
    piece = b"x" * (64 * KIB)

    async def feed() -> None:
        for _ in range(64):  # 4 MiB in all
            await pipe.put(piece, len(piece))

    feeding = asyncio.ensure_future(feed())
    await asyncio.sleep(0.3)
    assert not feeding.done()  # held back: the sink has not written anything yet
    queued = pipe._received - pipe._written  # noqa: SLF001 - the bound under test
    assert queued <= 256 * KIB + len(piece)
    gate.set()
    await asyncio.wait_for(feeding, 10)
    await pipe.close(lambda: None)
    assert sum(written) == 64 * len(piece)


async def test_pipeline_surfaces_the_sink_error(svc: Any) -> None:
    def failing(group: list[bytes]) -> None:
        raise OSError("disk on fire")

    pipe = Pipeline(svc, failing, hop_bytes=1)
    with pytest.raises(OSError, match="disk on fire"):
        for _ in range(100):
            await pipe.put(b"abc", 3)
            await asyncio.sleep(0.01)
        await pipe.close(lambda: None)
    await pipe.quiesce()  # nothing left running


class CountingWorkers(Workers):
    """``Workers`` that count the hops started (``start``)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__(pool)
        self.started = 0

    def start(self, fn: Any, *args: Any) -> Any:
        self.started += 1
        return super().start(fn, *args)


async def test_close_hands_its_last_step_to_the_hop_still_draining() -> None:
    """The last piece and ``last()`` in the hop already running: no hop of its own, and
    ``last()`` after every piece was written."""
    pool = ThreadPoolExecutor(2)
    try:
        workers = CountingWorkers(pool)
        inside = threading.Event()
        release = threading.Event()
        written: list[bytes] = []
        threads: set[int] = set()

        def sink(group: list[bytes]) -> None:
            threads.add(threading.get_ident())
            inside.set()
            release.wait(10)  # the hop is still draining when close() comes
            written.extend(group)

        def last() -> tuple[int, int]:
            threads.add(threading.get_ident())
            return len(written), len(threads)

        pipe = Pipeline(SimpleNamespace(workers=workers), sink, hop_bytes=3)
        await pipe.put(b"abc", 3)
        assert await asyncio.to_thread(inside.wait, 10)
        await pipe.put(b"def", 3)  # queued behind the piece being written
        closing = asyncio.ensure_future(pipe.close(last))
        await asyncio.sleep(0.05)
        assert not closing.done()
        release.set()
        assert await asyncio.wait_for(closing, 10) == (2, 1)  # both pieces, one thread
        assert written == [b"abc", b"def"]
        assert workers.started == 1
    finally:
        pool.shutdown(wait=True)


async def test_close_after_the_hop_ended_starts_its_own() -> None:
    pool = ThreadPoolExecutor(2)
    try:
        workers = CountingWorkers(pool)
        written: list[bytes] = []
        pipe = Pipeline(SimpleNamespace(workers=workers), written.extend, hop_bytes=3)
        await pipe.put(b"abc", 3)
        hop = pipe._hop  # noqa: SLF001 - waited for, so the hop has surely ended (no timing)
        assert hop is not None
        await asyncio.wait_for(asyncio.shield(hop), 10)
        await pipe.put(b"d", 1)  # below hop_bytes: waits for close
        assert await pipe.close(lambda: list(written)) == [b"abc", b"d"]
        assert workers.started == 2
    finally:
        pool.shutdown(wait=True)


async def test_close_racing_the_hop_end_runs_last_once_after_every_piece(svc: Any) -> None:
    """Close at every moment of a hop's end: ``last()`` exactly once, after all pieces."""
    for round_ in range(300):
        written: list[int] = []
        runs: list[int] = []

        def last(written: list[int] = written, runs: list[int] = runs) -> int:
            runs.append(len(written))
            return len(written)

        pipe = Pipeline(svc, lambda group, w=written: w.extend(group), hop_bytes=1)
        for i in range(3):
            await pipe.put(i, 1)
        for _ in range(round_ % 4):
            await asyncio.sleep(0)
        assert await pipe.close(last) == 3
        assert runs == [3]


async def test_a_sink_error_in_the_hop_close_joined_fails_close_without_last() -> None:
    pool = ThreadPoolExecutor(2)
    try:
        inside = threading.Event()
        release = threading.Event()
        ran: list[bool] = []

        def failing(group: list[bytes]) -> None:
            inside.set()
            release.wait(10)
            raise OSError("disk on fire")

        pipe = Pipeline(SimpleNamespace(workers=Workers(pool)), failing, hop_bytes=1)
        await pipe.put(b"abc", 3)
        assert await asyncio.to_thread(inside.wait, 10)
        closing = asyncio.ensure_future(pipe.close(lambda: ran.append(True)))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(OSError, match="disk on fire"):
            await asyncio.wait_for(closing, 10)
        assert ran == []
        await pipe.quiesce()
    finally:
        pool.shutdown(wait=True)


# --- batches of large records go through the pipeline -------------------------------------


@pytest.fixture
async def hb(h: Harness) -> Harness:
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    return h


def v1_request(records: dict[int, bytes]) -> tuple[dict[str, str], bytes]:
    """Headers and body of a batch v1 write."""
    headers = {f"x-reduct-time-{ts}": f"{len(d)},application/octet-stream"
               for ts, d in records.items()}
    body = b"".join(records[ts] for ts in sorted(records))
    headers["content-length"] = str(len(body))
    return headers, body


async def test_batch_of_large_records_pipelined_with_per_record_errors(hb: Harness) -> None:
    records = {ts: os.urandom(100 * KIB + ts) for ts in range(1, 9)}
    r = await hb.client.post(API + "/b/bkt/e?ts=5", data=b"first", headers={"Content-Length": "5"})
    assert r.status_code == 200
    headers, body = v1_request(records)
    chunks = [body[i : i + 64 * KIB] for i in range(0, len(body), 64 * KIB)]
    status, hdrs, _ = await asgi_call(hb.app, "POST", API + "/b/bkt/e/batch", headers=headers,
                                      chunks=chunks)
    assert status == 200
    assert hdrs["x-reduct-error-5"] == "409,A record with timestamp 5 already exists"
    assert [k for k in hdrs if k.startswith("x-reduct-error-")] == ["x-reduct-error-5"]
    for ts, data in records.items():
        r = await hb.client.get(API + f"/b/bkt/e?ts={ts}")
        assert r.status_code == 200
        assert await r.get_data() == (b"first" if ts == 5 else data)


async def test_batch_of_large_records_cut_short_stores_only_whole_records(hb: Harness) -> None:
    records = {ts: os.urandom(200 * KIB) for ts in range(1, 9)}
    headers, body = v1_request(records)
    half = body[: len(body) // 2 + 1000]  # ends inside record 5
    chunks = [half[i : i + 64 * KIB] for i in range(0, len(half), 64 * KIB)]
    status, _, _ = await asgi_call(hb.app, "POST", API + "/b/bkt/e/batch", headers=headers,
                                   chunks=chunks, disconnect=True)
    assert status in (0, 400)
    for ts, data in records.items():
        r = await hb.client.get(API + f"/b/bkt/e?ts={ts}")
        if ts >= 5:
            assert r.status_code == 404, ts  # never received whole: never stored
        elif r.status_code == 200:  # received whole before the cut: stored whole, or not at all
            assert await r.get_data() == data
        else:
            assert r.status_code == 404, ts
    r = await hb.client.post(API + "/b/bkt/e?ts=5", data=b"again", headers={"Content-Length": "5"})
    assert r.status_code == 200  # the entry still takes writes


async def slow_post(app: Any, path: str, headers: dict[str, str], chunks: list[bytes]) -> int:
    """POST ``chunks`` to the ASGI app 2 ms apart (a client slower than the disk); status."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        if pending:
            await asyncio.sleep(0.002)
            return pending.pop(0)
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = asgi_scope("POST", path, headers=raw)
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert not [k for k, _ in start["headers"] if k.startswith(b"x-reduct-error-")]
    return int(start["status"])


async def test_synced_batch_of_large_records_commits_in_few_hops(
    harness_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.engine.entry import Entry

    h = await harness_factory(engine_sync_writes=True)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    calls: list[int] = []
    original = Entry.write_batch

    def counting(self: Entry, records: Any) -> Any:
        calls.append(len(records))
        return original(self, records)

    monkeypatch.setattr(Entry, "write_batch", counting)
    records = {ts: os.urandom(512 * KIB) for ts in range(1, 17)}  # 8 MiB
    headers, body = v1_request(records)
    chunks = [body[i : i + 64 * KIB] for i in range(0, len(body), 64 * KIB)]
    assert await slow_post(h.app, API + "/b/bkt/e/batch", headers, chunks) == 200
    assert sum(calls) == 16
    assert len(calls) <= 3  # each hop is an fsync: ~4 MiB per hop, not one per record
    for ts, data in records.items():
        r = await h.client.get(API + f"/b/bkt/e?ts={ts}")
        assert await r.get_data() == data


def test_record_sink_writes_each_group_with_one_call() -> None:
    """A drained group goes to the record writer in one ``write_many`` (one ``pwritev``),
    not chunk by chunk."""
    calls: list[list[bytes]] = []

    class Writer:
        def write_many(self, chunks: list[bytes]) -> None:
            calls.append(list(chunks))

    sink = RecordSink(Writer)
    sink.write([[b"a", b"b"], [b"c"]])
    sink.write([[b"d", b"e", b"f"]])
    assert calls == [[b"a", b"b"], [b"c"], [b"d", b"e", b"f"]]
