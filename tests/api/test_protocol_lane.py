"""The protocol lane (``api/protocol_lane.py``): ready batched reads answered inside
Hypercorn's HTTP/1 protocol, byte for byte as the ASGI lane and Quart answer them through h11,
with Hypercorn's keep-alive rules; everything else handled by Hypercorn as before.

A real Hypercorn on loopback in the test's loop (``tests/api/live.py``) with the server's
HTTP/1 code installed (``http1.install``, the reason phrases), raw keep-alive sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.config import Config

from appliance import http1, metrics
from appliance.api import protocol_lane
from appliance.api.protocol_lane import LANE_ENV, ProtocolLane
from appliance.server import add_reason_phrases
from appliance.services import Services
from appliance.settings import Settings
from tests.api.live import live_server, port_of

TOKEN = "lane-token"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
N = 300  # records: several batches of the default 85
_DATE = re.compile(rb"\r\ndate: [^\r]*")


@pytest.fixture(autouse=True)
def server_http1() -> Any:
    """The HTTP/1 code ``server.serve`` installs (the lane's hook is part of it)."""
    already = bool(http1._installed)  # noqa: SLF001 - left as another test installed it
    installed = http1.install()
    add_reason_phrases()
    yield
    if installed and not already:
        http1.uninstall()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_path=tmp_path / "data", engine_compaction_interval=0, api_token=TOKEN)


class Counted:
    """Counts what ``ProtocolLane.answer`` took (True) and left to Hypercorn (False)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[bool] = []
        answer = ProtocolLane.answer

        async def counted(lane: ProtocolLane, protocol: Any, data: bytes) -> bool:
            taken = await answer(lane, protocol, data)
            self.results.append(taken)
            return taken

        monkeypatch.setattr(ProtocolLane, "answer", counted)

    @property
    def taken(self) -> int:
        return sum(self.results)


class Conn:
    """One keep-alive HTTP/1.1 connection spoken raw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port_of(url)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[bytes, bytes]:
        """The next response: its head (up to the blank line) and its body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(length.group(1))) if length else b""
        return head, body

    async def ask(self, data: bytes) -> tuple[bytes, bytes]:
        await self.send(data)
        return await self.response()

    async def closed_by_server(self, within: float = 5.0) -> bool:
        """True once the server closed the connection (EOF) within ``within`` seconds."""
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def v2_read(qid: int, extra: bytes = b"") -> bytes:
    return (b"GET /api/v1/io/bkt/read HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH
            + b"x-reduct-query-id: %d\r\n" % qid + extra + b"\r\n")


def v1_read(qid: int, extra: bytes = b"") -> bytes:
    return (b"GET /api/v1/b/bkt/e/batch?q=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n" % qid + AUTH
            + extra + b"\r\n")


async def fill(url: str) -> None:
    """Entry ``e``: N records, labels that cycle and carry commas and quotes, two types."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url + "/api/v1", headers=headers) as client:
        assert (await client.post("/b/bkt")).status_code == 200
        for ts in range(1, N + 1):
            r = await client.post(
                f"/b/bkt/e?ts={ts}", content=b"payload-%d" % ts * (ts % 3 + 1),
                headers={"Content-Type": "text/plain" if ts % 4 else "application/x-thing",
                         "x-reduct-label-n": str(ts % 5), "x-reduct-label-note": 'a,b "c"'},
            )
            assert r.status_code == 200, r.text


async def new_query(url: str, v2: bool) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url + "/api/v1", headers=headers) as client:
        if v2:
            r = await client.post("/io/bkt/q", json={"query_type": "QUERY", "entries": ["e"]})
        else:
            r = await client.post("/b/bkt/e/q", json={"query_type": "QUERY"})
        assert r.status_code == 200, r.text
        return int(r.json()["id"])


