"""Request and response bodies that never hold a large record in memory.

Request bodies are read with a timeout (400 ``Timeout while receiving data``) and checked
against the declared length; large ones go to the engine through a ``Pipeline`` that writes
chunk N in a worker thread while chunk N+1 arrives (the connection in ``connection.py`` and the
pipeline's own limit bound what is buffered). Response payloads stream from the
engine through worker threads (``payload_stream``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from quart import request

from appliance.api.connection import BoundedBody
from appliance.errors import BadRequest, PayloadTooLarge
from appliance.sizes import (
    INLINE_PARSE_BYTES,
    MAX_SMALL_BODY_BYTES,
    PIPELINE_BYTES,
    PIPELINE_HOP_BYTES,
    READ_CHUNK_BYTES,
)

if TYPE_CHECKING:
    from appliance.services import Services

T = TypeVar("T")
TIMEOUT_MESSAGE = "Timeout while receiving data"
BIGGER_MESSAGE = "Content is bigger than in content-length"
SMALLER_MESSAGE = "Content is smaller than in content-length"


async def next_chunk(it: AsyncIterator[bytes], timeout_seconds: float) -> bytes | None:
    """The next body chunk, None at the end; 400 after ``timeout_seconds`` of silence."""
    try:
        return await asyncio.wait_for(it.__anext__(), timeout_seconds)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise BadRequest(TIMEOUT_MESSAGE) from None


def check_received(received: int, length: int, *, ended: bool) -> None:
    """400 once ``received`` body bytes pass the declared ``length``, or, at the body's end,
    fall short of it."""
    if received > length:
        raise BadRequest(BIGGER_MESSAGE)
    if ended and received < length:
        raise BadRequest(SMALLER_MESSAGE)


async def read_small_body(length: int, timeout_seconds: float) -> bytes:
    """The whole request body, which must be exactly ``length`` bytes (400 otherwise)."""
    body = request.body
    if isinstance(body, BoundedBody) and body.complete:  # usual for small bodies: no waiting
        data = body.take_all()
        check_received(len(data), length, ended=True)
        return data
    parts = [chunk async for chunk in exact_chunks(length, timeout_seconds)]
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def exact_chunks(length: int, timeout_seconds: float) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; 400 once it passes ``length`` or ends short."""
    it = request.body.__aiter__()
    received = 0
    while (chunk := await next_chunk(it, timeout_seconds)) is not None:
        received += len(chunk)
        check_received(received, length, ended=False)
        yield chunk
    check_received(received, length, ended=True)


async def next_parts(body: BoundedBody, timeout_seconds: float) -> list[bytes]:
    """The chunks received since the last call, as received (no join, no copy); waits (400
    after ``timeout_seconds`` of silence) only when none is buffered; [] at the end."""
    while True:
        parts = body.take_parts()
        if parts or body.complete:
            return parts
        try:
            await asyncio.wait_for(body.wait_data(), timeout_seconds)
        except TimeoutError:
            raise BadRequest(TIMEOUT_MESSAGE) from None


async def exact_parts(length: int, timeout_seconds: float) -> AsyncIterator[list[bytes]]:
    """The request body as lists of received chunks; 400 once it passes ``length`` or ends
    short. A large body is never joined on the event loop."""
    body = request.body
    if not isinstance(body, BoundedBody):
        async for chunk in exact_chunks(length, timeout_seconds):
            yield [chunk]
        return
    received = 0
    while parts := await next_parts(body, timeout_seconds):
        for part in parts:
            received += len(part)
        check_received(received, length, ended=False)
        yield parts
    check_received(received, length, ended=True)


class ClientGoneError(Exception):
    """The client closed the connection before its request body was complete."""


