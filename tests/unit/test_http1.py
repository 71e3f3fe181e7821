"""``appliance.http1``: the one-pass HTTP/1 header handling gives exactly h11's and Hypercorn's
events, bytes and errors (differential: every case through the stock code and the fast one)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import h11
import h11._readers
import pytest
from h11._state import CLIENT, IDLE
from hypercorn.protocol import http_stream

from appliance import http1
from appliance.http1.headers import IndexedHeaders
from appliance.http1.request_head import make_reader
from appliance.http1.response_head import ONE_PASS_FROM

# The differential tests drive h11 internals the one pass was verified against; on another
# h11 or Hypercorn the server keeps the stock code (``install`` refuses), and so do these.
pytestmark = pytest.mark.skipif(
    not http1._versions_verified(), reason="h11/Hypercorn version not verified for appliance.http1"
)

LOOKED_UP = (b"connection", b"expect", b"upgrade", b"content-length", b"transfer-encoding", b"host")


@pytest.fixture(autouse=True)
def _stock_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with h11's stock code in place."""
    monkeypatch.delenv(http1.PARSER_ENV, raising=False)
    http1.uninstall()
    yield
    http1.uninstall()


def _state(conn: h11.Connection) -> tuple[Any, ...]:
    """What the connection decided from the head (framing, keep-alive, 100-continue)."""
    return (
        conn.our_state,
        conn.their_state,
        conn.their_http_version,
        conn.client_is_waiting_for_100_continue,
        conn._cstate.keep_alive,
        type(conn._reader).__name__,
        getattr(conn._reader, "_length", None),
    )


def serve(chunks: list[bytes], max_size: int = 64 * 1024) -> list[Any]:
    """Feed ``chunks`` to an h11 server connection; every event, header view and state."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    seen: list[Any] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(10):
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                seen.append(("error", str(exc), exc.error_status_hint))
                return seen
            seen.append(event)
            if isinstance(event, h11.Request):
                seen.append(list(event.headers.raw_items()))
                seen.append(len(event.headers))
                seen.append(event.headers[0] if event.headers else None)
                seen.extend(
                    h11._connection.get_comma_header(event.headers, name) for name in LOOKED_UP
                )
                seen.append(h11._headers.has_expect_100_continue(event))
            seen.append(_state(conn))
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.EndOfMessage) and conn.our_state is h11.SEND_RESPONSE:
                response = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
                seen.append(conn.send(response))
                seen.append(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
    return seen


def differential(call: Callable[[], Any]) -> tuple[Any, Any]:
    """``call()``'s outcome (result or exception) with the stock code, then installed."""
    stock = http1._outcome(call)
    assert http1.install()
    try:
        fast = http1._outcome(call)
    finally:
        http1.uninstall()
    return stock, fast


def head(*lines: bytes, request_line: bytes = b"GET /x?y=1 HTTP/1.1") -> bytes:
    """A request head from its header lines (CRLF line ends)."""
    return b"\r\n".join((request_line, *lines)) + b"\r\n\r\n"


BATCH = [b"Host: h", b"Content-Length: 0"] + [
    b"x-reduct-time-%d: 1024,application/octet-stream,a=b" % (1_700_000_000_000_000 + i)
    for i in range(1000)
]

VALID_HEADS = [
    head(b"Host: h"),
    head(request_line=b"GET / HTTP/1.0"),
    head(b"host:h", request_line=b"OPTIONS * HTTP/1.1"),
    head(*BATCH, request_line=b"POST /api/v1/b/b/e/batch HTTP/1.1"),
    head(b"Host: h", b"X-A:\t a b\t c \t", b"x-b:", b"x-c: ", b"X-D:   :::"),
    head(b"Host: h", b"x-e: \xe9\xff\x80\x7f\x01"),
    head(b"Host: h", b"!#$%&'*+-.^_`|~09azAZ: v"),
    head(b"HOST: H", b"Content-Length: 5", request_line=b"POST / HTTP/1.1") + b"hello",
    head(b"Host: h", b"Content-Length: 000", request_line=b"PUT / HTTP/1.1"),
    head(b"Host: h", b"content-length: 12345678901234567890", request_line=b"POST / HTTP/1.1"),
    head(b"Host: h", b"Connection: close"),
    head(b"Host: h", b"Connection: Keep-Alive, Upgrade", b"Upgrade: websocket", b"connection: x"),
    head(b"Host: h", b"Expect: 100-Continue", b"Content-Length: 3", request_line=b"PUT / HTTP/1.1"),
    head(b"Host: h", b"Expect: 100-continue", request_line=b"POST / HTTP/1.0"),
    head(b"Host: h", b"Connection: keep-alive", request_line=b"GET / HTTP/1.0"),
    head(b"Host: h", b"X: 1", b"x: 2", b"X: 3"),
]