async def settle(services: Services) -> None:
    """Wait until no batch is being collected ahead (the next read then finds it ready)."""
    for query in list(services.queries._queries.values()):  # noqa: SLF001 - state under test
        if query.ahead is not None:
            await asyncio.wait([query.ahead])


async def read_through(url: str, services: Services, v2: bool,
                       extra: bytes = b"") -> list[tuple[bytes, bytes]]:
    """Every answer of a new query on one connection, the batch ahead ready for each read,
    up to the first that is not a 200; date lines taken out."""
    qid = await new_query(url, v2)
    conn = await Conn.open(url)
    answers = []
    try:
        for _ in range(N):
            await settle(services)
            head, body = await conn.ask(v2_read(qid, extra) if v2 else v1_read(qid, extra))
            answers.append((_DATE.sub(b"", head), body))
            if not head.startswith(b"HTTP/1.1 200 "):
                break
    finally:
        conn.close()
    return answers


@asynccontextmanager
async def filled(settings: Settings) -> AsyncIterator[tuple[str, Services]]:
    """A live server with entry ``e`` filled."""
    async with live_server(settings) as (url, services):
        await fill(url)
        yield url, services


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
async def test_same_bytes_as_hypercorn_and_the_asgi_lane(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, v2: bool
) -> None:
    counted = Counted(monkeypatch)
    async with filled(settings) as (url, services):
        ours = await read_through(url, services, v2)
    taken = counted.taken
    monkeypatch.setenv(LANE_ENV, "off")
    off = settings.model_copy(update={"data_path": tmp_path / "off"})
    async with filled(off) as (url, services):
        stock = await read_through(url, services, v2)
    assert counted.taken == taken  # the lane was off: nothing more taken
    assert len(ours) == len(stock) == N // 85 + 2  # four batches, then the 204
    # The first batch is collected by the request itself (Quart's path); every later one
    # was ready and answered in the protocol.
    assert taken == len(ours) - 2
    assert ours == stock
    assert all(head.startswith(b"HTTP/1.1 200 OK\r\n") for head, _ in ours[:-1])
    assert ours[-1][0].startswith(b"HTTP/1.1 204 ")
    assert b"x-reduct-api: " in ours[1][0] and b"\r\nserver: ReductStore" in ours[1][0]


