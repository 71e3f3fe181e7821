"""Query output (issue 13): ``#ctx_before``/``#ctx_after``/``#select_labels`` applied, and a
continuous query's ``x-reduct-last`` and expiry as ReductStore answers them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Harness, asgi_call

API = "/api/v1"


@pytest.fixture
async def h10(h: Harness) -> Harness:
    """Entry ``e`` with records at 1000..10000; only 5000 and 9000 carry ``hit=1``."""
    await h.client.post(API + "/b/bkt")
    for i in range(1, 11):
        labels = {"x-reduct-label-hit": "1" if i in (5, 9) else "0", "x-reduct-label-k": str(i)}
        r = await h.client.post(API + f"/b/bkt/e?ts={i * 1000}", data=b"p%d" % i,
                                headers={"Content-Length": str(len(b"p%d" % i)), **labels})
        assert r.status_code == 200
    return h


async def query(h: Harness, when: dict[str, Any], entries: list[str] | None = None) -> list[
        tuple[int, dict[str, str]]]:
    r = await h.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "when": when,
                                                     "entries": entries or ["e"]})
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    qid = (await r.get_json())["id"]
    out: list[tuple[int, dict[str, str]]] = []
    for _ in range(20):
        status, headers, _ = await asgi_call(h.app, "GET", API + "/io/bkt/read",
                                             headers={"x-reduct-query-id": str(qid)})
        if status == 204:
            break
        assert status == 200, headers
        start = int(headers["x-reduct-start-ts"])
        names = headers.get("x-reduct-labels", "").split(",")  # v2 sends label indexes
        for name, value in headers.items():
            parts = name.split("-")
            if name.startswith("x-reduct-") and len(parts) == 4 and parts[2].isdigit():
                fields = value.split(",")
                pairs = (f.split("=", 1) for f in fields[2:] if "=" in f)
                labels = {names[int(k)] if k.isdigit() else k: v for k, v in pairs}
                out.append((start + int(parts[3]), labels))
        if headers["x-reduct-last"] == "true":
            break
    return sorted(out, key=lambda item: item[0])


async def test_ctx_before_and_after_in_records(h10: Harness) -> None:
    got = await query(h10, {"&hit": {"$eq": 1}, "#ctx_before": 1, "#ctx_after": 1})
    assert [ts for ts, _ in got] == [4000, 5000, 6000, 8000, 9000, 10000]


async def test_ctx_before_overlapping_windows_emit_each_record_once(h10: Harness) -> None:
    got = await query(h10, {"&hit": {"$eq": 1}, "#ctx_before": 3})
    assert [ts for ts, _ in got] == [2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]


async def test_ctx_windows_as_durations(h10: Harness) -> None:
    # 1500 µs before (4000 only; 3000 is 2000 µs away), 2000 µs after (6000, 7000; 10000..11000).
    got = await query(h10, {"&hit": {"$eq": 1}, "#ctx_before": "1500us", "#ctx_after": "2ms"})
    assert [ts for ts, _ in got] == [4000, 5000, 6000, 7000, 8000, 9000, 10000]


async def test_select_labels_keeps_only_listed_labels(h10: Harness) -> None:
    got = await query(h10, {"&hit": {"$eq": 1}, "#select_labels": ["k"]})
    assert got == [(5000, {"k": "5"}), (9000, {"k": "9"})]


async def test_select_labels_on_single_record_query_read(h10: Harness) -> None:
    r = await h10.client.post(API + "/b/bkt/e/q", json={
        "query_type": "QUERY", "when": {"&hit": {"$eq": 1}, "#select_labels": ["hit"]}})
    qid = (await r.get_json())["id"]
    r = await h10.client.get(API + f"/b/bkt/e?q={qid}")
    assert r.status_code == 200 and r.headers["x-reduct-time"] == "5000"
    assert r.headers["x-reduct-label-hit"] == "1" and "x-reduct-label-k" not in r.headers


async def test_ctx_over_two_entries_keeps_windows_per_entry(h10: Harness) -> None:
    for i in range(1, 4):
        r = await h10.client.post(API + f"/b/bkt/f?ts={i * 1000 + 500}", data=b"f",
                                  headers={"Content-Length": "1",
                                           "x-reduct-label-hit": "1" if i == 3 else "0"})
        assert r.status_code == 200
    got = await query(h10, {"&hit": {"$eq": 1}, "#ctx_before": 1}, entries=["e", "f"])
    # e: 4000 before 5000, 8000 before 9000; f: 2500 before 3500 (never e's record).
    assert [ts for ts, _ in got] == [2500, 3500, 4000, 5000, 8000, 9000]


async def test_continuous_v2_batches_never_say_last(h10: Harness) -> None:
    # ReductStore 1.21's multi-entry aggregator keeps polling a continuous query, so no v2
    # batch is last; reduct-js would end the subscription on a last record.
    r = await h10.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"],
                                                       "continuous": True, "ttl": 5})
    qid = (await r.get_json())["id"]
    hdr = {"x-reduct-query-id": str(qid)}
    status, headers, body = await asgi_call(h10.app, "GET", API + "/io/bkt/read", headers=hdr)
    assert status == 200 and headers["x-reduct-last"] == "false"
    assert body.startswith(b"p1p2")
    status, _, _ = await asgi_call(h10.app, "GET", API + "/io/bkt/read", headers=hdr)
    assert status == 204  # still alive: nothing new yet
    await h10.client.post(API + "/b/bkt/e?ts=20000", data=b"n", headers={"Content-Length": "1"})
    status, headers, body = await asgi_call(h10.app, "GET", API + "/io/bkt/read", headers=hdr)
    assert status == 200 and body == b"n" and headers["x-reduct-last"] == "false"


async def test_continuous_v1_first_batch_with_every_record_is_last(h10: Harness) -> None:
    # The entry-level reader sees "no content" after the last current record: last = true.
    r = await h10.client.post(API + "/b/bkt/e/q", json={"query_type": "QUERY", "continuous": True})
    qid = (await r.get_json())["id"]
    r = await h10.client.get(API + f"/b/bkt/e/batch?q={qid}")
    assert r.status_code == 200 and r.headers["x-reduct-last"] == "true"
    assert len([k for k, _ in r.headers.items() if k.lower().startswith("x-reduct-time-")]) == 10
    assert (await h10.client.get(API + f"/b/bkt/e/batch?q={qid}")).status_code == 204
    await h10.client.post(API + "/b/bkt/e?ts=20000", data=b"n", headers={"Content-Length": "1"})
    r = await h10.client.get(API + f"/b/bkt/e/batch?q={qid}")
    assert r.status_code == 200 and await r.get_data() == b"n"


async def test_continuous_batch_cut_by_limit_is_not_last(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_records=4)
    await h.client.post(API + "/b/bkt")
    for ts in range(1, 11):
        await h.client.post(API + f"/b/bkt/e?ts={ts}", data=b"x", headers={"Content-Length": "1"})
    r = await h.client.post(API + "/b/bkt/e/q", json={"query_type": "QUERY", "continuous": True})
    qid = (await r.get_json())["id"]
    lasts = []
    for _ in range(3):
        r = await h.client.get(API + f"/b/bkt/e/batch?q={qid}")
        lasts.append(r.headers["x-reduct-last"])
    assert lasts == ["false", "false", "true"]


async def test_expired_continuous_query_answers_404(h10: Harness) -> None:
    clock = [0.0]
    h10.services.queries._clock = lambda: clock[0]  # noqa: SLF001 - drive the TTL by hand
    r = await h10.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"],
                                                       "continuous": True, "ttl": 3})
    qid = (await r.get_json())["id"]
    hdr = {"x-reduct-query-id": str(qid)}
    clock[0] = 2.0
    status, _, _ = await asgi_call(h10.app, "GET", API + "/io/bkt/read", headers=hdr)
    assert status == 200
    clock[0] = 5.5  # 3.5 s since the last read
    status, headers, _ = await asgi_call(h10.app, "GET", API + "/io/bkt/read", headers=hdr)
    assert status == 404
    assert headers["x-reduct-error"].startswith(f"Query {qid} not found and it might have expired")
