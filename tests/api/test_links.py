"""Query links in-process (spec §12): create as reduct-py 1.21 sends it, download without a
token, identity by entry+timestamp or index, Range, expiry, tampering, token removal/rotation."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from reduct.msg.bucket import CreateQueryLinkRequest, QueryEntry, QueryType

from tests.api.conftest import AUTH, Harness, asgi_call

API = "/api/v1"


@pytest.fixture
async def hl(harness_factory: Any) -> Harness:
    h = await harness_factory(api_token="s3cret-init-token", public_url="https://files.example.com/reduct")
    await h.client.post(API + "/b/bkt", headers=AUTH)
    for ts, data, tag in ((1000, b"first", "a"), (2000, b"0123456789", "b"), (3000, b"third", "a")):
        r = await h.client.post(API + f"/b/bkt/cam?ts={ts}", data=data, headers={
            **AUTH, "Content-Length": str(len(data)), "Content-Type": "text/plain",
            "x-reduct-label-tag": tag})
        assert r.status_code == 200
    return h


def link_body(**fields: Any) -> str:
    """What reduct-py 1.21's ``create_query_link`` posts."""
    values: dict[str, Any] = {
        "bucket": "bkt", "entry": "cam", "record_entry": "cam", "record_timestamp": 2000,
        "query": QueryEntry(query_type=QueryType.QUERY, entries=["cam"]),
        "expire_at": int(time.time()) + 3600,
    }
    values.update(fields)
    return CreateQueryLinkRequest(**values).model_dump_json(exclude_none=True)


async def create(h: Harness, body: str, headers: dict[str, str] | None = None,
                 name: str = "cam_2000.bin") -> Any:
    return await h.client.post(API + f"/links/{name}", data=body,
                               headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)})


async def fetch(h: Harness, link: str, headers: dict[str, str] | None = None) -> Any:
    parts = urlsplit(link)
    path = parts.path.removeprefix("/reduct")
    return await h.client.get(path + "?" + parts.query, headers=headers or {})


async def test_link_downloads_the_record_without_a_token(hl: Harness) -> None:
    r = await create(hl, link_body())
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    link = (await r.get_json())["link"]
    assert link.startswith("https://files.example.com/reduct/api/v1/links/cam_2000.bin?")
    assert {k for k, _ in parse_qsl(urlsplit(link).query)} == {"ct", "s", "i", "n"}
    assert dict(parse_qsl(urlsplit(link).query))["i"] == "init-token"
    r = await fetch(hl, link)
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    assert await r.get_data() == b"0123456789"
    assert r.headers["x-reduct-time"] == "2000" and r.headers["x-reduct-label-tag"] == "b"
    assert r.headers["Accept-Ranges"] == "bytes" and r.headers["Content-Type"] == "text/plain"
    parts = urlsplit(link)
    status, headers, body = await asgi_call(hl.app, "HEAD", parts.path.removeprefix("/reduct"),
                                            query=parts.query)
    assert (status, headers["content-length"], body) == (200, "10", b"")