async def test_cors_headers_and_the_date(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    counted = Counted(monkeypatch)
    cors = settings.model_copy(update={"cors_allow_origin": "http://console.example"})
    async with filled(cors) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        origin = b"Origin: http://console.example\r\n"
        await conn.ask(v2_read(qid, origin))
        await settle(services)
        head, body = await conn.ask(v2_read(qid, origin))
        conn.close()
    assert counted.taken == 1
    assert b"\r\naccess-control-allow-origin: http://console.example\r\n" in head
    assert b"\r\naccess-control-expose-headers: *\r\n" in head
    assert re.search(rb"\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", head)


@pytest.mark.parametrize(
    "case",
    ["connection close", "http/1.0", "pipelined", "percent path", "no token", "expect",
     "non-ascii path"],
)
async def test_what_it_leaves_to_hypercorn(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Requests the lane does not take are answered as before (and the batch kept for the
    next read where Quart's path keeps it)."""
    counted = Counted(monkeypatch)
    async with filled(settings) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        first = await conn.ask(v2_read(qid))
        assert first[0].startswith(b"HTTP/1.1 200 ")
        await settle(services)
        if case == "connection close":
            head, body = await conn.ask(v2_read(qid, b"Connection: close\r\n"))
            assert head.startswith(b"HTTP/1.1 200 ") and body
            assert await conn.closed_by_server()
        elif case == "http/1.0":
            head, body = await conn.ask(v2_read(qid).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            assert head.startswith(b"HTTP/1.1 200 ") and body
        elif case == "pipelined":
            await conn.send(v2_read(qid) + v2_read(qid))
            one, two = await conn.response(), await conn.response()
            assert one[0].startswith(b"HTTP/1.1 200 ") and two[0].startswith(b"HTTP/1.1 200 ")
            assert one[1] != two[1]
        elif case == "percent path":
            head, body = await conn.ask(v2_read(qid).replace(b"/bkt/", b"/%62kt/", 1))
            assert head.startswith(b"HTTP/1.1 200 ") and body
        elif case == "no token":
            head, _ = await conn.ask(v2_read(qid).replace(AUTH, b""))
            assert head.startswith(b"HTTP/1.1 401 ")
            head, body = await conn.ask(v2_read(qid))  # the batch was kept for this one
            assert head.startswith(b"HTTP/1.1 200 ") and body
        elif case == "non-ascii path":
            # Not a target h11 takes: its 400, as without the lane.
            head, _ = await conn.ask(v2_read(qid).replace(b"/bkt/", b"/bk\xfft/", 1))
            assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nconnection: close\r\n" in head
            other = await Conn.open(url)  # the server goes on
            head, body = await other.ask(v2_read(qid))
            other.close()
            assert head.startswith(b"HTTP/1.1 200 ") and body
        elif case == "expect":
            head, body = await conn.ask(v2_read(qid, b"Expect: 100-continue\r\n"))
            assert head.startswith((b"HTTP/1.1 100 ", b"HTTP/1.1 200 "))
        conn.close()
    # The one read after a refusal (no token), or on another connection, finds its batch.
    assert counted.taken == (1 if case in ("no token", "non-ascii path") else 0)


async def test_the_requests_per_connection_cap(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypercorn's ``keep_alive_max_requests``: the answer that reaches it says ``connection:
    close`` and the connection is closed, whichever path answered."""
    monkeypatch.setattr(Config, "keep_alive_max_requests", 3)
    counted = Counted(monkeypatch)
    async with filled(settings) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        heads = []
        for _ in range(3):
            head, _ = await conn.ask(v2_read(qid))
            heads.append(head)
            await settle(services)
        assert await conn.closed_by_server()
        conn.close()
    assert counted.taken == 2
    assert [b"\r\nconnection: close\r\n" in head for head in heads] == [False, False, True]


async def test_the_idle_timer(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection reading through the lane for longer than the keep-alive timeout stays
    open; once idle for the timeout, Hypercorn closes it."""
    monkeypatch.setattr(Config, "keep_alive_timeout", 1.0)
    counted = Counted(monkeypatch)
    async with filled(settings) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(4):  # 85 records each: the fourth is the last batch
            head, _ = await conn.ask(v2_read(qid))
            assert head.startswith(b"HTTP/1.1 200 ")
            await settle(services)
            await asyncio.sleep(0.6)  # 2.4 s in all: twice the timeout, never idle for it
        assert loop.time() - started > 2.2
        assert counted.taken == 3
        assert await conn.closed_by_server(within=3.0)
        conn.close()


async def test_a_batch_still_being_collected_is_waited_for(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    async with filled(settings) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        await conn.ask(v2_read(qid))
        query = services.queries._queries[qid]  # noqa: SLF001 - state under test
        ready = query.ahead
        assert ready is not None
        await asyncio.wait([ready])
        pending = asyncio.get_running_loop().create_future()
        query.ahead = pending  # as if still being collected
        answer = asyncio.create_task(conn.ask(v2_read(qid)))
        await asyncio.sleep(0.2)
        assert not answer.done()
        pending.set_result(ready.result())
        head, body = await answer
        conn.close()
    assert head.startswith(b"HTTP/1.1 200 ") and body
    assert counted.taken == 1


def read_count() -> float:
    """Batched v2 reads answered 200 so far (the request metric by route template)."""
    value = metrics.REGISTRY.get_sample_value(
        "reduct_http_requests_total",
        {"method": "GET", "route": "/api/v1/io/<bucket>/read", "status": "200"},
    )
    return value or 0.0


async def test_metrics_and_access_log(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counted = Counted(monkeypatch)
    logged = settings.model_copy(update={"access_log": True})
    async with filled(logged) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        await conn.ask(v2_read(qid))
        await settle(services)
        before = read_count()
        with caplog.at_level("INFO", logger="appliance.access"):
            head, body = await conn.ask(v2_read(qid))
            for _ in range(100):  # counted once the answer is out: just after the client has it
                if read_count() > before:
                    break
                await asyncio.sleep(0.01)
        assert read_count() == before + 1
        conn.close()
    assert counted.taken == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.access"]
    assert any('"GET /api/v1/io/bkt/read HTTP/1.1" 200 %d' % len(body) in line
               for line in lines), lines


def test_the_lane_needs_the_read_lane(monkeypatch: pytest.MonkeyPatch, settings: Settings
                                      ) -> None:
    from appliance.app import create_app
    from appliance.http1.early import EARLY_KEY

    assert EARLY_KEY in create_app(settings).extensions
    for knob in ("APPLIANCE_READ_LANE", LANE_ENV):
        with monkeypatch.context() as m:
            m.setenv(knob, "off")
            assert EARLY_KEY not in create_app(settings).extensions


async def test_a_failure_in_the_lane_leaves_the_request_to_quart(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while claiming costs neither the request nor the connection: logged, and the
    request goes the ASGI way (which answers it from the same batch)."""
    from appliance.api.read_lane import ReadLane

    counted = Counted(monkeypatch)
    claim = ReadLane.claim
    calls: list[bool] = []  # the protocol lane's calls (it passes ``sendable``)
    failed = []

    async def failing(lane: ReadLane, scope: Any, waiting: Any = None, sendable: Any = None
                      ) -> Any:
        if sendable is not None:
            calls.append(True)
            if len(calls) == 2:  # the second read, whose batch is ready
                failed.append(True)
                raise RuntimeError("boom")
        return await claim(lane, scope, waiting, sendable)

    monkeypatch.setattr(ReadLane, "claim", failing)
    async with filled(settings) as (url, services):
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        await conn.ask(v2_read(qid))
        await settle(services)
        with caplog.at_level("ERROR", logger="appliance.api.protocol_lane"):
            head, body = await conn.ask(v2_read(qid))
        await settle(services)
        again, _ = await conn.ask(v2_read(qid))  # the same connection, the lane again
        conn.close()
    assert failed and head.startswith(b"HTTP/1.1 200 ") and body
    assert again.startswith(b"HTTP/1.1 200 ")
    assert counted.taken == 1
    assert any("claiming a batch failed" in r.getMessage() for r in caplog.records)


async def test_a_large_body_goes_out_as_it_is(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """Above ``JOIN_BYTES`` the body is written as its own message, not copied behind the
    head (copying 8 MiB batches cost 1 MiB-record reads a fifth more CPU)."""
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import RawData

    written: list[int] = []
    send = TCPServer.protocol_send

    async def recorded(server: TCPServer, event: Any) -> None:
        if isinstance(event, RawData):
            written.append(len(event.data))
        await send(server, event)

    monkeypatch.setattr(TCPServer, "protocol_send", recorded)
    counted = Counted(monkeypatch)
    size = 20 * 1024
    async with live_server(settings) as (url, services):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url + "/api/v1", headers=headers) as client:
            assert (await client.post("/b/bkt")).status_code == 200
            for ts in range(1, 2 * 85 + 1):
                r = await client.post(f"/b/bkt/e?ts={ts}", content=bytes([ts % 256]) * size)
                assert r.status_code == 200
        qid = await new_query(url, True)
        conn = await Conn.open(url)
        await conn.ask(v2_read(qid))
        await settle(services)
        written.clear()
        head, body = await conn.ask(v2_read(qid))
        conn.close()
    assert counted.taken == 1
    assert len(body) == 85 * size > protocol_lane.JOIN_BYTES
    assert written == [len(head), len(body)]
    assert body[:size] == bytes([86 % 256]) * size
