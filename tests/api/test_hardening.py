"""Hostile input and concurrent removals at the HTTP API (issue 8, items 1, 3 and 4).

Every limit is refused with a 4xx and ReductStore's error shape before anything touches the
disk; queries skip records removed while they read and never fail a batch for it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.engine import Entry
from appliance.query.handle import Query
MAX_NAME_BYTES = 255  # the limits chosen in appliance/engine/names.py
MAX_ENTRY_SEGMENTS = 32
from tests.api.conftest import AUTH, Harness

API = "/api/v1"


@pytest.fixture
async def hb(h: Harness) -> Harness:
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    assert (await h.client.post(API + "/b/bkt/keep?ts=1", data=b"kept", headers=cl(b"kept"))).status_code == 200
    return h


def cl(data: bytes) -> dict[str, str]:
    """The Content-Length header the test client does not add by itself."""
    return {"Content-Length": str(len(data))}


def entries_on_disk(h: Harness, bucket: str = "bkt") -> set[str]:
    return {e.name for e in h.services.engine.get_bucket(bucket).entries()}


async def assert_422(response: Any, fragment: str) -> None:
    assert response.status_code == 422, (response.status_code, response.headers)
    assert fragment in response.headers["x-reduct-error"]
    assert (await response.get_json())["detail"] == response.headers["x-reduct-error"]


# --- item 3: names and path segments -------------------------------------------------------------


async def test_names_over_255_bytes_are_422_for_buckets_entries_renames_and_batch_v2(
    hb: Harness,
) -> None:
    long = "a" * (MAX_NAME_BYTES + 1)
    c = hb.client
    await assert_422(await c.post(API + f"/b/{long}"), "too long")
    await assert_422(await c.post(API + f"/b/bkt/{long}?ts=1", data=b"x", headers=cl(b"x")), "too long")
    await assert_422(await c.post(API + f"/b/bkt/ok/{long}?ts=1", data=b"x", headers=cl(b"x")), "too long")
    await assert_422(await c.put(API + "/b/bkt/rename", json={"new_name": long}), "too long")
    await assert_422(
        await c.put(API + "/b/bkt/keep/rename", json={"new_name": long}), "too long"
    )
    v2 = {"x-reduct-entries": long, "x-reduct-start-ts": "1", "x-reduct-0-0": "1,text/plain"}
    await assert_422(
        await c.post(API + "/io/bkt/write", data=b"x", headers={**v2, "Content-Length": "1"}),
        "too long",
    )
    assert entries_on_disk(hb) == {"keep"}
    assert sorted(hb.services.engine.bucket_names()) == ["bkt"]
    # The limit itself is allowed.
    exact = "b" * MAX_NAME_BYTES
    assert (await c.post(API + f"/b/{exact}")).status_code == 200
    assert (await c.post(API + f"/b/bkt/{exact}?ts=1", data=b"x", headers=cl(b"x"))).status_code == 200


async def test_entry_with_too_many_segments_is_422_and_creates_nothing(hb: Harness) -> None:
    deep = "/".join(["s"] * 5000)
    r = await hb.client.post(API + f"/b/bkt/{deep}?ts=1", data=b"x", headers=cl(b"x"))
    await assert_422(r, "path segments")
    just_over = "/".join(["s"] * (MAX_ENTRY_SEGMENTS + 1))
    await assert_422(await hb.client.post(API + f"/b/bkt/{just_over}?ts=1", data=b"x", headers=cl(b"x")), "segments")
    assert entries_on_disk(hb) == {"keep"}
    at_limit = "/".join(["s"] * MAX_ENTRY_SEGMENTS)
    assert (await hb.client.post(API + f"/b/bkt/{at_limit}?ts=1", data=b"x", headers=cl(b"x"))).status_code == 200


# --- item 3: numbers, nesting, settings, tokens, directives --------------------------------------


async def test_huge_numbers_are_422_not_500(hb: Harness) -> None:
    c = hb.client
    digits = "1" * 45_000
    await assert_422(await c.post(API + f"/b/bkt/e?ts={digits}", data=b"x", headers=cl(b"x")), "unix timestamp")
    await assert_422(await c.get(API + f"/b/bkt/keep?ts={digits}"), "unix timestamp")
    await assert_422(await c.get(API + f"/b/bkt/keep/batch?q={digits}"), "must be a number")
    headers = {f"x-reduct-time-{digits}": "1,text/plain", "Content-Length": "1"}
    await assert_422(await c.post(API + "/b/bkt/e/batch", data=b"x", headers=headers), "Invalid")
    v2 = {"x-reduct-entries": "e", "x-reduct-start-ts": digits, "x-reduct-0-0": "1,text/plain"}
    await assert_422(
        await c.post(API + "/io/bkt/write", data=b"x", headers={**v2, "Content-Length": "1"}),
        "start-ts",
    )
    when = {"$gt": ["&x", "9" * 45_000]}
    r = await c.post(API + "/b/bkt/keep/q", json={"query_type": "QUERY", "when": when})
    assert r.status_code in (200, 422)  # a string constant: compared at read time
    if r.status_code == 200:
        qid = (await r.get_json())["id"]
        assert (await c.get(API + f"/b/bkt/keep/batch?q={qid}")).status_code < 500
    # Leading zeros do not count against the 20 digits of a u64.
    r = await c.post(API + f"/b/bkt/e?ts={'0' * 50_000}7", data=b"x", headers=cl(b"x"))
    assert r.status_code == 200
    assert (await c.get(API + "/b/bkt/e?ts=7")).status_code == 200


async def test_json_nested_100000_deep_and_when_3000_deep_are_422(hb: Harness) -> None:
    c = hb.client
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/b/bkt/keep/q", "/io/bkt/q", "/b/other", "/b/bkt/keep/rename"):
        method = c.put if path.endswith("rename") else c.post
        await assert_422(await method(API + path, data=deep), "recursion limit")
    when = '{"$and":[' * 3000 + '{"&a":{"$eq":1}}' + "]}" * 3000
    body = '{"query_type":"QUERY","when":' + when + "}"
    await assert_422(await c.post(API + "/b/bkt/keep/q", data=body), "recursion limit")
    await assert_422(
        await c.post(API + "/io/bkt/q", data=body.replace("QUERY", "REMOVE")), "recursion limit"
    )
    # A deep but allowed condition compiles and runs.
    when = '{"$and":[' * 60 + '{"&a":{"$eq":1}}' + "]}" * 60
    r = await c.post(API + "/b/bkt/keep/q", data='{"query_type":"QUERY","when":' + when + "}")
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    qid = (await r.get_json())["id"]
    assert (await c.get(API + f"/b/bkt/keep/batch?q={qid}")).status_code in (200, 204)
    assert (await c.get(API + "/b/bkt/keep?ts=1")).status_code == 200


async def test_json_body_over_one_mib_is_413(hb: Harness) -> None:
    body = json.dumps({"query_type": "QUERY", "pad": "x" * (1024 * 1024)})
    r = await hb.client.post(API + "/b/bkt/keep/q", data=body)
    assert r.status_code == 413
    assert "too large" in r.headers["x-reduct-error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_block_records", 0), ("max_block_size", 0), ("quota_size", -1),
     ("max_block_records", 2**64), ("max_block_size", -5)],
)
async def test_bucket_settings_out_of_range_are_422_on_create_and_update(
    hb: Harness, field: str, value: int
) -> None:
    r = await hb.client.post(API + "/b/newb", json={field: value})
    await assert_422(r, field)
    assert "newb" not in hb.services.engine.bucket_names()
    await assert_422(await hb.client.put(API + "/b/bkt", json={field: value}), field)
    r = await hb.client.get(API + "/b/bkt")
    assert (await r.get_json())["settings"]["max_block_records"] == 1024


@pytest.mark.parametrize("operator", ["$each_n", "$limit"])
async def test_negative_each_n_and_limit_are_422(hb: Harness, operator: str) -> None:
    for query_type in ("QUERY", "REMOVE"):
        r = await hb.client.post(
            API + "/b/bkt/keep/q", json={"query_type": query_type, "when": {operator: -1}}
        )
        await assert_422(r, f"not a valid operand for {operator}")
    assert (await hb.client.get(API + "/b/bkt/keep?ts=1")).status_code == 200
    r = await hb.client.post(API + "/b/bkt/keep/q", json={"query_type": "QUERY", "when": {"$limit": 0}})
    assert r.status_code == 200  # $limit 0 is meaningful: nothing


async def test_token_names_follow_the_bucket_name_rules(ha: Harness) -> None:
    body = {"full_access": True}
    for bad in ("..", ".", "a.b", "x" * (MAX_NAME_BYTES + 1)):
        r = await ha.client.post(API + f"/tokens/{bad}", json=body, headers=AUTH)
        assert r.status_code in (404, 422), bad  # `..`/`.` may be resolved by the router
        if r.status_code == 422:
            assert "Token name" in r.headers["x-reduct-error"]
    names = {t["name"] for t in (await (await ha.client.get(API + "/tokens", headers=AUTH)).get_json())["tokens"]}
    assert names == {"init-token"}
    deep = b"[" * 100_000 + b"]" * 100_000
    r = await ha.client.post(API + "/tokens/ok", data=deep, headers=AUTH)
    await assert_422(r, "recursion limit")
    assert (await ha.client.post(API + "/tokens/ok-name_1", json=body, headers=AUTH)).status_code == 200


# --- item 1: batch limits ------------------------------------------------------------------------


async def test_write_batch_over_the_record_limit_is_413_and_stores_nothing(
    harness_factory: Any,
) -> None:
    h = await harness_factory(io_batch_max_write_records=100)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    headers = {f"x-reduct-time-{ts}": "1,text/plain" for ts in range(1, 102)}
    headers["Content-Length"] = "101"
    r = await h.client.post(API + "/b/bkt/e/batch", data=b"x" * 101, headers=headers)
    assert r.status_code == 413
    assert r.headers["x-reduct-error"] == (
        "Too many records in batch: 101, at most 100 (RS_IO_BATCH_MAX_WRITE_RECORDS)"
    )
    v2 = {f"x-reduct-0-{d}": "1,text/plain" for d in range(101)}
    v2.update({"x-reduct-entries": "e", "x-reduct-start-ts": "1", "Content-Length": "101"})
    assert (await h.client.post(API + "/io/bkt/write", data=b"x" * 101, headers=v2)).status_code == 413
    removal = {f"x-reduct-time-{ts}": "" for ts in range(1, 102)}
    assert (await h.client.delete(API + "/b/bkt/e/batch", headers=removal)).status_code == 413
    assert h.services.engine.get_bucket("bkt").entries() == [] or entries_on_disk(h) == set()
    # At the limit it is written.
    del headers["x-reduct-time-101"]
    headers["Content-Length"] = "100"
    r = await h.client.post(API + "/b/bkt/e/batch", data=b"x" * 100, headers=headers)
    assert r.status_code == 200


async def test_write_batch_over_the_metadata_limit_is_413(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_metadata_size=10_000)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    headers = {f"x-reduct-time-{ts}": "1,text/plain,k=" + "v" * 200 for ts in range(1, 60)}
    headers["Content-Length"] = "59"
    r = await h.client.post(API + "/b/bkt/e/batch", data=b"x" * 59, headers=headers)
    assert r.status_code == 413
    assert "RS_IO_BATCH_MAX_METADATA_SIZE" in r.headers["x-reduct-error"]
    assert entries_on_disk(h) == set()


# --- item 4: queries while records are removed ---------------------------------------------------


async def _write(h: Harness, entry: str, count: int, size: int = 10, labels: dict[str, str] | None = None) -> None:
    for ts in range(1, count + 1):
        headers = {f"x-reduct-label-{k}": v for k, v in (labels or {}).items()}
        data = bytes([ts % 251]) * size
        r = await h.client.post(API + f"/b/bkt/{entry}?ts={ts}", data=data, headers={**headers, **cl(data)})
        assert r.status_code == 200


async def _read_all(h: Harness, entry: str) -> list[tuple[int, bytes]]:
    r = await h.client.post(API + f"/b/bkt/{entry}/q", json={"query_type": "QUERY"})
    qid = (await r.get_json())["id"]
    got: list[tuple[int, bytes]] = []
    for _ in range(100):
        r = await h.client.get(API + f"/b/bkt/{entry}/batch?q={qid}")
        assert r.status_code in (200, 204), (r.status_code, r.headers.get("x-reduct-error"))
        if r.status_code == 204:
            break
        body = await r.get_data()
        pos = 0
        stamps = sorted(
            (int(k[len("x-reduct-time-"):]), int(v.split(",")[0]))
            for k, v in r.headers.items()
            if k.lower().startswith("x-reduct-time-")
        )
        assert sum(size for _, size in stamps) == len(body)
        for ts, size in stamps:
            got.append((ts, body[pos : pos + size]))
            pos += size
        if r.headers["x-reduct-last"] == "true":
            break
    return got


async def test_batched_query_skips_records_removed_before_their_payload_is_read(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of the issue, made deterministic: records listed by the query are removed
    between listing and reading their payloads; the batch goes out without them (not 404)
    and the query goes on with the rest."""
    await _write(hb, "race", 200)
    removed: set[int] = set()

    def remove_then(original: Any) -> Any:
        def remove_then_read(self: Entry, metas: Any) -> Any:
            doomed = [m.timestamp for m in metas
                      if m.timestamp % 3 == 0 and m.timestamp not in removed]
            if doomed and self.name == "race":
                removed.update(doomed)
                self.remove_records(doomed)
            return original(self, metas)
        return remove_then_read

    # A batch of small records is read as one span first, then record by record.
    for name in ("read_run", "read_payloads"):
        monkeypatch.setattr(Entry, name, remove_then(getattr(Entry, name)))
    got = await _read_all(hb, "race")
    assert removed
    assert [ts for ts, _ in got] == [ts for ts in range(1, 201) if ts % 3]
    assert all(data == bytes([ts % 251]) * 10 for ts, data in got)


