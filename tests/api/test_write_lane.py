"""The write lane (``api/write_lane.py``): single-record writes answered below Quart, with the
same status, headers and body as Quart answers them, errors included, the same record stored
(or not), and every request the lane does not take reaching Quart with nothing read."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance import metrics
from appliance.api import records
from appliance.api.connection import DRAIN_LIMIT_BYTES, POLICY_KEY
from appliance.api.write_lane import LANE_ENV, WriteLane
from appliance.engine.models import RecordState
from appliance.errors import InternalError
from appliance.sizes import SMALL_RECORD_BYTES
from tests.api.conftest import AUTH, TOKEN, Harness, asgi_scope

API = "/api/v1"
CHUNK = 64 * 1024
Headers = list[tuple[bytes, bytes]]


class Sent:
    """What one request got: every message the app sent and the body messages it left."""

    def __init__(self, messages: list[dict[str, Any]], unread: int) -> None:
        self.messages = messages
        self.unread = unread  # request messages never taken from the server's queue

    @property
    def answer(self) -> tuple[int, Headers, bytes] | None:
        """(status, header pairs as sent, the whole body), None if nothing was sent."""
        start = next((m for m in self.messages if m["type"] == "http.response.start"), None)
        if start is None:
            return None
        body = b"".join(m.get("body", b"") for m in self.messages
                        if m["type"] == "http.response.body")
        return start["status"], list(start["headers"]), body

    @property
    def closes(self) -> bool:
        """True if the answer tells the client the connection closes."""
        answer = self.answer
        return answer is not None and (b"connection", b"close") in answer[1]


async def post(
    app: Any, path: str, *, query: str = "ts=1", headers: Headers | None = None,
    chunks: list[bytes] | None = None, end: bool = True, disconnect: bool = False,
    queued: bool = True, version: str = "1.1", after_answer: list[bytes] | None = None,
) -> Sent:
    """One request into the ASGI app, its messages in a queue as Hypercorn hands them over
    (``receive`` is the queue's ``get``; ``queued=False`` hides the queue behind a plain
    coroutine). ``end``: the body's last message comes; else the client stays silent (or
    goes, with ``disconnect``, also after a whole body). ``after_answer``: the body the
    client sends, with its end, once it has the answer's body (a client waiting for an early
    refusal)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for chunk in chunks or []:
        queue.put_nowait({"type": "http.request", "body": chunk, "more_body": True})
    if end:
        queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    if disconnect:
        queue.put_nowait({"type": "http.disconnect"})

    async def hidden() -> dict[str, Any]:
        return await queue.get()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if after_answer is not None and message["type"] == "http.response.body":
            if message.get("body"):
                for chunk in after_answer:
                    queue.put_nowait({"type": "http.request", "body": chunk, "more_body": True})
                queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    scope = asgi_scope("POST", path, query=query.encode(), headers=headers, http_version=version)
    await app(scope, queue.get if queued else hidden, send)
    return Sent(sent, queue.qsize())


def length(n: int, *more: tuple[bytes, bytes]) -> Headers:
    """A ``content-length`` of ``n`` and ``more`` headers."""
    return [(b"content-length", str(n).encode()), *more]


def pieces(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]


class Pair:
    """Two apps on their own data, one with the lane and one without, given the same
    requests; the lane's results (its route, or None for a request it left to Quart)."""

    def __init__(self, on: Harness, off: Harness) -> None:
        self.on, self.off = on, off
        lane: WriteLane = on.app.extensions[POLICY_KEY].write_lane
        assert lane is not None and off.app.extensions[POLICY_KEY].write_lane is None
        self.results: list[str | None] = []
        serve = lane.serve

        async def spy(*args: Any) -> str | None:
            result = await serve(*args)
            self.results.append(result)
            return result

        lane.serve = spy  # type: ignore[method-assign]

    async def both(self, path: str, **kwargs: Any) -> tuple[Sent, Sent]:
        """The same request to both apps: (with the lane, without)."""
        return await post(self.on.app, API + path, **kwargs), await post(
            self.off.app, API + path, **kwargs)

    async def same(self, path: str, *, taken: bool, **kwargs: Any) -> Sent:
        """The request answered alike by both apps, taken by the lane or not."""
        before = len(self.results)
        with_lane, without = await self.both(path, **kwargs)
        assert with_lane.answer == without.answer
        assert with_lane.unread == without.unread
        assert self.results[before:] == ([self.lane_route] if taken else [None])
        return with_lane

    @property
    def lane_route(self) -> str:
        return self.on.app.extensions[POLICY_KEY].write_lane.route  # type: ignore[no-any-return]

    async def stored(self, entry: str, ts: int) -> Any:
        """The record as both apps read it back: (status, content type, labels, body)."""
        got = []
        for h in (self.on, self.off):
            r = await h.client.get(API + f"/b/bkt/{entry}?ts={ts}", headers=AUTH)
            labels = sorted((k, v) for k, v in r.headers.items() if k.startswith("x-reduct-label"))
            got.append((r.status_code, r.headers.get("content-type"), labels,
                        await r.get_data()))
        assert got[0] == got[1]
        return got[0]


