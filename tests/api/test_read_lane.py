"""The read lane (``api/read_lane.py``): batched reads whose batch was collected ahead are
answered below Quart, byte for byte as Quart answers them, and every request the lane does not
take (refused, unusual, no batch ready) reaches Quart with nothing changed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from appliance import metrics
from appliance.api.connection import POLICY_KEY
from appliance.api.read_lane import LANE_ENV, ReadLane, lane_enabled
from tests.api.conftest import AUTH, TOKEN, Harness, asgi_scope

API = "/api/v1"
N = 40
BATCH = 7


async def call(h: Harness, path: str, *, method: str = "GET", query: str = "",
               headers: dict[str, str] | None = None, body: bytes = b"",
               ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request straight into the ASGI app: status, the header pairs as sent, the body."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = asgi_scope(method, path, query=query.encode(), headers=raw)
    await h.app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start["headers"]), data


class Spy:
    """Counts what the lane answered (its route) and what it handed to Quart (None)."""

    def __init__(self, h: Harness) -> None:
        self.lane: ReadLane = h.app.extensions[POLICY_KEY].read_lane
        self.results: list[str | None] = []
        serve = self.lane.serve

        async def spy(*args: Any) -> str | None:
            result = await serve(*args)
            self.results.append(result)
            return result

        self.lane.serve = spy  # type: ignore[method-assign]

    @property
    def answered(self) -> int:
        return sum(1 for r in self.results if r is not None)


async def fill(h: Harness, headers: dict[str, str] | None = None) -> None:
    """Entry ``e`` of bucket ``bkt``: ts 1..N, labels that cycle and carry commas and quotes,
    two content types."""
    await h.client.post(API + "/b/bkt", headers=headers)
    for ts in range(1, N + 1):
        data = b"payload-%d" % ts * (ts % 5 + 1)
        r = await h.client.post(
            API + f"/b/bkt/e?ts={ts}", data=data,
            headers={**(headers or {}), "Content-Length": str(len(data)),
                     "Content-Type": "text/plain" if ts % 3 else "application/x-thing",
                     "x-reduct-label-n": str(ts % 4), "x-reduct-label-note": 'a,b "c"'},
        )
        assert r.status_code == 200


async def v2_query(h: Harness, headers: dict[str, str] | None = None, **extra: Any) -> int:
    r = await h.client.post(API + "/io/bkt/q", headers=headers,
                            json={"query_type": "QUERY", "entries": ["e"], **extra})
    assert r.status_code == 200
    return int((await r.get_json())["id"])


async def v1_query(h: Harness) -> int:
    r = await h.client.post(API + "/b/bkt/e/q", json={"query_type": "QUERY"})
    assert r.status_code == 200
    return int((await r.get_json())["id"])


async def read_v2(h: Harness, qid: int, headers: dict[str, str] | None = None) -> Any:
    return await call(h, API + "/io/bkt/read",
                      headers={**(headers or {}), "x-reduct-query-id": str(qid)})


async def read_v1(h: Harness, qid: int) -> Any:
    return await call(h, API + "/b/bkt/e/batch", query=f"q={qid}")


async def settle(h: Harness) -> None:
    """Wait for every batch being collected ahead (so the next read finds it ready)."""
    for query in list(h.services.queries._queries.values()):  # noqa: SLF001 - state under test
        if query.ahead is not None:
            await asyncio.wait([query.ahead])


async def read_all(h: Harness, read: Any, qid: int) -> list[Any]:
    """Every answer of a query, up to and including its 204."""
    answers = []
    for _ in range(N + 2):
        await settle(h)
        answer = await read(h, qid)
        answers.append(answer)
        if answer[0] != 200:
            break
    return answers


def comparable(answers: list[Any]) -> list[Any]:
    """Answers without the one header that differs between two runs (Quart adds none, but a
    server would add a date)."""
    return [(s, [p for p in hs if p[0] != b"date"], b) for s, hs, b in answers]


@pytest.mark.parametrize("protocol", ["v2", "v1"])
async def test_lane_answers_byte_for_byte_as_quart(
    harness_factory: Any, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    monkeypatch.setenv(LANE_ENV, "off")
    plain = await harness_factory(io_batch_max_records=BATCH)
    monkeypatch.delenv(LANE_ENV)
    laned = await harness_factory(io_batch_max_records=BATCH)
    assert plain.app.extensions[POLICY_KEY].read_lane is None
    spy = Spy(laned)
    results = []
    for h in (plain, laned):
        await fill(h)
        if protocol == "v2":
            results.append(await read_all(h, read_v2, await v2_query(h)))
        else:
            results.append(await read_all(h, read_v1, await v1_query(h)))
    assert comparable(results[0]) == comparable(results[1])
    statuses = [a[0] for a in results[1]]
    assert statuses == [200] * -(-N // BATCH) + [204]
    # The first batch is collected by Quart's handler; every later one was ready: the lane's.
    route = spy.lane.v2_route if protocol == "v2" else spy.lane.v1_route
    assert spy.results == [None] + [route] * (-(-N // BATCH) - 1) + [None]
    body = b"".join(a[2] for a in results[1])
    assert body == b"".join(b"payload-%d" % ts * (ts % 5 + 1) for ts in range(1, N + 1))


async def test_only_metadata_batches_take_the_lane(h: Harness) -> None:
    spy = Spy(h)
    await fill(h)
    qid = await v2_query(h, only_metadata=True)
    answers = await read_all(h, read_v2, qid)
    assert [a[0] for a in answers][-1] == 204
    assert all(a[2] == b"" for a in answers)
    assert all((b"content-length", b"0") in a[1] for a in answers[:-1])
    assert spy.answered == len(answers) - 2


async def test_refused_requests_reach_quart_and_leave_the_batch(harness_factory: Any) -> None:
    ha = await harness_factory(api_token=TOKEN, io_batch_max_records=BATCH)
    await fill(ha, AUTH)
    r = await ha.client.post(API + "/tokens/reader", headers=AUTH,
                             json={"permissions": {"full_access": False, "read": ["other"]}})
    stranger = {"Authorization": f"Bearer {(await r.get_json())['value']}"}
    spy = Spy(ha)
    qid = await v2_query(ha, AUTH)
    first = await read_v2(ha, qid, AUTH)
    assert first[0] == 200
    await settle(ha)
    refusals = [
        (await read_v2(ha, qid), 401),
        (await read_v2(ha, qid, {"Authorization": "Bearer wrong"}), 401),
        (await read_v2(ha, qid, stranger), 403),
        (await read_v2(ha, qid + 1000, AUTH), 404),
        (await call(ha, API + "/io/bkt/read", headers={**AUTH, "x-reduct-query-id": "x"}), 422),
        (await call(ha, API + "/io/b%ad/read", headers={**AUTH, "x-reduct-query-id": str(qid)}),
         422),
    ]
    for (status, headers, _), expected in refusals:
        assert status == expected
        assert any(name == b"x-reduct-error" for name, _ in headers)
    assert spy.answered == 0
    # Nothing was taken: the next batch is the one after the first.
    status, headers, _ = await read_v2(ha, qid, AUTH)
    assert status == 200 and spy.answered == 1
    start = int(dict(headers)[b"x-reduct-start-ts"])
    first_start = int(dict(first[1])[b"x-reduct-start-ts"])
    assert start == first_start + BATCH


async def test_unusual_requests_take_quart(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_records=BATCH)
    await fill(h)
    spy = Spy(h)
    qid = await v1_query(h)
    assert (await read_v1(h, qid))[0] == 200
    await settle(h)
    base = API + "/b/bkt/e/batch"
    unusual = [
        await call(h, base, query=f"q={qid}", method="HEAD"),  # HEAD, then a HEAD batch ahead
        await call(h, base, query="q=x"),  # not a number: Quart says 422
        await call(h, base, query=f"q={qid}&x=1"),  # another parameter
        await call(h, base, query=f"q={qid}", body=b"body"),  # a body
    ]
    assert [u[0] for u in unusual] == [200, 422, 200, 200]
    assert spy.answered == 0
    assert (await read_v1(h, qid))[0] == 200  # ready again after the last 200: the lane's
    assert spy.answered == 1


async def test_concurrent_reads_of_one_query_split_the_records(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_records=BATCH)
    await fill(h)
    qid = await v2_query(h)
    stamps: list[int] = []
    for _ in range(N):
        answers = await asyncio.gather(*(read_v2(h, qid) for _ in range(3)))
        for status, headers, _ in answers:
            if status == 200:
                pairs = dict(headers)
                start = int(pairs[b"x-reduct-start-ts"])
                stamps += [start + int(k.rsplit(b"-", 1)[1]) for k in pairs
                           if k.startswith(b"x-reduct-0-")]
        if all(a[0] == 204 for a in answers):
            break
    assert sorted(stamps) == list(range(1, N + 1))  # each record once, none lost


async def test_lane_reads_are_audited_and_counted(harness_factory: Any) -> None:
    h = await harness_factory(api_token=TOKEN, system_events_flush_interval=3600,
                              instance_name="edge-1", io_batch_max_records=BATCH,
                              cors_allow_origin="http://console.example")
    await fill(h, AUTH)
    spy = Spy(h)
    qid = await v2_query(h, AUTH)
    counted = requests_counted()
    for _ in range(3):
        await settle(h)
        status, headers, _ = await read_v2(h, qid, {**AUTH, "Origin": "http://console.example"})
        assert status == 200
        names = [name for name, _ in headers]
        assert b"x-reduct-api" in names and b"access-control-allow-origin" in names
    assert spy.answered == 2
    assert requests_counted() == counted + 3
    assert await h.services.events.flush() > 0
    bucket = h.services.storage.get_bucket("$system")  # type: ignore[union-attr]
    entry = bucket.get_entry("audit/edge-1/init-token")
    events = [e for meta in entry.iter_records(0, 2**64 - 1)
              for e in json.loads(entry.read_payload(meta))]
    reads = [(e["method"], e["path"], e["status"]) for e in events if e["path"].endswith("/read")]
    assert reads == [("GET", API + "/io/bkt/read", 200)] * 3


def requests_counted() -> float:
    """The request counter of successful v2 batched reads (process-wide, so tests compare)."""
    value = metrics.REGISTRY.get_sample_value(
        "reduct_http_requests_total",
        {"method": "GET", "route": API + "/io/<bucket>/read", "status": "200"},
    )
    return value or 0.0


def test_the_knob() -> None:
    assert lane_enabled({})
    assert lane_enabled({LANE_ENV: "on"})
    for off in ("off", "0", "false", "NO", " off "):
        assert not lane_enabled({LANE_ENV: off})


async def test_the_lane_follows_the_base_path(harness_factory: Any) -> None:
    h = await harness_factory(api_base_path="/edge/", io_batch_max_records=BATCH)
    spy = Spy(h)
    base = "/edge" + API
    await h.client.post(base + "/b/bkt")
    for ts in range(1, N + 1):
        r = await h.client.post(base + f"/b/bkt/e?ts={ts}", data=b"x",
                                headers={"Content-Length": "1"})
        assert r.status_code == 200
    r = await h.client.post(base + "/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"]})
    qid = (await r.get_json())["id"]
    statuses = []
    for _ in range(N):
        await settle(h)
        status, _, _ = await call(h, base + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)})
        statuses.append(status)
        if status != 200:
            break
    assert statuses == [200] * -(-N // BATCH) + [204]
    assert spy.answered == -(-N // BATCH) - 1
    assert spy.lane.v2_route == base + "/io/<bucket>/read"
    assert (await call(h, API + "/io/bkt/read", headers={"x-reduct-query-id": str(qid)}))[0] == 404
