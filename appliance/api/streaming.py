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

if TYPE_CHECKING:
    from appliance.services import Services

T = TypeVar("T")
# Chunks handed to the engine are coalesced to about this size (one thread hop each).
WRITE_CHUNK_BYTES = 256 * 1024
# Pulled from a record's payload iterator per thread hop when streaming a response.
READ_CHUNK_BYTES = 1024 * 1024
# JSON bodies (settings, queries, tokens, renames) are small; bigger ones are refused with 413.
MAX_SMALL_BODY_BYTES = 1024 * 1024
# JSON bodies up to this size are decoded on the event loop; bigger ones in a worker thread.
INLINE_PARSE_BYTES = 64 * 1024
TIMEOUT_MESSAGE = "Timeout while receiving data"
BIGGER_MESSAGE = "Content is bigger than in content-length"
SMALLER_MESSAGE = "Content is smaller than in content-length"


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _work(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], fn: Callable[..., Any], args: Any
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # handed to the awaiting task, like run_in_executor does
        loop.call_soon_threadsafe(_deliver, fut, False, exc)
    else:
        loop.call_soon_threadsafe(_deliver, fut, True, result)


async def hop(services: Services, fn: Callable[..., T], *args: Any) -> T:
    """``services.run`` for the hot paths: one worker-thread hop with less machinery.

    The worker hands its result straight to an asyncio future (no concurrent-future chaining
    and one loop callback less per hop). As with ``run_in_executor``, a cancelled caller
    stops a call that has not started yet; one already running finishes in its thread.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    job = services.executor.submit(_work, loop, fut, fn, args)
    try:
        return await fut
    except asyncio.CancelledError:
        job.cancel()
        raise


async def run_through(
    services: Services,
    fn: Callable[..., T],
    *args: Any,
    on_cancel: Callable[[T], Any] | None = None,
) -> T:
    """Run ``fn`` in a worker thread; if cancelled, still wait for the thread to finish.

    A cancelled ``run_in_executor`` future does not stop its thread, so a caller that cleans up
    (e.g. aborts a RecordWriter) must not race the still-running call. ``on_cancel`` receives
    the result the caller will never see (e.g. a just-opened writer) and runs in a thread.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(services.executor, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if on_cancel is not None and not fut.cancelled() and fut.exception() is None:
            await asyncio.wait([loop.run_in_executor(services.executor, on_cancel, fut.result())])
        raise


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
    return await services.run(parse, body)


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
            await run_through(services, sink, data)
    if parts:
        await run_through(services, sink, b"".join(parts))


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
    it = await services.run(open_iter)
    try:
        while True:
            data = await run_through(services, _pull, it)
            if data is None:
                return
            yield data
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await services.run(close)