PairFactory = Callable[..., Awaitable[Pair]]


@pytest.fixture
def make_pair(harness_factory: Any, monkeypatch: pytest.MonkeyPatch) -> PairFactory:
    """Build a ``Pair`` on the given settings, each app with bucket ``bkt``."""

    async def factory(**settings: Any) -> Pair:
        on = await harness_factory(**settings)
        monkeypatch.setenv(LANE_ENV, "off")
        off = await harness_factory(**settings)
        monkeypatch.delenv(LANE_ENV)
        for h in (on, off):
            assert (await h.client.post(API + "/b/bkt", headers=AUTH)).status_code == 200
        return Pair(on, off)

    return factory


@pytest.fixture
async def pair(make_pair: PairFactory) -> Pair:
    return await make_pair()


@pytest.mark.parametrize("size", [0, 3, 20 * 1024, SMALL_RECORD_BYTES + 1, 1024 * 1024 + 5])
async def test_lane_stores_as_quart(pair: Pair, size: int) -> None:
    """Inline, one-hop and streamed records: the same 200 and the same record."""
    data = os.urandom(size)
    headers = length(size, (b"content-type", b"image/jpeg"), (b"x-reduct-label-Cam", b" front "),
                     (b"x-reduct-label-n", "é".encode()))
    sent = await pair.same("/b/bkt/e", query="ts=5", headers=headers, chunks=pieces(data),
                           taken=True)
    answer = sent.answer
    assert answer is not None and answer[0] == 200 and answer[2] == b""
    assert sorted(answer[1]) == [
        (b"content-length", b"0"), (b"server", b"ReductStore 1.21.0"), (b"x-reduct-api", b"1.21"),
    ]
    status, ctype, labels, body = await pair.stored("e", 5)
    assert (status, ctype, body) == (200, "image/jpeg", data)
    assert labels == [("x-reduct-label-cam", "front"), ("x-reduct-label-n", "é")]


@pytest.mark.parametrize("size", [3, 20 * 1024, SMALL_RECORD_BYTES + 1])
async def test_lane_refusals_by_the_engine_answer_as_quart(pair: Pair, size: int) -> None:
    """A taken timestamp (409) and a missing bucket (404): the same error, the record kept."""
    data = os.urandom(size)
    await pair.same("/b/bkt/e", query="ts=1", headers=length(3), chunks=[b"one"], taken=True)
    sent = await pair.same("/b/bkt/e", query="ts=1", headers=length(size), chunks=pieces(data),
                           taken=True)
    assert sent.answer is not None and sent.answer[0] == 409
    assert (await pair.stored("e", 1))[3] == b"one"
    sent = await pair.same("/b/nothing/e", headers=length(size), chunks=pieces(data), taken=True)
    assert sent.answer is not None and sent.answer[0] == 404
    assert sent.answer[2].startswith(b'{"detail": "Bucket')


