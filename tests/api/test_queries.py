"""Queries: creation (JSON and legacy), ``when``, TTL, continuous, ids, remove by query."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import Harness, asgi_call

API = "/api/v1"


@pytest.fixture
async def hq(h: Harness) -> Harness:
    await h.client.post(API + "/b/bkt")
    for i, ts in enumerate((1000, 2000, 3000, 4000)):
        r = await h.client.post(
            API + f"/b/bkt/e?ts={ts}", data=b"x" * (i + 1),
            headers={"Content-Length": str(i + 1), "x-reduct-label-n": str(i),
                     "x-reduct-label-even": "true" if i % 2 == 0 else "false"},
        )
        assert r.status_code == 200
    return h


async def create(h: Harness, body: dict[str, Any], path: str = "/io/bkt/q") -> Any:
    return await h.client.post(API + path, json=body)


async def read_all(h: Harness, qid: int, head: bool = False) -> list[int]:
    found: list[int] = []
    for _ in range(50):
        status, headers, _ = await asgi_call(
            h.app, "HEAD" if head else "GET", API + "/io/bkt/read",
            headers={"x-reduct-query-id": str(qid)},
        )
        if status == 204:
            break
        assert status == 200, headers
        start = int(headers["x-reduct-start-ts"])
        found += sorted(
            start + int(k.rsplit("-", 1)[1]) for k in headers
            if k.startswith("x-reduct-0-") or k.startswith("x-reduct-1-")
        )
        if headers["x-reduct-last"] == "true":
            break
    return found


async def qid_of(r: Any) -> int:
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    return (await r.get_json())["id"]


async def test_queries_start_stop(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e"],
                                          "start": 2000, "stop": 4000}))
    assert await read_all(hq, qid) == [2000, 3000]


async def test_queries_when_and_ignored_legacy_fields(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {
        "query_type": "QUERY", "entries": ["e"], "when": {"&even": {"$eq": True}},
        "limit": 1, "each_n": 5, "include": {"x": "y"},
    }))
    assert await read_all(hq, qid) == [1000, 3000]
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "when": {"$each_n": 2}}))
    assert await read_all(hq, qid) == [2000, 4000]


async def test_queries_when_errors(hq: Harness) -> None:
    r = await create(hq, {"query_type": "QUERY", "when": {"$nope": [1]}})
    assert r.status_code == 422
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e"],
                                          "when": {"&missing": {"$eq": 1}}, "strict": True}))
    status, headers, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                         headers={"x-reduct-query-id": str(qid)})
    assert status == 404
    assert headers["x-reduct-error"] == "Reference 'missing' not found"
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e"],
                                          "when": {"&missing": {"$eq": 1}}}))
    status, _, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                   headers={"x-reduct-query-id": str(qid)})
    assert status == 204


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query_type": "NOPE"},
        {"query_type": "QUERY", "start": "x"},
        {"query_type": "QUERY", "start": -1},
        {"query_type": "QUERY", "when": [1]},
        {"query_type": "QUERY", "continuous": "yes"},
        {"query_type": "QUERY", "ext": {"img": {}}},
        {"query_type": "QUERY", "start": 10, "stop": 5},
    ],
)
async def test_queries_bad_json_is_422(hq: Harness, body: dict[str, Any]) -> None:
    r = await create(hq, body)
    assert r.status_code == 422, body


async def test_queries_malformed_json_is_422(hq: Harness) -> None:
    r = await hq.client.post(API + "/io/bkt/q", data=b"{not json")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"].startswith("Invalid JSON:")


async def test_queries_ids_increase_and_namespaces_are_separate(hq: Harness) -> None:
    a = await qid_of(await create(hq, {"query_type": "QUERY"}))
    b = await qid_of(await create(hq, {"query_type": "QUERY"}, "/b/bkt/e/q"))
    assert b == a + 1
    r = await hq.client.get(API + f"/b/bkt/e/batch?q={a}")
    assert r.status_code == 404  # bucket-level id is not an entry-level one
    status, _, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                   headers={"x-reduct-query-id": str(b)})
    assert status == 404


async def test_queries_ttl_zero_expires_immediately(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "ttl": 0}))
    status, headers, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                         headers={"x-reduct-query-id": str(qid)})
    assert status == 404
    assert "might have expired" in headers["x-reduct-error"]


async def test_queries_ttl_inactivity(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "ttl": 1}))
    assert await read_all(hq, qid) == [1000, 2000, 3000, 4000]
    # finished but within TTL: 204
    status, _, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                   headers={"x-reduct-query-id": str(qid)})
    assert status == 204
    await asyncio.sleep(1.1)
    status, _, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                   headers={"x-reduct-query-id": str(qid)})
    assert status == 404


async def test_queries_continuous_picks_up_new_records(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e"],
                                          "start": 3000, "continuous": True}))
    status, headers, body = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                            headers={"x-reduct-query-id": str(qid)})
    assert status == 200 and headers["x-reduct-last"] == "false"  # v2 continuous: never
    assert body == b"xxx" + b"xxxx"
    status, _, _ = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                   headers={"x-reduct-query-id": str(qid)})
    assert status == 204
    await hq.client.post(API + "/b/bkt/e?ts=5000", data=b"new", headers={"Content-Length": "3"})
    status, headers, body = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                            headers={"x-reduct-query-id": str(qid)})
    assert status == 200 and body == b"new"


async def test_queries_non_continuous_ignores_later_records(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e"]}))
    await hq.client.post(API + "/b/bkt/e?ts=9000", data=b"n", headers={"Content-Length": "1"})
    assert await read_all(hq, qid) == [1000, 2000, 3000, 4000]


async def test_queries_head_reads_metadata_only(hq: Harness) -> None:
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "only_metadata": True}))
    status, headers, body = await asgi_call(hq.app, "HEAD", API + "/io/bkt/read",
                                            headers={"x-reduct-query-id": str(qid)})
    assert status == 200
    assert headers["content-length"] == "10" and body == b""


async def test_queries_entry_level_and_single_record_reads(hq: Harness) -> None:
    r = await hq.client.get(API + "/b/bkt/e/q?start=2000&stop=3001")
    qid = await qid_of(r)
    r = await hq.client.get(API + f"/b/bkt/e?q={qid}")
    assert r.status_code == 200 and r.headers["x-reduct-time"] == "2000"
    r = await hq.client.get(API + f"/b/bkt/e?q={qid}")
    assert r.headers["x-reduct-time"] == "3000" and r.headers["x-reduct-last"] == "true"
    r = await hq.client.get(API + f"/b/bkt/e?q={qid}")
    assert r.status_code == 204
    r = await hq.client.get(API + "/b/bkt/e?q=abc")
    assert r.status_code == 422
    r = await hq.client.get(API + "/b/bkt/e/q?start=abc")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == "'start' must be an unix timestamp in microseconds"
    r = await hq.client.get(API + "/b/bkt/e/q?ttl=-3")
    assert r.headers["x-reduct-error"] == "'ttl' must be in seconds as an unsigned integer"
    r = await hq.client.get(API + "/b/bkt/e/q?continuous=maybe")
    assert r.status_code == 422
    r = await hq.client.get(API + "/b/bkt/missing/q")
    assert r.status_code == 404


async def test_queries_remove_by_query(hq: Harness) -> None:
    r = await create(hq, {"query_type": "REMOVE"})
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == "Define at least one query parameter to delete records"
    r = await create(hq, {"query_type": "REMOVE", "entries": ["e"], "start": 2000, "stop": 4000})
    assert (await r.get_json()) == {"removed_records": 2}
    r = await create(hq, {"query_type": "REMOVE", "entries": ["e"],
                          "when": {"&even": {"$eq": True}}})
    assert (await r.get_json()) == {"removed_records": 1}
    r = await hq.client.delete(API + "/b/bkt/e/q")
    assert r.status_code == 422
    r = await hq.client.delete(API + "/b/bkt/e/q?start=0")
    assert (await r.get_json()) == {"removed_records": 1}
    r = await hq.client.post(API + "/b/bkt/e/q", json={"query_type": "REMOVE", "stop": 10})
    assert (await r.get_json()) == {"removed_records": 0}


async def test_queries_multi_entry_merge_by_time(hq: Harness) -> None:
    for ts in (1500, 2500):
        await hq.client.post(API + f"/b/bkt/f?ts={ts}", data=b"f", headers={"Content-Length": "1"})
    qid = await qid_of(await create(hq, {"query_type": "QUERY", "entries": ["e", "f"]}))
    seen = []
    for _ in range(20):
        status, headers, body = await asgi_call(hq.app, "GET", API + "/io/bkt/read",
                                                headers={"x-reduct-query-id": str(qid)})
        if status == 204:
            break
        entries = headers["x-reduct-entries"].split(",")
        assert len(entries) == len(set(entries))
        start = int(headers["x-reduct-start-ts"])
        recs = sorted((start + int(k.rsplit("-", 1)[1]), entries[int(k.split("-")[2])])
                      for k in headers if k.count("-") == 3 and k.split("-")[2].isdigit())
        seen += recs
        if headers["x-reduct-last"] == "true":
            break
    assert seen == [(1000, "e"), (1500, "f"), (2000, "e"), (2500, "f"), (3000, "e"),
                    (4000, "e")]


async def test_queries_batch_limits_from_settings(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_records=3)
    await h.client.post(API + "/b/bkt")
    for ts in range(1, 8):
        await h.client.post(API + f"/b/bkt/e?ts={ts}", data=b"x", headers={"Content-Length": "1"})
    r = await h.client.post(API + "/io/bkt/q", json={"query_type": "QUERY"})
    qid = (await r.get_json())["id"]
    counts = []
    for _ in range(5):
        status, headers, body = await asgi_call(h.app, "GET", API + "/io/bkt/read",
                                                headers={"x-reduct-query-id": str(qid)})
        if status != 200:
            break
        counts.append(len(body))
        if headers["x-reduct-last"] == "true":
            break
    assert counts == [3, 3, 1]
