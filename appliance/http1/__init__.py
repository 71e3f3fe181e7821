"""Faster HTTP/1 handling under Hypercorn, installed by the server (issue 15).

``install`` swaps seven functions of h11 and Hypercorn for versions that do the same work in
one pass per header block (``request_head``, ``response_head``, ``headers``), or without
copying a body chunk (``body``, ``reader``):

- h11's ``(CLIENT, IDLE)`` reader (``h11._readers.READERS``): the request head;
- h11's ``get_comma_header``, where ``h11._connection`` and ``h11._headers`` call it;
- h11's ``normalize_and_validate``, where ``h11._events`` calls it (building events);
- h11's ``write_any_response`` in ``h11._writers.WRITERS``;
- Hypercorn's ``build_and_validate_headers``, where ``hypercorn.protocol.http_stream`` calls it;
- Hypercorn's ``H11Protocol.handle``, for request body chunks h11 would only copy (``body``);
- Hypercorn's ``TCPServer._read_data``, which reads the socket's chunks through a
  ``ChunkReader`` instead of asyncio's byte buffer (``reader``); ``receive_bytes`` is then the
  read size that keeps every chunk whole.

Each hands anything unusual to the function it replaces, so events, bytes and exceptions are
h11's and Hypercorn's own. Only for the versions verified (``VERIFIED_H11``,
``VERIFIED_HYPERCORN``; on others the stock code runs), and only after a self-check at
install: sample heads and responses through both, compared, else one warning and the stock
code. ``APPLIANCE_HTTP_PARSER=h11`` (a benchmarking knob, not an ``RS_*`` setting) keeps the
stock code, for comparisons; the benchmark ceilings (``tests/bench/empty_app.py``) honour it.
``APPLIANCE_STREAM_READER=stock`` keeps asyncio's reader alone (the same kind of knob).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any

import h11
import h11._connection
import h11._events
import h11._headers
import h11._readers
import h11._writers
from h11._state import CLIENT, IDLE, SEND_RESPONSE, SERVER
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol import http_stream
from hypercorn.protocol.h11 import H11Protocol

from appliance.http1.body import make_handle
from appliance.http1.early import make_early_handle
from appliance.http1.headers import indexed_get_comma_header
from appliance.http1.reader import WHOLE_CHUNK_BYTES, make_read_data
from appliance.http1.request_head import make_reader
from appliance.http1.response_head import (
    ONE_PASS_FROM,
    make_build_headers,
    make_normalize,
    make_response_writer,
)

log = logging.getLogger(__name__)

PARSER_ENV = "APPLIANCE_HTTP_PARSER"
READER_ENV = "APPLIANCE_STREAM_READER"  # ``stock``: asyncio's byte buffer (comparisons)
VERIFIED_H11 = ("0.16.",)
VERIFIED_HYPERCORN = ("0.17.", "0.18.")

_SAMPLE_HEADS = (
    b"POST /api/v1/b/bucket/entry/batch?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8383\r\n"
    b"Content-Length: 6\r\nContent-Type: application/octet-stream\r\nConnection: keep-alive\r\n"
    b"Expect:  100-continue \r\nX-Reduct-Time-1: 1,text/plain,a=b\r\nx-reduct-time-2:2\r\n"
    b"X-Odd:\t v\xe9 a\tb \t\r\n\r\n123456",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold: h11's own reader
    b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",  # an error, h11's message
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
)
# Enough headers for the one pass (``ONE_PASS_FROM``), as a batched read has.
_RECORD_HEADERS = [(b"X-Reduct-Time-%d" % i, b"1,text/plain,a=b") for i in range(ONE_PASS_FROM)]
_SAMPLE_RESPONSES = (
    [(b"content-length", b"3"), *_RECORD_HEADERS, (b"x-a", b"")],
    [(b"connection", b"close"), (b"content-length", b"0"), *_RECORD_HEADERS],
    [(b"x-bad", b"a\r\nb"), (b"content-length", b"0"), *_RECORD_HEADERS],
    [(b"x-bad", b" a"), (b"content-length", b"0"), *_RECORD_HEADERS],
)

# What install() replaced: (object, key or attribute, stock value).
_installed: list[tuple[Any, str | tuple[Any, Any], Any]] = []


def _versions_verified() -> bool:
    """Whether the installed h11 and Hypercorn are versions this was checked against."""
    hypercorn = importlib.metadata.version("hypercorn")
    return h11.__version__.startswith(VERIFIED_H11) and hypercorn.startswith(VERIFIED_HYPERCORN)


def _outcome(call: Any) -> Any:
    """What ``call()`` gives: a comparable rendering of its result or of its exception."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - comparing errors is the point
        return ("raised", type(exc).__name__, str(exc))
    return ("gave", result)


