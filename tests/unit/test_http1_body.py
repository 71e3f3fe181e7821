"""Body chunks passed through (``appliance/http1/body.py``): Hypercorn's ``H11Protocol`` fed the
same bytes in the same pieces hands its stream the same events, sends the same bytes and ends
in the same h11 state with the pass-through as without it, for bodies of a known length in
many pieces, pipelined requests, 100-continue, chunked bodies and connections that close."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import h11
import pytest
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Body, EndBody, Request
from hypercorn.protocol.h11 import H11Protocol

from appliance import http1

pytestmark = pytest.mark.skipif(
    not http1._versions_verified(), reason="h11/Hypercorn version not verified for appliance.http1"
)


@pytest.fixture(autouse=True)
def _stock_first() -> Any:
    """Every test starts and ends with the stock code in place."""
    http1.uninstall()
    yield
    http1.uninstall()


def config() -> Config:
    """Hypercorn's defaults without the date header (a second may tick between two runs)."""
    conf = Config()
    conf.include_date_header = False
    return conf


class Recorder:
    """A stream that records what the protocol hands it, and answers each request."""

    def __init__(self, proto: H11Protocol, seen: list[Any]) -> None:
        self.proto = proto
        self.seen = seen

    async def handle(self, event: Any) -> None:
        if isinstance(event, Body):
            self.seen.append(("body", bytes(event.data), type(event.data).__name__))
        elif isinstance(event, EndBody):
            self.seen.append(("end",))
            # Answer, as an app does, so a pipelined next request can be read.
            conn = self.proto.connection
            self.seen.append(("sent", conn.send(h11.Response(
                status_code=200, headers=[(b"content-length", b"0")]))))
            self.seen.append(("sent", conn.send(h11.EndOfMessage())))
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                await self.proto._handle_events()  # noqa: SLF001 - as Hypercorn's recycle does
        elif isinstance(event, Request):
            self.seen.append(("request", event.method, event.raw_path))
        else:
            self.seen.append(("other", type(event).__name__))


def drive(pieces: list[bytes], *, close: bool = False) -> list[Any]:
    """What a protocol fed ``pieces`` (then EOF if ``close``) does: events, bytes, states."""
    seen: list[Any] = []

    async def send(event: Any) -> None:
        seen.append(("send", type(event).__name__, getattr(event, "data", None)))

    async def run() -> None:
        proto = H11Protocol(None, config(), WorkerContext(None), None, None, False,  # type: ignore[arg-type]
                            ("127.0.0.1", 1), ("127.0.0.1", 2), send)

        async def create_stream(request: h11.Request) -> None:
            proto.stream = Recorder(proto, seen)  # type: ignore[assignment]
            await proto.stream.handle(Request(stream_id=1, headers=list(request.headers),
                                              http_version="1.1", method=request.method.decode(),
                                              raw_path=request.target, state={}))

        proto._create_stream = create_stream  # type: ignore[method-assign]  # noqa: SLF001
        for piece in pieces:
            await proto.handle(RawData(piece))
            conn = proto.connection
            seen.append(("state", conn.their_state, conn.our_state, len(conn._receive_buffer)))  # noqa: SLF001
        if close:
            await proto.handle(Closed())

    asyncio.run(run())
    return seen


def differential(pieces: list[bytes], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    stock = drive(pieces, **kwargs)
    assert http1.install()
    try:
        fast = drive(pieces, **kwargs)
    finally:
        http1.uninstall()
    return stock, fast


def plain(events: list[Any]) -> list[Any]:
    """Events without the kind of the body's container (h11's ``bytearray``, or the chunk's
    own ``bytes``: Hypercorn's stream makes ``bytes`` of either)."""
    return [e[:2] if e[0] == "body" else e for e in events]


def cut(data: bytes, rng: random.Random, most: int) -> list[bytes]:
    """``data`` in random pieces of 1..``most`` bytes."""
    pieces = []
    while data:
        n = rng.randrange(1, most + 1)
        pieces.append(data[:n])
        data = data[n:]
    return pieces


def post(body: bytes, *extra: bytes) -> bytes:
    head = b"POST /b/x/e?ts=1 HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


BODY = bytes(range(256)) * 40


@pytest.mark.parametrize("seed", range(12))
def test_same_events_bytes_and_states(seed: int) -> None:
    rng = random.Random(seed)
    stream = post(BODY)
    if seed % 3 == 1:
        stream += post(BODY[:100]) + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"  # pipelined
    if seed % 4 == 2:
        stream = post(BODY, b"Expect: 100-continue")
    pieces = cut(stream, rng, rng.choice([7, 500, 4096, 20000]))
    stock, fast = differential(pieces, close=seed % 5 == 0)
    assert plain(fast) == plain(stock)


def test_chunks_pass_as_the_same_bytes_objects() -> None:
    head, body = post(BODY).split(b"\r\n\r\n", 1)
    pieces = [head + b"\r\n\r\n", *cut(body, random.Random(1), 1000)]
    stock, fast = differential(pieces)
    assert plain(fast) == plain(stock)
    bodies = [e for e in fast if e[0] == "body"]
    assert [e[1] for e in bodies] == pieces[1:]  # each piece as it came
    # All but the last (which completes the body: h11's way) passed straight through.
    assert [kind for _, _, kind in bodies[:-1]] == ["bytes"] * (len(bodies) - 1)
    assert {kind for e in stock if e[0] == "body" for kind in e[2:]} == {"bytearray"}


@pytest.mark.parametrize(
    "stream",
    [
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        post(b""),
        post(b"abc") + b"garbage that is not a request\r\n\r\n",
    ],
)
def test_other_bodies_are_h11s(stream: bytes) -> None:
    for most in (1, 3, 64):
        stock, fast = differential(cut(stream, random.Random(most), most))
        assert plain(fast) == plain(stock)


def test_a_body_cut_short_by_the_client() -> None:
    head, body = post(BODY).split(b"\r\n\r\n", 1)
    pieces = [head + b"\r\n\r\n", body[:3000], body[3000:5000]]
    stock, fast = differential(pieces, close=True)
    assert plain(fast) == plain(stock)
    assert ("end",) not in fast


@pytest.mark.parametrize("state", ["buffered", "waiting for 100-continue"])
def test_a_protocol_in_another_state_takes_h11s_way(state: str) -> None:
    """Bytes left in h11's buffer go before a new chunk, and a client still waiting for
    ``100 Continue`` gets it first: states Hypercorn does not leave behind, set by hand."""
    head, body = post(BODY).split(b"\r\n\r\n", 1)

    def run() -> list[Any]:
        seen: list[Any] = []

        async def send(event: Any) -> None:
            seen.append(("send", type(event).__name__, getattr(event, "data", None)))

        async def go() -> None:
            proto = H11Protocol(None, config(), WorkerContext(None), None, None, False,  # type: ignore[arg-type]
                                None, None, send)

            async def create_stream(request: h11.Request) -> None:
                proto.stream = Recorder(proto, seen)  # type: ignore[assignment]

            proto._create_stream = create_stream  # type: ignore[method-assign]  # noqa: SLF001
            await proto.handle(RawData(head + b"\r\n\r\n"))
            conn = proto.connection
            if state == "buffered":
                conn.receive_data(body[:10])
            else:
                conn.client_is_waiting_for_100_continue = True
            await proto.handle(RawData(body[10:100]))
            await proto.handle(RawData(body[100:]))

        asyncio.run(go())
        return seen

    stock = run()
    assert http1.install()
    try:
        fast = run()
    finally:
        http1.uninstall()
    assert plain(fast) == plain(stock)
