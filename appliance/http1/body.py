"""Request bodies handed to the app as they arrive from the socket, not through h11's buffer.

For every chunk of a request body Hypercorn calls h11's ``receive_data`` (the chunk copied
onto a ``bytearray``), then ``next_event`` twice (the ``ContentLengthReader`` copies it out
again and shifts the buffer; the state machine runs), then wraps the ``Data`` in a ``Body``
whose ``bytes()`` copies it a third time. For a 1 MiB record that is 16 chunks of 64 KiB
and about a third of the event loop's time (py-spy, single 1 MiB writes).

``make_handle`` wraps ``H11Protocol.handle``: a chunk that arrives while h11 reads a body of
a known length, with nothing buffered before it, and fits in what is left of that body, goes
to the stream as a ``Body`` of that very ``bytes`` object, and h11's reader is told it was
read (its ``_remaining``). That is all h11 does for such a ``Data`` event: its state machine
has no transition on it, and the 100-continue flag it would clear is required clear (once
Hypercorn answered ``100 Continue``, it is). The chunk that completes the body goes the
stock way, and h11 produces the ``EndOfMessage`` as before. Anything else (a chunked body, a
chunk with the next request in it, bytes already buffered, no stream, an upgraded
connection, a closed receive side) goes to Hypercorn's own ``handle``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h11
from h11._readers import ContentLengthReader
from hypercorn.events import RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.h11 import STREAM_ID

Handle = Callable[[Any, Any], Awaitable[None]]
_SEND_BODY = h11.SEND_BODY


def make_handle(stock: Handle) -> Handle:
    """Hypercorn's ``H11Protocol.handle`` with body chunks passed through (see the module)."""

    async def handle(self: Any, event: Any) -> None:
        """``H11Protocol.handle``: a body chunk h11 would only copy goes straight through."""
        if type(event) is RawData:
            conn = self.connection
            data = event.data
            if (
                type(conn) is h11.Connection
                and conn.their_state is _SEND_BODY
                and type(data) is bytes
                and self.stream is not None
            ):
                reader = conn._reader  # noqa: SLF001 - h11's body reader, checked below
                if (
                    type(reader) is ContentLengthReader
                    and 0 < len(data) < reader._remaining  # noqa: SLF001
                    and not conn._receive_buffer  # noqa: SLF001
                    and not conn._receive_buffer_closed  # noqa: SLF001
                    and not conn.client_is_waiting_for_100_continue
                ):
                    reader._remaining -= len(data)  # noqa: SLF001
                    await self.stream.handle(Body(stream_id=STREAM_ID, data=data))
                    return
        await stock(self, event)

    handle.stock = stock  # type: ignore[attr-defined]
    return handle
