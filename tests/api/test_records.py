"""Single-record endpoints and the bad-input list: ts, content-length, labels, names,
short/long bodies, a client that disconnects mid-body, large streamed records."""

from __future__ import annotations

import os
from typing import Any

import pytest

from appliance.engine.models import RecordState
from tests.api.conftest import Harness, asgi_call, asgi_sent

API = "/api/v1"


async def write(h: Harness, path: str, data: bytes, **headers: str) -> Any:
    hdrs = {"Content-Length": str(len(data)), **headers}
    return await h.client.post(API + path, data=data, headers=hdrs)


@pytest.fixture
async def hb(h: Harness) -> Harness:
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    return h


async def test_records_write_read_roundtrip(hb: Harness) -> None:
    r = await write(
        hb, "/b/bkt/cam/1?ts=1000", b"payload", **{
            "Content-Type": "image/png", "x-reduct-label-Color": "red", "x-reduct-label-empty": "",
        }
    )
    assert r.status_code == 200
    r = await hb.client.get(API + "/b/bkt/cam/1?ts=1000")
    assert r.status_code == 200
    assert await r.get_data() == b"payload"
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["x-reduct-time"] == "1000"
    assert r.headers["x-reduct-entry"] == "cam/1"
    assert r.headers["Content-Disposition"] == "attachment"
    assert r.headers["x-reduct-label-color"] == "red"  # names are lower-cased
    assert r.headers["x-reduct-label-empty"] == ""
    assert r.headers["x-reduct-api"] == "1.21"


async def test_records_default_content_type_and_latest(hb: Harness) -> None:
    await write(hb, "/b/bkt/e?ts=1", b"a")
    await write(hb, "/b/bkt/e?ts=3", b"ccc")
    await write(hb, "/b/bkt/e?ts=2", b"bb")  # belated writes are fine
    r = await hb.client.get(API + "/b/bkt/e")
    assert r.headers["x-reduct-time"] == "3"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert await r.get_data() == b"ccc"


async def test_records_head_keeps_content_length(hb: Harness) -> None:
    await write(hb, "/b/bkt/e?ts=5", b"12345678")
    status, headers, body = await asgi_call(hb.app, "HEAD", API + "/b/bkt/e", query="ts=5")
    assert status == 200
    assert headers["content-length"] == "8"
    assert headers["x-reduct-time"] == "5"
    assert body == b""


async def test_records_parent_entries_created(hb: Harness) -> None:
    await write(hb, "/b/bkt/a/b/c?ts=1", b"x")
    body = await (await hb.client.get(API + "/b/bkt")).get_json()
    names = [e["name"] for e in body["entries"]]
    assert "a/b/c" in names


async def test_records_duplicate_ts_is_409(hb: Harness) -> None:
    await write(hb, "/b/bkt/e?ts=7", b"a")
    r = await write(hb, "/b/bkt/e?ts=7", b"b")
    assert r.status_code == 409
    assert r.headers["x-reduct-error"] == "A record with timestamp 7 already exists"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "'ts' parameter is required"),
        ("ts=abc", "'ts' must be an unix timestamp in microseconds"),
        ("ts=-1", "'ts' must be an unix timestamp in microseconds"),
        ("ts=1.5", "'ts' must be an unix timestamp in microseconds"),
        (f"ts={2**64}", "'ts' must be an unix timestamp in microseconds"),
    ],
)
async def test_records_bad_ts_is_422(hb: Harness, query: str, message: str) -> None:
    r = await write(hb, f"/b/bkt/e?{query}", b"a")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == message
    r = await hb.client.get(API + f"/b/bkt/e?{query}") if query else None
    if r is not None:
        assert r.status_code == 422


async def test_records_content_length_required_and_numeric(hb: Harness) -> None:
    status, headers, _ = await asgi_call(hb.app, "POST", API + "/b/bkt/e", query="ts=1")
    assert status == 422
    assert headers["x-reduct-error"] == "content-length header is required"
    status, headers, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e", query="ts=1", headers={"content-length": "x1"},
        chunks=[b"a"],
    )
    assert status == 422
    assert headers["x-reduct-error"] == "content-length header must be a number"


