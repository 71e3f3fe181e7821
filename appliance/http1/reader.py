"""Received bytes handed to Hypercorn as the socket gave them, not through a byte buffer.

Hypercorn reads a connection through asyncio's ``StreamReader``: every chunk the transport
receives is appended to a ``bytearray`` (``feed_data``: a copy), and each ``read(65536)``
slices it (a copy) into a new ``bytes`` (a third copy). For a 1 MiB request body that is
3 MiB of copying and 32 new buffers on the event loop, on top of the socket's own copy; the body
pass-through of ``body`` then hands the resulting chunks on without copying.

``ChunkReader`` keeps the received ``bytes`` objects themselves, in a queue, and ``read(n)``
returns the next one whole when it fits in ``n`` (else its next ``n`` bytes, cut from an
offset): no copy for a chunk of up to ``n`` bytes, one for a larger one. Flow control is the
stock reader's, counted over the queue: the transport is paused past twice the reader's limit
and resumed once it is drained to the limit. EOF, errors (``set_exception``) and the waiter are
the stock reader's own.

Only ``read`` and ``at_eof`` are served from the queue, which is all Hypercorn's
``TCPServer._read_data`` uses; the line-oriented reads (``readline``, ``readuntil``,
``readexactly``) refuse rather than read the empty stock buffer. ``adopt`` turns a
connection's ``StreamReader`` into one, taking over what it buffered already; it requires the
stock attributes this relies on (checked by ``supported``), else the reader stays as it is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, NoReturn

# What a transport hands ``data_received`` at most: asyncio's selector transport reads 256 KiB,
# uvloop 256,000 bytes. Hypercorn reading this much at a time gets every chunk whole.
WHOLE_CHUNK_BYTES = 256 * 1024
# The stock StreamReader's attributes this class uses (CPython 3.11's; ``supported`` checks
# them on every connection).
_STOCK_ATTRIBUTES = ("_buffer", "_eof", "_exception", "_limit", "_paused", "_transport")


class ChunkReader(asyncio.StreamReader):
    """A ``StreamReader`` whose received bytes stay the transport's own objects (see module)."""

    _chunks: deque[bytes]
    _queued: int  # bytes in ``_chunks`` not read yet
    _pos: int  # bytes of ``_chunks[0]`` read already

    def feed_data(self, data: bytes) -> None:
        """Queue a received chunk (the transport's ``bytes``, not copied); pause past the
        limit."""
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        if type(data) is not bytes:  # a memoryview or bytearray may be reused by its sender
            data = bytes(data)
        self._chunks.append(data)
        self._queued += len(data)
        self._wakeup_waiter()
        if self._transport is not None and not self._paused and self._queued > 2 * self._limit:
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None  # as the stock reader: a transport that can't pause
            else:
                self._paused = True

    def _maybe_resume_transport(self) -> None:
        if self._paused and self._queued <= self._limit:
            self._paused = False
            self._transport.resume_reading()

    def at_eof(self) -> bool:
        """True once EOF was fed and every queued chunk was read."""
        return self._eof and not self._chunks

    async def read(self, n: int = -1) -> bytes:
        """The next received chunk if it has at most ``n`` bytes, else its next ``n`` bytes
        (``n`` < 0: everything up to EOF); ``b""`` at EOF."""
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        if n < 0:
            parts = []
            while not self.at_eof():
                parts.append(await self.read(self._limit))
            return b"".join(parts)
        if not self._chunks and not self._eof:
            await self._wait_for_data("read")
        if not self._chunks:
            return b""
        chunk = self._chunks[0]
        pos = self._pos
        if pos == 0 and len(chunk) <= n:
            self._chunks.popleft()  # the common case: the transport's bytes, not copied
        else:
            # Cut from an offset, so a chunk larger than ``n`` is copied once in all.
            end = pos + n
            if end >= len(chunk):
                self._chunks.popleft()
                end = len(chunk)
                self._pos = 0
            else:
                self._pos = end
            chunk = chunk[pos:end]
        self._queued -= len(chunk)
        self._maybe_resume_transport()
        return chunk

    async def readline(self) -> NoReturn:
        """Not served by a chunk queue (Hypercorn reads with ``read`` only)."""
        raise NotImplementedError("ChunkReader serves read() only")

    async def readuntil(self, separator: bytes = b"\n") -> NoReturn:
        """Not served by a chunk queue (Hypercorn reads with ``read`` only)."""
        raise NotImplementedError("ChunkReader serves read() only")

    async def readexactly(self, n: int) -> NoReturn:
        """Not served by a chunk queue (Hypercorn reads with ``read`` only)."""
        raise NotImplementedError("ChunkReader serves read() only")


def supported(reader: Any) -> bool:
    """Whether ``reader`` is a plain ``StreamReader`` with the attributes ``ChunkReader`` uses."""
    return type(reader) is asyncio.StreamReader and all(
        hasattr(reader, name) for name in _STOCK_ATTRIBUTES
    )


def adopt(reader: Any) -> bool:
    """Turn a connection's ``StreamReader`` into a ``ChunkReader`` in place (what it buffered
    already becomes the first chunk); False, and nothing changed, if it is not a supported one."""
    if not supported(reader):
        return False
    buffered = bytes(reader._buffer)  # noqa: SLF001 - checked by ``supported``
    reader._buffer.clear()  # noqa: SLF001
    reader._chunks = deque([buffered] if buffered else ())
    reader._queued = len(buffered)
    reader._pos = 0
    reader.__class__ = ChunkReader
    return True


def make_read_data(stock: Any) -> Any:
    """Hypercorn's ``TCPServer._read_data``, reading through a ``ChunkReader``."""

    async def _read_data(self: Any) -> None:
        """``TCPServer._read_data`` with the connection's reader made a ``ChunkReader``."""
        adopt(self.reader)
        await stock(self)

    _read_data.stock = stock  # type: ignore[attr-defined]
    return _read_data
