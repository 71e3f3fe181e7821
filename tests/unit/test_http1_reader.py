"""The chunk reader (``appliance/http1/reader.py``): a connection's received chunks handed to
Hypercorn as the very objects the transport gave, cut only when larger than a read, with the
stock reader's flow control, EOF and errors; and a real Hypercorn reading through it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from hypercorn.asyncio import serve, tcp_server
from hypercorn.config import Config

from appliance import http1
from appliance.http1.reader import WHOLE_CHUNK_BYTES, ChunkReader, adopt, supported
from tests.api.live import free_port

LIMIT = 64 * 1024  # asyncio.start_server's default, which Hypercorn uses


class Transport:
    """Records pause_reading / resume_reading calls (as a socket transport would obey)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def chunk_reader(transport: Any = None) -> ChunkReader:
    """A stock StreamReader with a transport, adopted."""
    reader = asyncio.StreamReader(limit=LIMIT)
    if transport is not None:
        reader.set_transport(transport)
    assert adopt(reader)
    assert type(reader) is ChunkReader
    return reader  # type: ignore[return-value]


async def test_chunks_come_out_as_the_same_objects_in_order() -> None:
    reader = chunk_reader()
    chunks = [os.urandom(n) for n in (1, 1000, 65536, 200_000)]
    for chunk in chunks:
        reader.feed_data(chunk)
    got = [await reader.read(WHOLE_CHUNK_BYTES) for _ in chunks]
    assert all(a is b for a, b in zip(got, chunks))  # not copied
    reader.feed_eof()
    assert await reader.read(WHOLE_CHUNK_BYTES) == b""
    assert reader.at_eof()


async def test_a_chunk_larger_than_a_read_is_cut_in_order() -> None:
    reader = chunk_reader()
    big, small = os.urandom(256_000), os.urandom(10)
    reader.feed_data(big)
    reader.feed_data(small)
    pieces = []
    while len(pieces) < 4:
        pieces.append(await reader.read(65536))
    assert [len(p) for p in pieces] == [65536, 65536, 65536, 256_000 - 3 * 65536]
    assert b"".join(pieces) == big
    assert await reader.read(65536) is small  # the next chunk whole again


async def test_read_waits_for_data_and_eof() -> None:
    reader = chunk_reader()
    pending = asyncio.ensure_future(reader.read(100))
    await asyncio.sleep(0)
    assert not pending.done()
    reader.feed_data(b"hello")
    assert await pending == b"hello"
    reader.feed_data(b"rest")
    reader.feed_eof()
    assert not reader.at_eof()  # a chunk is still queued
    assert await reader.read(-1) == b"rest"
    assert reader.at_eof()
    assert await reader.read(0) == b""


