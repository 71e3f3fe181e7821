"""Request and response bodies that never hold a large record in memory.

Request bodies are read with a timeout (400 ``Timeout while receiving data``) and checked
against the declared length; large ones go to the engine in ~1 MiB worker-thread hops (the
connection in ``connection.py`` bounds what is buffered). Response payloads stream from the
engine through worker threads (``payload_stream``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from quart import request

from appliance.api.connection import BoundedBody
from appliance.errors import BadRequest, PayloadTooLarge
from appliance.sizes import (
    INLINE_PARSE_BYTES,
    MAX_SMALL_BODY_BYTES,
    READ_CHUNK_BYTES,
    WRITE_CHUNK_BYTES,
)

if TYPE_CHECKING:
    from appliance.services import Services

T = TypeVar("T")
TIMEOUT_MESSAGE = "Timeout while receiving data"
BIGGER_MESSAGE = "Content is bigger than in content-length"
SMALLER_MESSAGE = "Content is smaller than in content-length"


def abort_writer(writer: Any) -> None:
    """Abort a RecordWriter whose request went away (``on_cancel`` of ``begin_write``)."""
    writer.abort("client disconnected")


async def next_chunk(it: AsyncIterator[bytes], timeout_seconds: float) -> bytes | None:
    """The next body chunk, None at the end; 400 after ``timeout_seconds`` of silence."""
    try:
        return await asyncio.wait_for(it.__anext__(), timeout_seconds)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise BadRequest(TIMEOUT_MESSAGE) from None


async def read_small_body(length: int, timeout_seconds: float) -> bytes:
    """The whole request body, which must be exactly ``length`` bytes (400 otherwise)."""
    body = request.body
    if isinstance(body, BoundedBody) and body.complete:  # usual for small bodies: no waiting
        data = body.take_all()
        if len(data) > length:
            raise BadRequest(BIGGER_MESSAGE)
        if len(data) < length:
            raise BadRequest(SMALLER_MESSAGE)
        return data
    parts = [chunk async for chunk in exact_chunks(length, timeout_seconds)]
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def exact_chunks(length: int, timeout_seconds: float) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; 400 once it passes ``length`` or ends short."""
    it = request.body.__aiter__()
    received = 0
    while (chunk := await next_chunk(it, timeout_seconds)) is not None:
        received += len(chunk)
        if received > length:
            raise BadRequest(BIGGER_MESSAGE)
        yield chunk
    if received < length:
        raise BadRequest(SMALLER_MESSAGE)


async def read_any_body(timeout_seconds: float, limit: int = MAX_SMALL_BODY_BYTES) -> bytes:
    """The whole (small) request body, whatever its declared length (JSON bodies); 413 when
    it is, or turns out to be, bigger than ``limit`` (checked before buffering it)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is too large: at most {limit} bytes")
    body = request.body
    if isinstance(body, BoundedBody) and body.complete:
        data = body.take_all()
        if len(data) > limit:
            raise PayloadTooLarge(f"Request body is too large: at most {limit} bytes")
        return data
    it = body.__aiter__()
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await next_chunk(it, timeout_seconds)
        if chunk is None:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is too large: at most {limit} bytes")
        parts.append(chunk)


async def parse_body(services: Services, parse: Callable[[bytes], T], body: bytes) -> T:
    """``parse(body)`` for a JSON body: inline when small, in a worker thread when big, so a
    1 MiB body of a hundred thousand nested arrays never holds the event loop."""
    if len(body) <= INLINE_PARSE_BYTES:
        return parse(body)
    return await services.workers.run(parse, body)


async def stream_body(
    services: Services, length: int, sink: Callable[[bytes], Any], timeout_seconds: float
) -> None:
    """Feed exactly ``length`` body bytes to ``sink`` in a worker thread, ~1 MiB per hop."""
    parts: list[bytes] = []
    buffered = 0
    async for chunk in exact_chunks(length, timeout_seconds):
        parts.append(chunk)
        buffered += len(chunk)
        if buffered >= WRITE_CHUNK_BYTES:
            data = b"".join(parts)
            parts.clear()
            buffered = 0
            await services.workers.run_through(sink, data)
    if parts:
        await services.workers.run_through(sink, b"".join(parts))


def _pull(it: Iterator[bytes]) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    for chunk in it:
        parts.append(chunk)
        size += len(chunk)
        if size >= READ_CHUNK_BYTES:
            break
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def payload_stream(
    services: Services, open_iter: Callable[[], Iterator[bytes]]
) -> AsyncIterator[bytes]:
    """Stream a payload iterator from the engine, one worker-thread hop per ~1 MiB."""
    it = await services.workers.run(open_iter)
    try:
        while True:
            data = await services.workers.run_through(_pull, it)
            if data is None:
                return
            yield data
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await services.workers.run(close)