async def test_link_url_params_pick_another_record_and_ranges(hl: Harness) -> None:
    link = (await (await create(hl, link_body())).get_json())["link"]
    r = await fetch(hl, link + "&e=cam&ts=3000")
    assert await r.get_data() == b"third"
    r = await fetch(hl, link + "&e=cam")
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == "Both 'e' and 'ts' parameters must be provided together"
    r = await fetch(hl, link, {"Range": "bytes=2-5"})
    assert r.status_code == 206 and await r.get_data() == b"2345"
    assert r.headers["Content-Range"] == "bytes 2-5/10"
    r = await fetch(hl, link, {"Range": "bytes=-3"})
    assert r.status_code == 206 and await r.get_data() == b"789"
    r = await fetch(hl, link, {"Range": "bytes=20-30"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */10"
    assert r.headers["x-reduct-error"] == "Range not satisfiable"


async def test_link_respects_the_query(hl: Harness) -> None:
    body = link_body(query=QueryEntry(query_type=QueryType.QUERY, entries=["cam"],
                                      when={"&tag": {"$eq": "a"}}))
    link = (await (await create(hl, body)).get_json())["link"]
    r = await fetch(hl, link)
    assert r.status_code == 404
    assert r.headers["x-reduct-error"] == "Record cam/2000 not found in query result"
    assert await (await fetch(hl, link + "&e=cam&ts=3000")).get_data() == b"third"


async def test_legacy_index_identity(hl: Harness) -> None:
    body = link_body(record_entry=None, record_timestamp=None, index=2)
    link = (await (await create(hl, body)).get_json())["link"]
    assert await (await fetch(hl, link)).get_data() == b"third"
    body = link_body(record_entry=None, record_timestamp=None, index=7)
    r = await fetch(hl, (await (await create(hl, body)).get_json())["link"])
    assert r.status_code == 404 and r.headers["x-reduct-error"] == "Record number out of range"


async def test_tampered_and_expired_links_are_refused(hl: Harness) -> None:
    link = (await (await create(hl, link_body())).get_json())["link"]
    parts = urlsplit(link)
    query = dict(parse_qsl(parts.query))
    ct = query["ct"]
    query["ct"] = ct[:-2] + ("AA" if ct[-2:] != "AA" else "BB")
    r = await fetch(hl, parts.path + "?" + urlencode(query))
    assert r.status_code == 422 and r.headers["x-reduct-error"].startswith("Failed to decrypt query")
    query = dict(parse_qsl(parts.query))
    del query["n"]
    r = await fetch(hl, parts.path + "?" + urlencode(query))
    assert r.status_code == 422 and r.headers["x-reduct-error"] == "Missing 'n' parameter"
    expired = (await (await create(hl, link_body(expire_at=int(time.time()) - 5))).get_json())["link"]
    r = await fetch(hl, expired)
    assert r.status_code == 422 and r.headers["x-reduct-error"] == "Query link has expired"


async def test_removing_or_rotating_the_issuer_invalidates_its_links(hl: Harness) -> None:
    links = {}
    for name in ("gone", "rotated", "demoted"):
        r = await hl.client.post(API + f"/tokens/{name}", headers=AUTH,
                                 json={"permissions": {"full_access": False, "read": ["bkt"]}})
        value = (await r.get_json())["value"]
        r = await create(hl, link_body(), {"Authorization": f"Bearer {value}"})
        assert r.status_code == 200, r.headers.get("x-reduct-error")
        links[name] = (await r.get_json())["link"]
        assert (await fetch(hl, links[name])).status_code == 200
    await hl.client.delete(API + "/tokens/gone", headers=AUTH)
    r = await fetch(hl, links["gone"])
    assert r.status_code == 404 and r.headers["x-reduct-error"] == "Token 'gone' doesn't exist"
    await hl.client.post(API + "/tokens/rotated/rotate", headers=AUTH)
    r = await fetch(hl, links["rotated"])
    assert r.status_code == 422 and r.headers["x-reduct-error"].startswith("Failed to decrypt")
    hl.services.tokens.remove_bucket("bkt")  # what removing the bucket does to read lists
    r = await fetch(hl, links["demoted"])
    assert r.status_code == 403
    assert r.headers["x-reduct-error"] == "Token 'demoted' doesn't have read access to bucket 'bkt'"


async def test_create_errors(hl: Harness) -> None:
    r = await create(hl, link_body(), {})
    assert r.status_code == 401
    r = await create(hl, link_body(record_timestamp=None))
    assert r.status_code == 422
    assert r.headers["x-reduct-error"] == (
        "Both 'record_entry' and 'record_timestamp' must be provided in payload or URL parameters")
    r = await create(hl, link_body(base_url="ftp:/nowhere"))
    assert r.status_code == 422 and r.headers["x-reduct-error"] == "Invalid base URL 'ftp:/nowhere'"
    r = await create(hl, link_body(bucket="missing"))
    assert r.status_code == 404
    r = await create(hl, link_body(query=QueryEntry(query_type=QueryType.REMOVE, entries=["cam"])))
    assert r.status_code == 422
    r = await create(hl, link_body(base_url="http://cdn.local:9000"))
    assert (await r.get_json())["link"].startswith("http://cdn.local:9000/api/v1/links/cam_2000.bin?")


async def test_link_works_with_auth_disabled_and_default_public_url(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    await h.client.post(API + "/b/bkt/e?ts=5", data=b"abc", headers={"Content-Length": "3"})
    body = link_body(entry="e", record_entry="e", record_timestamp=5,
                     query=QueryEntry(query_type=QueryType.QUERY, entries=["e"]))
    r = await create(h, body, {})
    link = (await r.get_json())["link"]
    assert link.startswith("http://0.0.0.0:8383/api/v1/links/")
    parts = urlsplit(link)
    r = await h.client.get(parts.path + "?" + parts.query)
    assert await r.get_data() == b"abc"