@pytest.mark.parametrize("size", [10, SMALL_RECORD_BYTES + 10])
async def test_lane_bad_bodies_answer_as_quart(pair: Pair, size: int) -> None:
    """A body shorter or longer than its content-length: the same 400, no record."""
    short = await pair.same("/b/bkt/e", query="ts=2", headers=length(size),
                            chunks=pieces(b"x" * (size // 2)), taken=True)
    assert short.answer is not None and short.answer[0] == 400
    assert (b"x-reduct-error", b"Content is smaller than in content-length") in short.answer[1]
    long = await pair.same("/b/bkt/e", query="ts=3", headers=length(size),
                           chunks=[*pieces(b"x" * size), b"extra"], taken=True)
    assert long.answer is not None and long.answer[0] == 400
    assert (b"x-reduct-error", b"Content is bigger than in content-length") in long.answer[1]
    for ts in (2, 3):
        assert (await pair.stored("e", ts))[0] in (404, 500)
    await pair.same("/b/bkt/e", query="ts=4", headers=length(2), chunks=[b"ok"], taken=True)


async def test_lane_silent_client_gets_quarts_timeout(make_pair: PairFactory) -> None:
    """A client that stops mid-body: 400 ``Timeout while receiving data`` from both."""
    pair = await make_pair(io_operation_timeout=0.2)
    for size in (10, SMALL_RECORD_BYTES + 10):
        sent = await pair.same("/b/bkt/e", query=f"ts={size}", headers=length(size),
                               chunks=[b"x" * 5], end=False, taken=True)
        assert sent.answer is not None and sent.answer[0] == 400
        assert (b"x-reduct-error", b"Timeout while receiving data") in sent.answer[1]
        assert not sent.closes  # a short rest: drained (here: given up on), as Quart does


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024])
async def test_lane_client_gone_mid_body_leaves_no_record(pair: Pair, size: int) -> None:
    """A disconnect mid-body: no answer and no finished record; the entry takes writes."""
    for app in (pair.on.app, pair.off.app):
        sent = await post(app, API + "/b/bkt/e", query="ts=1", headers=length(size),
                          chunks=pieces(b"x" * (size // 2)), end=False, disconnect=True)
        assert sent.answer is None or sent.answer[0] == 400
    assert pair.results == [pair.lane_route]
    for h in (pair.on, pair.off):
        meta = None
        try:
            meta = h.services.storage.get_bucket("bkt").get_entry("e").get_record(1)
        except Exception:  # noqa: BLE001 - absent is fine
            pass
        assert meta is None or meta.state != RecordState.FINISHED
    await pair.same("/b/bkt/e", query="ts=2", headers=length(2), chunks=[b"ok"], taken=True)


async def test_lane_early_refusal_closes_or_drains_as_quart(pair: Pair) -> None:
    """A refusal before the body: a rest beyond the drain limit closes the connection
    (nothing read), a smaller one is read to its end after the answer (connection kept)."""
    await pair.same("/b/bkt/e", query="ts=1", headers=length(1), chunks=[b"1"], taken=True)
    # No body byte yet and none ever: the record is opened first and refused at once.
    big = DRAIN_LIMIT_BYTES + 1
    sent = await pair.same("/b/bkt/e", query="ts=1", headers=length(big), chunks=[],
                           end=False, queued=False, taken=True)
    assert sent.answer is not None and sent.answer[0] == 409 and sent.closes
    # A smaller body, all of it sent: refused, then drained to its end.
    size = 2 * 1024 * 1024
    sent = await pair.same("/b/bkt/e", query="ts=1", headers=length(size),
                           chunks=pieces(b"x" * size), queued=False, taken=True)
    assert sent.answer is not None and sent.answer[0] == 409
    assert not sent.closes and sent.unread == 0
    # A client that sends its body only once it has the whole answer (it must get it first).
    sent = await pair.same("/b/nothing/e", query="ts=1", headers=length(size), chunks=[],
                           end=False, queued=False, after_answer=pieces(b"x" * size),
                           taken=True)
    assert sent.answer is not None and sent.answer[0] == 404
    assert not sent.closes and sent.unread == 0


@pytest.mark.parametrize(("path", "query", "headers", "kwargs"), [
    ("/b/bkt/e", "", length(2), {}),  # no ts
    ("/b/bkt/e", "ts=abc", length(2), {}),
    ("/b/bkt/e", "ts=99999999999999999999999", length(2), {}),  # past u64
    ("/b/bkt/e", "ts=1&x=2", length(2), {}),  # another parameter: werkzeug's to parse
    ("/b/bkt/e", "ts=%31", length(2), {}),  # an escape
    ("/b/bkt/e", "ts=1", [], {}),  # no content-length
    ("/b/bkt/e", "ts=1", [(b"x-reduct-content-length", b"2")], {}),
    ("/b/bkt/e", "ts=1", length(2, (b"expect", b"100-continue")), {}),
    ("/b/bkt/e", "ts=1", [(b"transfer-encoding", b"chunked")], {}),
    ("/b/bkt/e", "ts=1", length(2), {"version": "1.0"}),
    ("/b/bkt/e", "ts=1", [(b"content-length", b"x")], {}),
    ("/b/b%40d/e", "ts=1", length(2), {}),  # a bad bucket name
    ("/b/bkt/e/", "ts=1", length(2), {}),  # a bad entry name
    ("/b/bkt/a//b", "ts=1", length(2), {}),
    ("/b/bkt/e/batch", "ts=1", length(2), {}),  # batch v1: its own handler
    ("/b/bkt/e/q", "ts=1", length(2), {}),  # a query
    ("/b/bkt", "ts=1", length(2), {}),  # the bucket itself
])
async def test_unusual_requests_take_quart(
    pair: Pair, path: str, query: str, headers: Headers, kwargs: dict[str, Any]
) -> None:
    """Anything but the plain case reaches Quart with nothing read, and is answered alike."""
    sent = await pair.same(path, query=query, headers=headers, chunks=[b"ok"], taken=False,
                           **kwargs)
    assert sent.answer is not None


async def test_refused_callers_take_quart(make_pair: PairFactory) -> None:
    """No token, a wrong one, a read-only one: Quart's 401 and 403, nothing stored."""
    pair = await make_pair(api_token=TOKEN)
    statuses = []
    for token in (None, "Bearer wrong", "Basic x"):
        headers = length(2) if token is None else length(2, (b"authorization", token.encode()))
        sent = await pair.same("/b/bkt/e", headers=headers, chunks=[b"ok"], taken=False)
        statuses.append(sent.answer[0] if sent.answer else 0)
    assert statuses == [401, 401, 401]
    # Each app's reader token has its own value: the same refusal, compared by hand.
    answers = []
    for h in (pair.on, pair.off):
        r = await h.client.post(API + "/tokens/reader", headers=AUTH,
                                json={"full_access": False, "read": ["bkt"], "write": []})
        assert r.status_code == 200
        value = (await r.get_json())["value"]
        sent = await post(h.app, API + "/b/bkt/e", query="ts=1", chunks=[b"ok"],
                          headers=length(2, (b"authorization", f"Bearer {value}".encode())))
        answers.append(sent.answer)
    assert answers[0] == answers[1]
    assert answers[0] is not None and answers[0][0] == 403
    assert pair.results[-1] is None
    assert (await pair.stored("e", 1))[0] == 404
    sent = await pair.same("/b/bkt/e", headers=length(2, (b"authorization",
                                                          f"Bearer {TOKEN}".encode())),
                           chunks=[b"ok"], taken=True)
    assert sent.answer is not None and sent.answer[0] == 200


async def test_replica_writes_take_quart(make_pair: PairFactory, tmp_path: Any) -> None:
    """A read-only instance refuses writes in the roles check: Quart's 403."""
    pair = await make_pair()
    for h in (pair.on, pair.off):
        h.services.fence.read_only_reason = lambda: "read-only for the test"
    sent = await pair.same("/b/bkt/e", headers=length(2), chunks=[b"ok"], taken=False)
    assert sent.answer is not None and sent.answer[0] == 403


async def test_lease_holder_writes_take_quart(make_pair: PairFactory) -> None:
    """A lease holder's writes go through Quart, whose hooks check the lease before the write
    and again before its 200 (``roles/write_fence.py``)."""
    pair = await make_pair(instance_role="PRIMARY", lock_file_ttl="2s",
                           lock_file_polling_interval="100ms", lock_file_timeout=0)
    assert pair.on.services.fence.timed
    sent = await pair.same("/b/bkt/e", headers=length(2), chunks=[b"ok"], taken=False)
    assert sent.answer is not None and sent.answer[0] == 200


@pytest.mark.parametrize(("error", "logged"), [
    (InternalError("disk on fire"), "request failed: disk on fire"),
    (RuntimeError("bug"), "unexpected error in POST /api/v1/b/bkt/e"),
])
async def test_lane_failures_are_answered_and_logged_as_quart(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    error: Exception, logged: str,
) -> None:
    """A server-side failure: the same 500 (never the exception's text for an unexpected
    one), and the operator's log line, once for each app."""

    def fail(*args: Any) -> bool:
        raise error

    monkeypatch.setattr(records, "_write_inline", fail)
    with caplog.at_level(logging.ERROR, logger="appliance.app"):
        sent = await pair.same("/b/bkt/e", headers=length(2), chunks=[b"ok"], taken=True)
    assert sent.answer is not None and sent.answer[0] == 500
    assert [r.getMessage() for r in caplog.records if r.name == "appliance.app"] == [logged] * 2


async def test_lane_writes_are_audited_and_counted(make_pair: PairFactory) -> None:
    """The lane's answers go to the ``$system`` audit and the request metrics as Quart's."""
    pair = await make_pair(system_events_flush_interval=3600)
    done: list[list[Any]] = []
    for h in (pair.on, pair.off):
        events = h.services.events
        assert events.enabled
        seen: list[Any] = []
        done.append(seen)

        def spy(*args: Any, seen: list[Any] = seen, original: Any = events.request_done) -> None:
            seen.append(args[:7])  # all but the duration
            original(*args)

        events.request_done = spy  # type: ignore[method-assign]
    before = requests_counted(200), requests_counted(409)
    await pair.same("/b/bkt/e", query="ts=2", headers=length(2), chunks=[b"ok"], taken=True)
    await pair.same("/b/bkt/e", query="ts=2", headers=length(3), chunks=[b"dup"], taken=True)
    assert (requests_counted(200), requests_counted(409)) == (before[0] + 2, before[1] + 2)
    assert done[0] == done[1]
    assert [args[3] for args in done[0]] == [200, 409]
    assert done[0][0] == ("AUTHENTICATION-DISABLED", "POST", API + "/b/bkt/e", 200,
                          "127.0.0.1", 2, 0)


def requests_counted(status: int) -> float:
    """The request counter of POSTs on the entry route with ``status``."""
    value = metrics.REGISTRY.get_sample_value(
        "reduct_http_requests_total",
        {"method": "POST", "route": "/api/v1/b/<bucket>/<path:rest>", "status": str(status)},
    )
    return value or 0.0


def test_the_knob() -> None:
    from appliance.api.read_lane import lane_enabled

    assert lane_enabled({}, LANE_ENV)
    assert not lane_enabled({LANE_ENV: "off"}, LANE_ENV)
    assert lane_enabled({LANE_ENV: "off"})  # the read lane's knob is its own


async def test_the_lane_follows_the_base_path(harness_factory: Any) -> None:
    """Under ``RS_API_BASE_PATH`` the lane takes the prefixed path (and only that one)."""
    h = await harness_factory(api_base_path="/edge/")
    lane: WriteLane = h.app.extensions[POLICY_KEY].write_lane
    results: list[str | None] = []
    serve = lane.serve

    async def spy(*args: Any) -> str | None:
        results.append(await serve(*args))
        return results[-1]

    lane.serve = spy  # type: ignore[method-assign]
    assert (await h.client.post("/edge" + API + "/b/bkt")).status_code == 200
    sent = await post(h.app, "/edge" + API + "/b/bkt/e", headers=length(2), chunks=[b"ok"])
    assert sent.answer is not None and sent.answer[0] == 200
    sent = await post(h.app, API + "/b/bkt/e", headers=length(2), chunks=[b"ok"])
    assert sent.answer is not None and sent.answer[0] == 405  # no such route: Quart's answer
    assert results == [None, "/edge/api/v1/b/<bucket>/<path:rest>", None]
    r = await h.client.get("/edge" + API + "/b/bkt/e?ts=1")
    assert await r.get_data() == b"ok"


async def test_lane_answers_carry_cors_headers_as_quart(make_pair: PairFactory) -> None:
    """An allowed ``Origin`` gets the same CORS headers on the lane's 200 and errors."""
    pair = await make_pair(cors_allow_origin="http://console.example")
    origin = (b"origin", b"http://console.example")
    for chunks, status in (([b"ok"], 200), ([b"ok"], 409), ([b"o"], 400)):
        sent = await pair.same("/b/bkt/e", headers=length(2, origin), chunks=chunks, taken=True)
        assert sent.answer is not None and sent.answer[0] == status
        assert (b"access-control-allow-origin", b"http://console.example") in sent.answer[1]


@pytest.mark.parametrize("size", [2, 20 * 1024, SMALL_RECORD_BYTES + 1])
async def test_client_gone_after_its_whole_body_finds_its_record_stored(
    pair: Pair, size: int
) -> None:
    """Once the whole body is in, the lane does not look for the disconnect that follows: the
    record is stored (and the answer goes to a connection the server has closed)."""
    data = os.urandom(size)
    sent = await post(pair.on.app, API + "/b/bkt/e", query="ts=3", headers=length(size),
                      chunks=pieces(data), disconnect=True)
    assert pair.results == [pair.lane_route]
    assert sent.answer is not None and sent.answer[0] == 200
    assert sent.unread == 1  # the disconnect, never taken
    r = await pair.on.client.get(API + "/b/bkt/e?ts=3")
    assert r.status_code == 200 and await r.get_data() == data