async def test_records_x_reduct_content_length_fallback(hb: Harness) -> None:
    status, _, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e", query="ts=1",
        headers={"x-reduct-content-length": "3"}, chunks=[b"ab", b"c"],
    )
    assert status == 200
    assert await (await hb.client.get(API + "/b/bkt/e?ts=1")).get_data() == b"abc"


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
async def test_records_short_body_is_400_and_not_finished(hb: Harness, size: int) -> None:
    status, headers, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e", query="ts=1",
        headers={"content-length": str(size)}, chunks=[b"x" * (size // 2)],
    )
    assert status == 400
    assert headers["x-reduct-error"] == "Content is smaller than in content-length"
    await assert_not_finished(hb, 1)


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
async def test_records_long_body_is_400_and_not_finished(hb: Harness, size: int) -> None:
    status, headers, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e", query="ts=1",
        headers={"content-length": str(size)}, chunks=[b"x" * size, b"extra"],
    )
    assert status == 400
    assert headers["x-reduct-error"] == "Content is bigger than in content-length"
    await assert_not_finished(hb, 1)


async def assert_not_finished(h: Harness, ts: int) -> None:
    """The record at ``ts`` is errored or absent, and the entry still takes writes."""
    r = await h.client.get(API + f"/b/bkt/e?ts={ts}")
    assert r.status_code in (404, 500), r.status_code
    storage = h.services.storage
    try:
        meta = storage.get_bucket("bkt").get_entry("e").get_record(ts)
    except Exception:  # noqa: BLE001 - absent is fine
        meta = None
    assert meta is None or meta.state != RecordState.FINISHED
    r = await write(h, f"/b/bkt/e?ts={ts + 1000}", b"next")
    assert r.status_code == 200


@pytest.mark.parametrize("size", [100, 4 * 1024 * 1024])
async def test_records_client_disconnect_mid_body(hb: Harness, size: int) -> None:
    status, _, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/e", query="ts=1",
        headers={"content-length": str(size)}, chunks=[b"x" * (size // 2)], disconnect=True,
    )
    assert status in (0, 400)  # no response at all, or a 400 for the short body
    await assert_not_finished(hb, 1)


async def test_records_large_record_streams_both_ways(hb: Harness) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    status, _, _ = await asgi_call(
        hb.app, "POST", API + "/b/bkt/big", query="ts=9",
        headers={"content-length": str(len(data)), "x-reduct-label-k": "v"}, chunks=chunks,
    )
    assert status == 200
    status, headers, body = await asgi_call(hb.app, "GET", API + "/b/bkt/big", query="ts=9")
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert body == data
    status, headers, body = await asgi_call(hb.app, "HEAD", API + "/b/bkt/big")
    assert headers["content-length"] == str(len(data)) and body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/b/bkt/a/../b",
        "/b/bkt/..",
        "/b/bkt/a/%2e%2e/b",
        "/b/bkt/a\x00b",
        "/b/bkt/$x",
        "/b/bkt/a$b",
        "/b/bkt/a//b",
        "/b/bkt/.hidden",
        "/b/b$kt/e",
        "/b/../e",
    ],
)
async def test_records_bad_names_are_422(hb: Harness, path: str) -> None:
    from urllib.parse import unquote

    # Servers decode %XX before routing; send the decoded path as the ASGI scope has it.
    status, headers, _ = await asgi_call(
        hb.app, "POST", API + unquote(path), query="ts=1",
        headers={"content-length": "1"}, chunks=[b"x"],
    )
    assert status == 422, (path, status, headers.get("x-reduct-error"))
    status, _, _ = await asgi_call(hb.app, "GET", API + unquote(path), query="ts=1")
    assert status == 422


async def test_records_missing_bucket_entry_record(hb: Harness) -> None:
    r = await hb.client.get(API + "/b/nope/e")
    assert r.status_code == 404 and r.headers["x-reduct-error"] == "Bucket 'nope' is not found"
    r = await hb.client.get(API + "/b/bkt/e")
    assert r.status_code == 404 and r.headers["x-reduct-error"] == (
        "Entry 'e' not found in bucket 'bkt'"
    )
    await write(hb, "/b/bkt/e?ts=1", b"a")
    r = await hb.client.get(API + "/b/bkt/e?ts=2")
    assert r.status_code == 404 and r.headers["x-reduct-error"] == (
        "Record 2 not found in entry bkt/e"
    )
    r = await write(hb, "/b/nope/e?ts=1", b"a")
    assert r.status_code == 404