class RequestBody(Protocol):
    """A record's request body as the write path takes it (``records.store``)."""

    @property
    def buffered(self) -> bool:
        """True if some of the body has arrived already (no early answer to wait for)."""

    async def read(self, length: int) -> bytes:
        """The whole body, which must be exactly ``length`` bytes (400 otherwise)."""

    def parts(self, length: int) -> AsyncIterator[list[bytes]]:
        """The body as lists of received chunks, exactly ``length`` bytes (400 otherwise)."""


class QuartBody:
    """The body of the Quart request being handled, as a ``RequestBody``."""

    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = timeout_seconds

    @property
    def buffered(self) -> bool:
        """True if the connection has received some of the body already."""
        body = request.body
        return isinstance(body, BoundedBody) and body.buffered > 0

    async def read(self, length: int) -> bytes:
        """``read_small_body``."""
        return await read_small_body(length, self._timeout)

    def parts(self, length: int) -> AsyncIterator[list[bytes]]:
        """``exact_parts``."""
        return exact_parts(length, self._timeout)


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


class Pipeline:
    """Hands body pieces to a blocking ``sink`` in worker-thread hops while more arrive.

    Receiving piece N+1 on the event loop overlaps writing piece N in a worker thread: a hop
    drains every piece queued so far (and those that arrive while it runs) with one ``sink``
    call per drained group, so a fast client costs a few hops per record, not one per chunk,
    and a slow one never pins a thread while idle. A hop starts once ``hop_bytes`` are queued
    (a hop per 64 KiB socket read would cost more wake-ups than the overlap gains). At most one
    hop runs at a time (pieces stay in order; the sink needs no lock) and ``put`` waits once
    more than ``limit`` bytes are queued, so memory stays bounded whatever the disk's speed.
    ``close`` hands its last step to a hop still draining rather than starting one of its own:
    the answer waits for no thread hand-off after the last piece is written.
    """

    def __init__(
        self,
        services: Services,
        sink: Callable[[list[Any]], Any],
        limit: int = PIPELINE_BYTES,
        hop_bytes: int = PIPELINE_HOP_BYTES,
    ) -> None:
        self._workers = services.workers
        self._sink = sink
        self._limit = limit
        self._hop_bytes = hop_bytes
        self._queue: deque[Any] = deque()  # appended by the loop, popped by the hop thread
        self._received = 0  # bytes queued so far (written by the loop only)
        self._written = 0  # bytes handed to the sink so far (written by the hop only)
        self._hop: asyncio.Future[Any] | None = None
        # ``close`` and a hop deciding to end agree under this lock: either the hop takes
        # ``_last`` (set while ``_taking``), or it has stopped taking and ``close`` starts a hop.
        self._lock = threading.Lock()
        self._taking = False  # a hop is running and will still look at ``_last``
        self._last: Callable[[], Any] | None = None

    def _drain(self, last: Callable[[], T] | None) -> T | None:
        """In a worker thread: sink every queued piece, group by group, then ``last()`` (given,
        or handed over by ``close`` meanwhile); None if there was no last step to run."""
        queue = self._queue
        while True:
            while queue:
                group = []
                size = 0
                while queue:
                    piece, n = queue.popleft()
                    group.append(piece)
                    size += n
                self._sink(group)
                self._written += size
            with self._lock:
                if queue:
                    continue  # queued while the lock was awaited: this hop writes it too
                if last is None:
                    last = self._last
                self._taking = False
            return last() if last is not None else None

    def _start(self, last: Callable[[], T] | None) -> None:
        """Start a hop (none is running)."""
        self._taking = True
        self._hop = self._workers.start(self._drain, last)

    async def put(self, piece: Any, size: int) -> None:
        """Queue ``piece`` (``size`` bytes); raises the error of a hop that failed."""
        self._queue.append((piece, size))
        self._received += size
        hop = self._hop
        if hop is not None and hop.done():
            self._hop = None
            hop.result()
            hop = None
        queued = self._received - self._written
        if hop is None:
            if queued >= self._hop_bytes:  # fewer, larger hops: each costs two wake-ups
                self._start(None)
        elif queued > self._limit:
            await self._settle()

    async def _settle(self) -> Any:
        """Await the hop in flight (shielded: a cancelled caller leaves it to ``quiesce``)."""
        hop = self._hop
        if hop is None:
            return None
        result = await asyncio.shield(hop)
        self._hop = None
        return result

    async def close(self, last: Callable[[], T]) -> T:
        """Sink what is left and return ``last()``, run in a worker thread after the last piece
        is written: by the hop in flight if it is still draining, else by a new hop once it
        ended (finishing a record costs no hop of its own)."""
        if self._hop is not None:
            with self._lock:
                handed = self._taking
                if handed:
                    self._last = last
            if handed:
                return await self._settle()  # type: ignore[no-any-return]
            await self._settle()
        self._start(last)
        return await self._settle()  # type: ignore[no-any-return]

    async def quiesce(self) -> None:
        """Wait for a hop in flight, ignoring its outcome (before aborting what it wrote)."""
        hop, self._hop = self._hop, None
        if hop is not None:
            await asyncio.wait([hop])
            if not hop.cancelled():
                hop.exception()  # retrieved: the caller is already handling a failure