async def test_an_error_is_raised_to_the_reader() -> None:
    reader = chunk_reader()
    pending = asyncio.ensure_future(reader.read(100))
    await asyncio.sleep(0)
    reader.set_exception(ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        await pending
    with pytest.raises(ConnectionResetError):
        await reader.read(100)


async def test_flow_control_pauses_past_twice_the_limit_and_resumes_at_the_limit() -> None:
    transport = Transport()
    reader = chunk_reader(transport)
    reader.feed_data(b"x" * LIMIT)
    reader.feed_data(b"y" * LIMIT)
    assert transport.calls == []  # 2 x limit: not past it
    reader.feed_data(b"z")
    assert transport.calls == ["pause"]
    await reader.read(LIMIT)  # limit + 1 queued: still paused
    assert transport.calls == ["pause"]
    await reader.read(LIMIT)
    assert transport.calls == ["pause", "resume"]


async def test_a_big_chunk_being_cut_keeps_the_transport_paused_until_drained() -> None:
    transport = Transport()
    reader = chunk_reader(transport)
    reader.feed_data(b"x" * 256_000)
    assert transport.calls == ["pause"]
    for _ in range(2):
        await reader.read(65536)
    assert transport.calls == ["pause"]  # 124,928 bytes left: above the limit
    await reader.read(65536)
    assert transport.calls == ["pause", "resume"]


async def test_adopt_takes_over_what_was_buffered_and_refuses_others() -> None:
    reader = asyncio.StreamReader(limit=LIMIT)
    reader.feed_data(b"early")  # arrived before Hypercorn's read loop started
    reader.feed_data(b"-bytes")
    assert supported(reader) and adopt(reader)
    reader.feed_data(b"late")
    assert await reader.read(100) == b"early-bytes"
    assert await reader.read(100) == b"late"
    assert not adopt(reader)  # already one: nothing changes

    class Custom(asyncio.StreamReader):
        pass

    other = Custom()
    assert not supported(other) and not adopt(other)
    assert type(other) is Custom


async def test_views_are_copied_and_line_reads_refused() -> None:
    reader = chunk_reader()
    buf = bytearray(b"abc")
    reader.feed_data(buf)
    reader.feed_data(memoryview(b"def"))
    buf[:] = b"XYZ"  # a sender reusing its buffer does not change what was queued
    assert await reader.read(10) == b"abc"
    assert await reader.read(10) == b"def"
    for call in (reader.readline, reader.readuntil, lambda: reader.readexactly(1)):
        with pytest.raises(NotImplementedError):
            await call()


def test_receive_bytes_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    if not http1._versions_verified():
        pytest.skip("h11/Hypercorn version not verified for appliance.http1")
    http1.uninstall()
    try:
        assert http1.receive_bytes() is None
        assert http1.install()
        assert http1.receive_bytes() == WHOLE_CHUNK_BYTES
        http1.uninstall()
        monkeypatch.setenv(http1.READER_ENV, "stock")
        assert http1.install()
        assert http1.receive_bytes() is None  # the headers only, asyncio's reader
    finally:
        http1.uninstall()


async def echo_digest(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering a POST with the SHA-256 and length of its body."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    digest, size, more = hashlib.sha256(), 0, True
    while more:
        message = await receive()
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f"{digest.hexdigest()} {size}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("reader", ["chunks", "stock"])
async def test_hypercorn_reads_bodies_and_pipelined_requests_through_it(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Hypercorn on loopback: a 5 MiB body sent in uneven pieces, then two pipelined
    requests in one write, come through whole and in order, with and without the chunk
    reader."""
    if not http1._versions_verified():
        pytest.skip("h11/Hypercorn version not verified for appliance.http1")
    if reader == "stock":
        monkeypatch.setenv(http1.READER_ENV, "stock")
    http1.uninstall()
    max_recv = tcp_server.MAX_RECV
    seen: list[type] = []
    adopt_seen = http1.reader.adopt

    def spy(stream_reader: Any) -> bool:
        done = adopt_seen(stream_reader)
        seen.append(type(stream_reader))
        return done

    monkeypatch.setattr(http1.reader, "adopt", spy)
    try:
        assert http1.install()
        tcp_server.MAX_RECV = http1.receive_bytes() or max_recv
        port = free_port()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.graceful_timeout = 1
        stop = asyncio.Event()
        task = asyncio.create_task(serve(echo_digest, config, shutdown_trigger=stop.wait))
        try:
            for _ in range(200):
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.02)
            body = os.urandom(5 * 1024 * 1024 + 7)
            w.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            for start in range(0, len(body), 300_001):
                w.write(body[start : start + 300_001])
                await w.drain()
            small = [os.urandom(10), os.urandom(70_000)]
            w.write(b"".join(
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                for b in small
            ))
            await w.drain()
            answers = []
            for expected in (body, *small):
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answers.append(await r.readexactly(length))
                digest = hashlib.sha256(expected).hexdigest()
                assert answers[-1] == f"{digest} {len(expected)}".encode()
            w.close()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        http1.uninstall()
        tcp_server.MAX_RECV = max_recv
    if reader == "chunks":
        assert seen and all(t is ChunkReader for t in seen)
    else:
        assert seen == []  # not installed: asyncio's own reader served the connection
