"""Batch protocol v1 (``/b/{b}/{e}/batch``) and v2 (``/io/{b}/...``) round trips and errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Harness, asgi_call

API = "/api/v1"


@pytest.fixture
async def hb(h: Harness) -> Harness:
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    return h


async def post_v1(h: Harness, entry: str, records: dict[int, tuple[bytes, str]]) -> Any:
    headers = {f"x-reduct-time-{ts}": f"{len(d)},{v}" for ts, (d, v) in records.items()}
    body = b"".join(records[ts][0] for ts in sorted(records))
    headers["Content-Length"] = str(len(body))
    return await h.client.post(API + f"/b/bkt/{entry}/batch", data=body, headers=headers)


async def entry_query(h: Harness, entry: str, **body: Any) -> int:
    r = await h.client.post(API + f"/b/bkt/{entry}/q", json={"query_type": "QUERY", **body})
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    return (await r.get_json())["id"]


async def test_batch_v1_write_then_read(hb: Harness) -> None:
    r = await post_v1(hb, "e", {
        1000: (b"aaa", "text/plain,x=1"),
        1001: (b"bb", ',y="a,b"'),
        1002: (b"", "application/json"),
    })
    assert r.status_code == 200
    assert not [k for k in r.headers.keys() if k.lower().startswith("x-reduct-error")]
    qid = await entry_query(hb, "e")
    status, headers, body = await asgi_call(hb.app, "GET", API + "/b/bkt/e/batch", query=f"q={qid}")
    assert status == 200
    assert body == b"aaabb"
    assert headers["content-length"] == "5"
    assert headers["x-reduct-time-1000"] == "3,text/plain,x=1"
    assert headers["x-reduct-time-1001"] == '2,application/octet-stream,y="a,b"'
    assert headers["x-reduct-time-1002"] == "0,application/json"
    assert headers["x-reduct-last"] == "true"
    times = [k for k in headers if k.startswith("x-reduct-time-")]
    assert times == sorted(times)
    r = await hb.client.get(API + f"/b/bkt/e/batch?q={qid}")
    assert r.status_code == 204


async def test_batch_v1_head_has_content_length(hb: Harness) -> None:
    await post_v1(hb, "e", {1: (b"abcd", "t"), 2: (b"ef", "t")})
    qid = await entry_query(hb, "e", only_metadata=True)
    status, headers, body = await asgi_call(
        hb.app, "HEAD", API + "/b/bkt/e/batch", query=f"q={qid}"
    )
    assert status == 200
    assert headers["content-length"] == "6"
    assert body == b""


async def test_batch_v1_85_records_per_batch(hb: Harness) -> None:
    records = {1000 + i: (b"x", "t") for i in range(100)}
    await post_v1(hb, "e", records)
    qid = await entry_query(hb, "e")
    r1 = await hb.client.get(API + f"/b/bkt/e/batch?q={qid}")
    r2 = await hb.client.get(API + f"/b/bkt/e/batch?q={qid}")
    n1 = len([k for k in r1.headers.keys() if k.lower().startswith("x-reduct-time-")])
    n2 = len([k for k in r2.headers.keys() if k.lower().startswith("x-reduct-time-")])
    assert (n1, r1.headers["x-reduct-last"]) == (85, "false")
    assert (n2, r2.headers["x-reduct-last"]) == (15, "true")


async def test_batch_v1_per_record_errors(hb: Harness) -> None:
    await post_v1(hb, "e", {1000: (b"a", "t")})
    r = await post_v1(hb, "e", {1000: (b"b", "t"), 1001: (b"c", "t")})
    assert r.status_code == 200
    assert r.headers["x-reduct-error-1000"] == "409,A record with timestamp 1000 already exists"
    assert "x-reduct-error-1001" not in r.headers


async def test_batch_v1_missing_bucket_is_per_record_404(h: Harness) -> None:
    r = await h.client.post(
        API + "/b/nope/e/batch", data=b"a", headers={"x-reduct-time-1": "1,t",
                                                      "Content-Length": "1"},
    )
    assert r.status_code == 200
    assert r.headers["x-reduct-error-1"].startswith("404,")


async def test_batch_v1_bad_headers(hb: Harness) -> None:
    r = await hb.client.post(API + "/b/bkt/e/batch", data=b"a", headers={
        "x-reduct-time-1": "1", "Content-Length": "1"})
    assert r.status_code == 422 and r.headers["x-reduct-error"] == "Invalid batched header"
    r = await hb.client.post(API + "/b/bkt/e/batch", data=b"a", headers={
        "x-reduct-time-abc": "1,t", "Content-Length": "1"})
    assert r.status_code == 422
    r = await hb.client.post(API + "/b/bkt/e/batch", data=b"ab", headers={
        "x-reduct-time-1": "1,t", "Content-Length": "2"})
    assert r.status_code == 422
    status, headers, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e/batch", headers={"x-reduct-time-1": "5,t"},
        chunks=[b"ab"],
    )
    assert status == 400
    assert headers["x-reduct-error"] == "Content is shorter than expected: no more data to read"


async def test_batch_v1_update_and_remove(hb: Harness) -> None:
    await post_v1(hb, "e", {1: (b"a", "t,a=1,b=2"), 2: (b"b", "t")})
    r = await hb.client.patch(API + "/b/bkt/e/batch", headers={
        "x-reduct-time-1": "0,,a=,c=3", "x-reduct-time-9": "0,,a=1", "Content-Length": "0"})
    assert r.status_code == 200
    assert r.headers["x-reduct-error-9"] == "404,Record 9 not found in entry bkt/e"
    r = await hb.client.get(API + "/b/bkt/e?ts=1")
    assert r.headers["x-reduct-label-c"] == "3" and "x-reduct-label-a" not in r.headers
    r = await hb.client.delete(API + "/b/bkt/e/batch", headers={
        "x-reduct-time-1": "", "x-reduct-time-7": ""})
    assert r.status_code == 200
    assert r.headers["x-reduct-error-7"].startswith("404,")
    assert (await hb.client.get(API + "/b/bkt/e?ts=1")).status_code == 404
    r = await hb.client.delete(API + "/b/bkt/zz/batch", headers={"x-reduct-time-1": ""})
    assert r.status_code == 404
    r = await hb.client.get(API + "/b/bkt/e/batch")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == "'q' parameter is required for batched reads"


def v2_headers(
    entries: list[str], start: int, records: dict[str, str], **extra: str
) -> dict[str, str]:
    from appliance.api.batch_codec import encode_name

    headers = {"x-reduct-entries": ",".join(encode_name(e) for e in entries),
               "x-reduct-start-ts": str(start)}
    headers.update(records)
    headers.update(extra)
    return headers


async def test_batch_v2_write_read_echo(hb: Harness) -> None:
    headers = v2_headers(["a/x", "b"], 1000, {
        "x-reduct-0-0": "3,text/plain,k=1", "x-reduct-0-10": "2",
        "x-reduct-1-5": "1,application/json,k=2",
    }, **{"Content-Length": "6"})
    r = await hb.client.post(API + "/io/bkt/write", data=b"aaabbc", headers=headers)
    assert r.status_code == 200
    assert r.headers["x-reduct-entries"] == "a%2Fx,b"
    assert r.headers["x-reduct-start-ts"] == "1000"
    assert await (await hb.client.get(API + "/b/bkt/a/x?ts=1010")).get_data() == b"bb"
    assert await (await hb.client.get(API + "/b/bkt/b?ts=1005")).get_data() == b"c"

    r = await hb.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["*"]})
    qid = (await r.get_json())["id"]
    # a/x at 1000, b at 1005, a/x at 1010: a/x would re-appear after b started -> cut (§8.3)
    bodies, last = [], "false"
    while last != "true":
        status, h2, body = await asgi_call(
            hb.app, "GET", API + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)}
        )
        assert status == 200
        assert h2["content-length"] == str(len(body))
        bodies.append((h2["x-reduct-entries"], body))
        last = h2["x-reduct-last"]
    assert bodies == [("a%2Fx,b", b"aaac"), ("a%2Fx", b"bb")]


async def test_batch_v2_parses_with_reduct_py(hb: Harness) -> None:
    from reduct.batch.batch_v2 import _parse_batched_headers

    headers = v2_headers(["e"], 10, {
        "x-reduct-0-0": "1,text/plain,a=1,b=x", "x-reduct-0-1": "1", "x-reduct-0-2": "1,,b=",
    }, **{"Content-Length": "3"})
    await hb.client.post(API + "/io/bkt/write", data=b"xyz", headers=headers)
    r = await hb.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"]})
    qid = (await r.get_json())["id"]
    status, h2, body = await asgi_call(
        hb.app, "GET", API + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)}
    )
    parsed = _parse_batched_headers(h2)
    assert [(p.timestamp, p.header.labels) for p in parsed] == [
        (10, {"a": "1", "b": "x"}), (11, {"a": "1", "b": "x"}), (12, {"a": "1"}),
    ]
    assert body == b"xyz"


async def test_batch_v2_errors_and_requirements(hb: Harness) -> None:
    await hb.client.post(API + "/b/bkt/e?ts=1000", data=b"a", headers={"Content-Length": "1"})
    headers = v2_headers(["e"], 1000, {"x-reduct-0-0": "1,t", "x-reduct-0-1": "1"},
                         **{"Content-Length": "2"})
    r = await hb.client.post(API + "/io/bkt/write", data=b"ab", headers=headers)
    assert r.status_code == 200
    assert r.headers["x-reduct-error-0-0"] == "409,A record with timestamp 1000 already exists"
    assert "x-reduct-error-0-1" not in r.headers
    status, hdrs, _ = await asgi_call(hb.app, "POST", API + "/io/bkt/write", headers={
        "x-reduct-entries": "e", "x-reduct-start-ts": "1", "x-reduct-0-0": "1,t"}, chunks=[b"a"])
    assert status == 422 and hdrs["x-reduct-error"] == "content-length header is required"
    r = await hb.client.post(API + "/io/bkt/write", data=b"", headers={
        "x-reduct-entries": "", "x-reduct-start-ts": "0", "Content-Length": "0"})
    assert r.status_code == 422
    r = await hb.client.post(API + "/io/bkt/write", data=b"a", headers={
        "x-reduct-entries": "e", "Content-Length": "1", "x-reduct-0-0": "1,t"})
    assert r.status_code == 422 and r.headers["x-reduct-error"] == (
        "x-reduct-start-ts header is required")
    r = await hb.client.post(API + "/io/bkt/write", data=b"a", headers=v2_headers(
        ["bad$name"], 1, {"x-reduct-0-0": "1,t"}, **{"Content-Length": "1"}))
    assert r.status_code == 422
    r = await hb.client.post(API + "/io/nope/write", data=b"a", headers=v2_headers(
        ["e"], 1, {"x-reduct-0-0": "1,t"}, **{"Content-Length": "1"}))
    assert r.status_code == 200 and r.headers["x-reduct-error-0-0"].startswith("404,")


async def test_batch_v2_update_and_remove(hb: Harness) -> None:
    headers = v2_headers(["e"], 100, {"x-reduct-0-0": "1,t,a=1,b=2", "x-reduct-0-1": "1"},
                         **{"Content-Length": "2"})
    await hb.client.post(API + "/io/bkt/write", data=b"xy", headers=headers)
    r = await hb.client.patch(API + "/io/bkt/update", headers=v2_headers(
        ["e"], 100, {"x-reduct-0-0": "0,,0=one,1=,c=3", "x-reduct-0-5": "0,,c=1"},
        **{"x-reduct-labels": "a,b"}))
    assert r.status_code == 200
    assert r.headers["x-reduct-entries"] == "e" and r.headers["x-reduct-start-ts"] == "100"
    assert r.headers["x-reduct-error-0-5"].startswith("404,")
    r = await hb.client.get(API + "/b/bkt/e?ts=100")
    assert r.headers["x-reduct-label-a"] == "one" and r.headers["x-reduct-label-c"] == "3"
    assert "x-reduct-label-b" not in r.headers
    r = await hb.client.delete(API + "/io/bkt/remove", headers=v2_headers(
        ["e", "zz"], 100, {"x-reduct-0-1": "", "x-reduct-0-2": "", "x-reduct-1-0": ""}))
    assert r.status_code == 200
    assert "x-reduct-error-0-1" not in r.headers
    assert r.headers["x-reduct-error-0-2"].startswith("404,Record 102 not found")
    assert r.headers["x-reduct-error-1-0"].startswith("404,")
    r = await hb.client.delete(API + "/io/bkt/remove", headers=v2_headers(
        ["e/$meta"], 100, {"x-reduct-0-1": ""}))
    assert r.status_code == 422
    r = await hb.client.patch(API + "/io/nope/update", headers=v2_headers(
        ["e"], 100, {"x-reduct-0-0": "0,,a=1"}))
    assert r.status_code == 404


async def test_batch_v2_read_requires_query_id(hb: Harness) -> None:
    r = await hb.client.get(API + "/io/bkt/read")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == "x-reduct-query-id header is required for batched reads"
    r = await hb.client.get(API + "/io/bkt/read", headers={"x-reduct-query-id": "abc"})
    assert r.status_code == 422 and r.headers["x-reduct-error"] == "Invalid query id"
    r = await hb.client.get(API + "/io/bkt/read", headers={"x-reduct-query-id": "999"})
    assert r.status_code == 404
    assert r.headers["x-reduct-error"] == (
        "Query 999 not found and it might have expired. Check TTL in your query request."
    )


async def test_batch_large_records_stream_through_batches(hb: Harness) -> None:
    import os

    big = os.urandom(17 * 1024 * 1024)
    small = b"tiny"
    headers = v2_headers(["e"], 1, {"x-reduct-0-0": f"{len(big)},t", "x-reduct-0-1": "4"},
                         **{"content-length": str(len(big) + 4)})
    body = big + small
    chunks = [body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    status, hdrs, _ = await asgi_call(hb.app, "POST", API + "/io/bkt/write", headers=headers,
                                      chunks=chunks)
    assert status == 200, hdrs
    assert not [k for k in hdrs if k.startswith("x-reduct-error-")]
    r = await hb.client.post(API + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"]})
    qid = (await r.get_json())["id"]
    got = b""
    sizes = []
    for _ in range(2):  # the big record crosses the 8 MB limit: it ends the first batch
        status, hdrs, part = await asgi_call(
            hb.app, "GET", API + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)}
        )
        assert hdrs["content-length"] == str(len(part))
        sizes.append(len(part))
        got += part
    assert got == body
    assert sizes == [len(big), 4]