class RecordSink:
    """A record writer that the first hop writing to it opens (``begin`` runs in that worker
    thread: one hop less per record), for a ``Pipeline``."""

    def __init__(self, begin: Callable[[], Any], then: Callable[[], Any] | None = None) -> None:
        self._begin = begin
        self._then = then  # runs in the finishing hop, after the record is FINISHED
        self.writer: Any = None

    def open(self) -> None:
        """Open the writer now (reserves the record; raises the engine's refusal)."""
        if self.writer is None:
            self.writer = self._begin()

    def write(self, groups: list[list[bytes]]) -> None:
        """Open the writer if needed and write the chunks of ``groups`` in order."""
        writer = self.writer
        if writer is None:
            writer = self.writer = self._begin()
        for chunks in groups:
            writer.write_many(chunks)  # a pwritev a group (a MiB at most), not a pwrite a chunk

    def finish(self) -> None:
        """Complete the record (FINISHED), then run ``then``."""
        if self.writer is None:
            self.writer = self._begin()
        self.writer.finish()
        if self._then is not None:
            self._then()

    def abort(self, reason: str) -> None:
        """Make an opened record ERRORED (no-op when finished or never opened)."""
        if self.writer is not None:
            self.writer.abort(reason)


async def write_streamed(
    services: Services,
    sink: RecordSink,
    parts: AsyncIterator[list[bytes]],
    open_first: bool = False,
) -> None:
    """Write one record from ``parts`` (lists of chunks) through a ``Pipeline``. Client gone
    before its body was complete, short body or engine failure: the record ends ERRORED, never
    FINISHED, and the entry stays writable (a client gone once the whole body arrived, while
    the last hop runs, may leave it FINISHED: all of it was received). ``open_first``: open the
    record before waiting for the body, so a refusal (404, 409...) is answered while the client
    may still be waiting to send it."""
    pipe = Pipeline(services, sink.write)
    try:
        if open_first:
            await services.workers.run_through(
                sink.open, on_cancel=lambda _: sink.abort("client disconnected")
            )
        async for chunks in parts:
            await pipe.put(chunks, sum(map(len, chunks)))
        await pipe.close(sink.finish)
    except BaseException as exc:
        gone = isinstance(exc, (asyncio.CancelledError, ClientGoneError))
        reason = "client disconnected" if gone else str(exc)
        await finish_cleanup(_abandon(services, pipe, sink, reason))
        raise


async def finish_cleanup(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if the caller is cancelled meanwhile (the server
    cancels a handler whose client went away): the handler must not end, and its record be
    looked at, before the record is aborted and no hop writes to it any more."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def _abandon(services: Services, pipe: Pipeline, sink: RecordSink, reason: str) -> None:
    await pipe.quiesce()
    await services.workers.run(sink.abort, reason)


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