async def test_records_update_labels(hb: Harness) -> None:
    await write(hb, "/b/bkt/e?ts=1", b"a", **{"x-reduct-label-a": "1", "x-reduct-label-b": "2"})
    r = await hb.client.patch(
        API + "/b/bkt/e?ts=1", headers={"x-reduct-label-a": "9", "x-reduct-label-b": "",
                                         "x-reduct-label-c": "3"},
    )
    assert r.status_code == 200
    r = await hb.client.get(API + "/b/bkt/e?ts=1")
    labels = {k[len("x-reduct-label-"):]: v for k, v in r.headers.items()
              if k.lower().startswith("x-reduct-label-")}
    assert labels == {"a": "9", "c": "3"}
    r = await hb.client.patch(API + "/b/bkt/e?ts=2", headers={"x-reduct-label-a": "1"})
    assert r.status_code == 404
    r = await hb.client.patch(API + "/b/bkt/e", headers={"x-reduct-label-a": "1"})
    assert r.status_code == 422


async def test_records_remove_record_and_entry(hb: Harness) -> None:
    await write(hb, "/b/bkt/e?ts=1", b"a")
    await write(hb, "/b/bkt/e?ts=2", b"b")
    await write(hb, "/b/bkt/e/child?ts=2", b"b")
    assert (await hb.client.delete(API + "/b/bkt/e?ts=1")).status_code == 200
    assert (await hb.client.get(API + "/b/bkt/e?ts=1")).status_code == 404
    r = await hb.client.delete(API + "/b/bkt/e?ts=1")
    assert r.status_code == 404
    r = await hb.client.delete(API + "/b/bkt/e?x=1")
    assert r.status_code == 422  # a query string means record removal: ts is required
    assert (await hb.client.delete(API + "/b/bkt/e")).status_code == 200
    body = await (await hb.client.get(API + "/b/bkt")).get_json()
    assert body["entries"] == []
    r = await hb.client.delete(API + "/b/bkt/e")
    assert r.status_code == 404


async def test_records_rename_entry(hb: Harness) -> None:
    await write(hb, "/b/bkt/old?ts=1", b"a")
    r = await hb.client.put(API + "/b/bkt/old/rename", json={"new_name": "new/name"})
    assert r.status_code == 200
    assert (await hb.client.get(API + "/b/bkt/new/name?ts=1")).status_code == 200
    r = await hb.client.put(API + "/b/bkt/new/name/rename", json={"new_name": "bad$name"})
    assert r.status_code == 422
    r = await hb.client.put(API + "/b/bkt/missing/rename", json={"new_name": "x"})
    assert r.status_code == 404
    r = await hb.client.put(API + "/b/bkt/new/name", json={"new_name": "x"})
    assert r.status_code == 404 and r.headers["x-reduct-error"] == "Not found"
    r = await hb.client.put(API + "/b/bkt/new/name/rename", data=b"{oops")
    assert r.status_code == 422


async def test_records_meta_entry_rules(hb: Harness) -> None:
    r = await write(hb, "/b/bkt/e/$meta?ts=1", b"{}", **{"x-reduct-label-key": "k"})
    assert r.status_code == 200
    r = await hb.client.delete(API + "/b/bkt/e/$meta?ts=1")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"].startswith("Can't delete records from system entry")
    r = await hb.client.delete(API + "/b/bkt/e/$meta")
    assert r.status_code == 422
    body = await (await hb.client.get(API + "/b/bkt")).get_json()
    assert [e["name"] for e in body["entries"]] == ["e"]  # the parent; $meta is hidden


@pytest.mark.parametrize("size", [5, 20 * 1024, 300 * 1024])  # inline, one hop, streamed
async def test_records_write_answers_200_in_one_body_message(hb: Harness, size: int) -> None:
    """A stored record's 200: the same headers as ever (a content length of 0, no content
    type, the API version), sent as a start and a single final body message."""
    data = os.urandom(size)
    sent = await asgi_sent(hb.app, "POST", API + "/b/bkt/e", query="ts=7", chunks=[data],
                           headers={"content-length": str(size)})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    start, body = sent
    assert start["status"] == 200
    assert sorted(start["headers"]) == [
        (b"content-length", b"0"), (b"server", b"ReductStore 1.21.0"), (b"x-reduct-api", b"1.21"),
    ]
    assert body.get("body", b"") == b"" and not body.get("more_body", False)
    r = await hb.client.get(API + "/b/bkt/e?ts=7")
    assert await r.get_data() == data