async def test_batch_whose_records_are_all_removed_continues_with_the_next(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If every record of a batch vanished, the next ones are collected: a 204 would end the
    client's query with records still to come."""
    await _write(hb, "gone", 200)
    original = Entry.read_run  # a batch of small records is read as one span first
    calls = 0

    def remove_first_batch(self: Entry, metas: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            self.remove_records([m.timestamp for m in metas])
        return original(self, metas)

    monkeypatch.setattr(Entry, "read_run", remove_first_batch)
    got = await _read_all(hb, "gone")
    assert [ts for ts, _ in got] == list(range(86, 201))  # the first batch (85) was removed


async def test_big_payload_removed_after_collection_is_still_sent_whole(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payloads too big to preload stream after the headers are sent; removing the entry in
    between (here: right after the batch is collected) must not cut the body short."""
    size = 3 * 1024 * 1024
    for ts in (1, 2):
        data = bytes([ts]) * size
        assert (await hb.client.post(API + f"/b/bkt/big?ts={ts}", data=data, headers=cl(data))).status_code == 200
    original = Query.collect_batch

    def collect_then_remove(self: Query, *args: Any) -> Any:
        batch = original(self, *args)
        hb.services.engine.get_bucket("bkt").remove_entry("big")
        return batch

    monkeypatch.setattr(Query, "collect_batch", collect_then_remove)
    r = await hb.client.post(API + "/b/bkt/big/q", json={"query_type": "QUERY"})
    qid = (await r.get_json())["id"]
    r = await hb.client.get(API + f"/b/bkt/big/batch?q={qid}")
    assert r.status_code == 200
    assert await r.get_data() == b"\x01" * size + b"\x02" * size


async def test_batched_read_headers_stay_within_the_metadata_limit(harness_factory: Any) -> None:
    limit = 20_000
    h = await harness_factory(io_batch_max_metadata_size=limit)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    await _write(h, "fat", 40, labels={"big": "v" * 2_000, "other": "w" * 500})
    for path, v2 in (("/b/bkt/fat/batch?q={}", False), ("/io/bkt/read", True)):
        url = "/b/bkt/fat/q" if not v2 else "/io/bkt/q"
        r = await h.client.post(API + url, json={"query_type": "QUERY"})
        qid = (await r.get_json())["id"]
        seen = 0
        for _ in range(50):
            if v2:
                r = await h.client.get(API + path, headers={"x-reduct-query-id": str(qid)})
            else:
                r = await h.client.get(API + path.format(qid))
            if r.status_code == 204:
                break
            assert r.status_code == 200
            record_headers = [
                (k, v) for k, v in r.headers.items()
                if k.lower().startswith("x-reduct-") and k.lower() not in ("x-reduct-api", "x-reduct-last")
            ]
            assert sum(len(k) + len(v) + 2 for k, v in record_headers) <= limit
            seen += sum(1 for k, _ in record_headers if k.lower()[-1].isdigit())
            if r.headers["x-reduct-last"] == "true":
                break
        assert seen == 40


# --- item 8: what an early answer does with the unread body --------------------------------------


def test_unread_body_decides_between_draining_and_closing() -> None:
    from appliance.api.connection import BoundedBody, declares_body, _unread_body

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"headers": list(headers)}

    body = BoundedBody(None, None)
    body.append(b"x" * 100)
    assert _unread_body(scope((b"content-length", b"1000")), body) == 900
    assert _unread_body(scope((b"transfer-encoding", b"chunked")), body) is None
    assert _unread_body(scope((b"content-length", b"1000"), (b"expect", b"100-continue")), body) is None
    assert _unread_body(scope(), body) == 0  # no length, not chunked: no body at all
    body.set_complete()
    assert _unread_body(scope((b"content-length", b"1000")), body) == 0
    assert declares_body(scope((b"content-length", b"5")))
    assert declares_body(scope((b"transfer-encoding", b"chunked")))
    assert not declares_body(scope((b"content-length", b"0")))
    assert not declares_body(scope())