ODD_HEADS = [
    head(b"Host: h", b"Transfer-Encoding: chunked", request_line=b"POST / HTTP/1.1")
    + b"5\r\nhello\r\n0\r\n\r\n",
    head(b"Host: h", b"Transfer-Encoding: gzip"),
    head(b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    head(b"Host: h", b"Content-Length: 5, 5", request_line=b"POST / HTTP/1.1") + b"hello",
    head(b"Host: h", b"Content-Length: 5", b"Content-Length: 5", request_line=b"POST / HTTP/1.1")
    + b"hello",
    head(b"Host: h", b"Content-Length: 5", b"Content-Length: 6"),
    head(b"Host: h", b"Content-Length: 5,6"),
    head(b"Host: h", b"Content-Length: +5"),
    head(b"Host: h", b"Content-Length: "),
    head(b"Host: h", b"Content-Length: 123456789012345678901"),
    head(b"Host: h", b"Content-Length: \xd9\xa3"),
    head(b"X: y"),
    head(b"Host: a", b"host: b"),
    head(b"Host: h", b"X: a", b" b"),  # obs-fold
    head(b"Host: h", b"X: a", b"\tb", b"Y: c"),
    head(b" X: a", b"Host: h"),  # continuation at the start
    head(b"Host: h", b"X : b"),
    head(b"Host: h", b"X\t: b"),
    head(b"Host: h", b": b"),
    head(b"Host: h", b"abc"),
    head(b"Host: h", b"X Y: z"),
    head(b"Host: h", b"(x): y"),
    head(b"Host: h", b"\xe9: y"),
    head(b"Host: h", b"X: a\x00b"),
    head(b"Host: h", b"X: a\x0bb"),
    head(b"Host: h", b"X: a\x0cb"),
    head(b"Host: h", b"X: a\rb"),
    head(b"Host: h", b"X: a\r"),
    head(b"Host: h", b"X\r: b"),
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: y\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\n",
    b"GET / HTTP/1.1\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\r\nHost: h\r\n\r\n",
    b"\r\n",
    b"\n",
    b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
    b"GET / http/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET / HTTP/1.1\r\nHost: h\r\n",  # incomplete
]


@pytest.mark.parametrize("data", VALID_HEADS + ODD_HEADS, ids=lambda d: repr(d[:40]))
def test_same_events_and_errors_as_h11(data: bytes) -> None:
    stock, fast = differential(lambda: serve([data]))
    assert fast == stock


@pytest.mark.parametrize("data", VALID_HEADS, ids=lambda d: repr(d[:40]))
def test_ordinary_heads_take_the_one_pass_path(data: bytes) -> None:
    def refuse(buf: Any) -> None:
        raise AssertionError("fell back to h11's reader")

    conn = h11.Connection(h11.SERVER)
    conn._reader = make_reader(refuse)  # what install() puts in READERS, for this one
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert type(event.headers) is IndexedHeaders


def test_heads_arriving_in_pieces_and_pipelined() -> None:
    two = VALID_HEADS[7] + VALID_HEADS[0] + VALID_HEADS[10]
    for size in (1, 2, 3, 7, 64, 1000):
        chunks = [two[i : i + size] for i in range(0, len(two), size)]
        stock, fast = differential(lambda chunks=chunks: serve(chunks))
        assert fast == stock
        assert stock[0] != "raised"


def test_too_big_a_head_is_h11s_431() -> None:
    big = head(*BATCH)
    stock, fast = differential(lambda: serve([big[:20_000]], max_size=10_000))
    assert fast == stock
    assert stock[1][-1] == ("error", "Receive buffer too long", 431)


def test_random_header_blocks() -> None:
    """Header lines drawn from the bytes that matter to the grammar, bounded in count."""
    rng = random.Random(15)
    alphabet = b"aZ0-_:; \t\r\n\x00\x0b\x0c\x7f\x80\xff,=" + b"!#$%&'*+.^`|~(),/\"@[]{}"
    names = [b"Host", b"host", b"Content-Length", b"Connection", b"Expect", b"Upgrade",
             b"Transfer-Encoding", b"x-a", b"X-Reduct-Time-1"]
    cases = []
    for _ in range(400):
        lines = [b"Host: h"] if rng.random() < 0.8 else []
        for _ in range(rng.randint(0, 6)):
            if rng.random() < 0.5:
                name = rng.choice(names)
            else:
                name = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            value = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            if rng.random() < 0.3:
                value = rng.choice([b"0", b"5", b" 7 ", b"close", b"100-continue", b"chunked"])
            sep = rng.choice([b": ", b":", b":\t", b" : ", b": "])
            lines.append(name + sep + value)
        request_line = rng.choice([b"GET / HTTP/1.1", b"POST /p HTTP/1.0"])
        cases.append(head(*lines, request_line=request_line))
    stock = [http1._outcome(lambda c=c: serve([c])) for c in cases]
    assert http1.install()
    fast = [http1._outcome(lambda c=c: serve([c])) for c in cases]
    assert fast == stock
    assert sum(isinstance(s[1][0], h11.Request) for s in stock if s[0] == "gave") > 50


def respond(headers: Any, *, method: bytes = b"GET", reason: bytes = b"OK") -> list[Any]:
    """What an h11 server connection makes of a response with ``headers``: the event's
    headers and the bytes sent (status line and head)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s / HTTP/1.1\r\nHost: h\r\n\r\n" % method)
    conn.next_event()
    response = h11.Response(status_code=200, headers=headers, reason=reason)
    return [list(response.headers), response.headers.raw_items(), conn.send(response)]


RESPONSES = [
    [(b"content-length", b"3"), (b"x-reduct-time-1", b"1,text/plain,a=b")],
    [(b"Content-Length", b"0"), (b"X-A", b"a \t b"), (b"x-b", b""), (b"x-c", b"\xe9\x01\x7f")],
    [(b"x-reduct-time-%d" % i, b"1024,application/octet-stream,a=b") for i in range(90)]
    + [(b"content-length", b"92160"), (b"x-reduct-last", b"false")],
    [(b"content-length", b"0"), (b"connection", b"close")],
    [(b"content-length", b"0"), (b"Connection", b"Keep-Alive")],
    [(b"x-a", b"1")],  # no framing: h11 adds Transfer-Encoding
    [(b"transfer-encoding", b"chunked")],
    [(b"Host", b"h"), (b"content-length", b"0")],
    [(b"content-length", b"5"), (b"content-length", b"5")],
    [(b"content-length", b"5, 5")],
    [(b"content-length", b"x")],
    [(b"x-bad", b"a\r\nSet-Cookie: injected"), (b"content-length", b"0")],
    [(b"x-bad", b"a\nb"), (b"content-length", b"0")],
    [(b"x-bad", b"a\rb")],
    [(b"x-bad", b"a\x00b")],
    [(b"x-bad", b" a")],
    [(b"x-bad", b"a\t")],
    [(b"x-bad", b"\ta")],
    [(b"x-bad", b"\ta"), (b"content-length", b"0")],
    [(b"x-bad", b" "), (b"content-length", b"0")],
    [(b"x-bad", b" ")],
    [(b"x bad", b"a")],
    [(b"", b"a")],
    [(b"x:bad", b"a")],
    [(b"x-bad\r\nInjected", b"a")],
    [("x-str", "v"), (b"content-length", b"0")],
    [(b"x-a", bytearray(b"v")), (b"content-length", b"0")],
    [(b"x-a", 5)],
    [(b"x-a", b"1", b"extra")],
    [(b"x-a", b"1"), (b"x-b", b"2", b"extra")],
    [(b"x-a",)],
    [5],
    [],
]


# Enough headers for the one pass (fewer go to h11's own loop), as a batched read has.
PAD = [(b"x-reduct-time-%d" % i, b"1,text/plain,a=b") for i in range(ONE_PASS_FROM)]


def _framed(headers: list[Any]) -> list[Any]:
    """``PAD + headers`` with a Content-Length if they have none: a response without one is
    rebuilt by h11 (``set_comma_header``), which would validate it again."""
    framed = any(
        isinstance(pair, tuple) and pair and str(pair[0]).lower().endswith("content-length'")
        for pair in headers
    )
    return ([] if framed else [(b"Content-Length", b"0")]) + PAD + headers


@pytest.mark.parametrize("headers", RESPONSES, ids=lambda h: repr(h[:2])[:50])
@pytest.mark.parametrize("pad", ["none", "after", "before", "framed"])
def test_response_heads_same_as_h11(headers: list[Any], pad: str) -> None:
    if pad == "framed":
        headers = _framed(headers)
    else:
        headers = {"none": headers, "after": headers + PAD, "before": PAD + headers}[pad]
    stock, fast = differential(lambda: respond(list(headers)))
    assert fast == stock
    head_stock, head_fast = differential(lambda: respond(list(headers), method=b"HEAD"))
    assert head_fast == head_stock


def test_valid_responses_take_the_one_pass_path() -> None:
    assert http1.install()
    for headers in RESPONSES[:6]:
        event = h11.Response(status_code=200, headers=headers + PAD)
        assert type(event.headers) is IndexedHeaders, headers
    few = h11.Response(status_code=200, headers=RESPONSES[0])
    assert type(few.headers) is not IndexedHeaders  # h11's loop is cheaper for a few


def test_a_value_with_crlf_never_goes_out() -> None:
    assert http1.install()
    for pad in ([], PAD):
        injected = [(b"content-length", b"0"), (b"x-reduct-label-a", b"1\r\nX-Injected: yes")]
        with pytest.raises(h11.LocalProtocolError, match="Illegal header value"):
            respond(injected + pad)


def test_batched_read_response_is_written_in_one_piece() -> None:
    assert http1.install()
    event = h11.Response(status_code=200, headers=list(RESPONSES[2]))
    assert type(event.headers) is IndexedHeaders
    written: list[bytes] = []
    h11._writers.WRITERS[(h11.SERVER, h11.SEND_RESPONSE)](event, written.append)
    assert len(written) == 1 and written[0].startswith(b"HTTP/1.1 200 \r\nx-reduct-time-0: ")


@pytest.mark.parametrize(
    "headers",
    [
        [(b" x-a ", b" 1 "), (b"B", b"2\r\n")],
        [(b":path", b"/")],
        [(b"x", b"1"), (b":authority", b"h")],
        [(b"", b"1")],
        [("x", b"1")],
        [(bytearray(b"x"), b"1")],
        [],
        ((b"x", b"1"),),
        [(b"x", b"1", b"2")],
    ],
)
@pytest.mark.parametrize("pad", [False, True])
def test_hypercorn_header_build_same(headers: Any, pad: bool) -> None:
    if pad:
        headers = headers + type(headers)(PAD)
    stock, fast = differential(lambda: http_stream.build_and_validate_headers(headers))
    assert fast == stock


def test_install_is_guarded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stock_reader = h11._readers.READERS[(CLIENT, IDLE)]
    monkeypatch.setenv(http1.PARSER_ENV, "h11")
    assert http1.install() is False
    monkeypatch.delenv(http1.PARSER_ENV)
    monkeypatch.setattr(h11, "__version__", "0.17.0")
    assert http1.install() is False
    monkeypatch.undo()
    monkeypatch.delenv(http1.PARSER_ENV, raising=False)
    assert h11._readers.READERS[(CLIENT, IDLE)] is stock_reader

    # A reader that gets something wrong is caught by the self-check and taken out again.
    def wrong(stock: Any) -> Any:
        def read(buf: Any) -> Any:
            event = stock(buf)
            if isinstance(event, h11.Request):
                object.__setattr__(event, "target", b"/elsewhere")
            return event

        return read

    monkeypatch.setattr(http1, "make_reader", wrong)
    with caplog.at_level(logging.WARNING, logger="appliance.http1"):
        assert http1.install() is False
    assert "differs" in caplog.text
    assert h11._readers.READERS[(CLIENT, IDLE)] is stock_reader
    assert http1._installed == []


def test_install_is_idempotent_and_undone() -> None:
    stock_reader = h11._readers.READERS[(CLIENT, IDLE)]
    assert http1.install() and http1.install()
    assert h11._readers.READERS[(CLIENT, IDLE)].stock is stock_reader  # type: ignore[attr-defined]
    http1.uninstall()
    assert h11._readers.READERS[(CLIENT, IDLE)] is stock_reader