def _serve_sample(head: bytes) -> Any:
    """The events (and framing lookups) an h11 server connection makes of ``head``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    events: list[Any] = []
    for _ in range(4):
        event = conn.next_event()
        events.append(event)
        if isinstance(event, h11.Request):
            events.append(list(event.headers.raw_items()))
            events.extend(
                h11._connection.get_comma_header(event.headers, name)
                for name in (b"connection", b"expect", b"upgrade", b"content-length", b"host")
            )
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            break
    if isinstance(events[0], h11.Request):
        response = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
        events.append(conn.send(response))
    return events


def _respond_sample(headers: list[tuple[bytes, bytes]]) -> Any:
    """The bytes an h11 server connection sends for a response with ``headers``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.next_event()
    response = h11.Response(status_code=200, headers=list(headers), reason=b"OK")
    return [list(response.headers), list(response.headers.raw_items()), conn.send(response)]


def _samples() -> list[Any]:
    """The outcomes of the sample heads and responses with whatever is installed."""
    outcomes = [_outcome(lambda head=head: _serve_sample(head)) for head in _SAMPLE_HEADS]
    outcomes += [_outcome(lambda hs=hs: _respond_sample(hs)) for hs in _SAMPLE_RESPONSES]
    built = [(b"x-a", b" 1 "), (b"B", b"2"), *_RECORD_HEADERS]
    outcomes.append(_outcome(lambda: http_stream.build_and_validate_headers(built)))
    return outcomes


def _replace(target: Any, key: Any, value: Any) -> None:
    """Set ``target[key]`` (a dict) or ``target.key`` (a module) and remember the old one."""
    if isinstance(target, dict):
        _installed.append((target, (key,), target[key]))
        target[key] = value
    else:
        _installed.append((target, key, getattr(target, key)))
        setattr(target, key, value)


def uninstall() -> None:
    """Put back every stock function ``install`` replaced (tests and comparisons)."""
    while _installed:
        target, key, stock = _installed.pop()
        if isinstance(key, tuple):
            target[key[0]] = stock
        else:
            setattr(target, key, stock)


def receive_bytes() -> int | None:
    """How much Hypercorn should read from a socket at a time for what is installed: a
    transport's whole chunk when the ``ChunkReader`` is (it then hands each on uncopied), else
    None (Hypercorn's own size)."""
    chunked = any(target is TCPServer and key == "_read_data" for target, key, _ in _installed)
    return WHOLE_CHUNK_BYTES if chunked else None


def install() -> bool:
    """Install the one-pass header handling and the chunk reader unless stock h11 is asked
    for, the versions are not verified, or the self-check finds a difference; returns whether
    it is in use. Idempotent."""
    if _installed:
        return True
    if os.environ.get(PARSER_ENV, "").strip().lower() == "h11":
        log.info("HTTP/1 headers: h11's own parser (%s=h11)", PARSER_ENV)
        return False
    if not _versions_verified():
        log.info("HTTP/1 headers: h11's own parser (h11 %s not verified)", h11.__version__)
        return False
    expected = _samples()
    reader = h11._readers.READERS[(CLIENT, IDLE)]
    _replace(h11._readers.READERS, (CLIENT, IDLE), make_reader(reader))
    _replace(h11._connection, "get_comma_header", indexed_get_comma_header)
    _replace(h11._headers, "get_comma_header", indexed_get_comma_header)
    normalize = h11._events.normalize_and_validate
    _replace(h11._events, "normalize_and_validate", make_normalize(normalize))
    for state in (IDLE, SEND_RESPONSE):
        writer = h11._writers.WRITERS[(SERVER, state)]
        _replace(h11._writers.WRITERS, (SERVER, state), make_response_writer(writer))
    build = http_stream.build_and_validate_headers
    _replace(http_stream, "build_and_validate_headers", make_build_headers(build))
    _replace(H11Protocol, "handle", make_early_handle(make_handle(H11Protocol.handle)))
    if os.environ.get(READER_ENV, "").strip().lower() != "stock":
        _replace(TCPServer, "_read_data", make_read_data(TCPServer._read_data))
    got = _samples()
    if got != expected:
        uninstall()
        log.warning("HTTP/1 headers: h11's own parser (the one-pass version differs: %r)",
                    [pair for pair in zip(expected, got) if pair[0] != pair[1]][:1])
        return False
    log.info("HTTP/1 headers: one-pass reader and writer (h11 %s), %s", h11.__version__,
             "received chunks uncopied" if receive_bytes() else "asyncio's stream reader")
    return True
