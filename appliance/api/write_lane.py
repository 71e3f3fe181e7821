"""Single-record writes answered below Quart.

``POST /b/{bucket}/{entry}?ts=`` is the most frequent request of an edge device, and for a
small record Quart's request machinery costs more than the write: the request object and its
context, routing, two tasks (one feeding the body, one running the handler) and the response
object, ~1/3 of the event loop's time per request where the write is ~1/6 (py-spy). For a
1 MiB record the same machinery, plus Quart's body object woken for every 64 KiB chunk, is
~1/5 of the loop's time.

``WriteLane.serve`` answers such a request itself, from the ASGI scope and ``receive``, with the
pieces the Quart handler uses: ``params`` for the timestamp, length, content type and labels,
``access.scope_token`` and ``require_write`` for the caller, the roles check, ``records.store``
for the write, ``response.error_response`` for an error, the audit record and the request
metrics. It only takes the plain case; everything else returns None *before anything was read
or changed*, and the request goes to Quart, which answers it exactly as it always did:

- not an HTTP/1.1 ``POST`` of ``/b/{bucket}/{entry}`` (batch and query paths are not),
  a root path, a query string other than ``ts=<digits>``;
- a body not framed by ``content-length`` (chunked), or an ``expect`` header (``100
  Continue`` is Hypercorn's to send on Quart's first read);
- a name, a header, a token or a role that Quart would refuse (the error is Quart's to give);
- a lease holder (its fence hooks around the handler are Quart's).

Once the lane took a request it answers it as Quart would have: the same status, headers and
body, for a stored record and for each error (a short body, a silent client, a refusal by the
engine...), with the connection kept (an unread body of up to ``DRAIN_LIMIT_BYTES`` drained
after the answer) or closed as ``ApplianceConnection`` decides. One difference is left on
purpose: once the whole body has arrived the lane no longer looks for a disconnect, so a
client that goes away while its record is written finds it stored (Quart's path cancelled
the handler there, stored or not depending on the moment; a streamed record already ended
FINISHED then). ``APPLIANCE_WRITE_LANE=off``
sends every request to Quart (a benchmark knob, like ``APPLIANCE_READ_LANE``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quart.utils import encode_headers

from appliance.api import params
from appliance.api.access import scope_token
from appliance.api.connection import DRAIN_LIMIT_BYTES
from appliance.api.records import store
from appliance.api.response import (
    ApiResponse,
    error_response,
    report_error,
    report_unexpected,
    unexpected_response,
)
from appliance.api.streaming import TIMEOUT_MESSAGE, ClientGoneError, check_received
from appliance.auth import require_write
from appliance.errors import ApplianceError, BadRequest

if TYPE_CHECKING:
    from appliance.services import Services

LANE_ENV = "APPLIANCE_WRITE_LANE"
_TIMESTAMP = re.compile(rb"ts=([0-9]+)")  # werkzeug would decode nothing in it
_NOT_OURS = (b"transfer-encoding", b"expect")
Send = Callable[[Any], Awaitable[None]]
Receive = Callable[[], Awaitable[Any]]


class ReceivedBody:
    """A request body read straight from the server's ``receive``, as a ``RequestBody``.

    Messages the server has queued already are taken without waiting (Hypercorn's ``receive``
    is an ``asyncio.Queue``'s ``get``); waiting for one more is bounded by ``timeout`` seconds
    of silence (400 ``Timeout while receiving data``, as Quart's path says). A disconnect
    raises ``ClientGoneError``.
    """

    def __init__(self, receive: Receive, timeout_seconds: float) -> None:
        self._receive = receive
        queue = getattr(receive, "__self__", None)
        self._queue = queue if isinstance(queue, asyncio.Queue) else None
        self._timeout = timeout_seconds
        self.received = 0  # body bytes taken so far
        self.ended = False  # the body's last message (or a disconnect) was taken

    @property
    def buffered(self) -> bool:
        """True if the server has queued a message of the body already (unknown: False)."""
        return self._queue is not None and not self._queue.empty()

    async def _message(self) -> Any:
        queue = self._queue
        if queue is not None and not queue.empty():
            return queue.get_nowait()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._receive()
        except TimeoutError:
            raise BadRequest(TIMEOUT_MESSAGE) from None

    async def chunk(self) -> bytes | None:
        """The next non-empty piece of the body, None at its end."""
        while not self.ended:
            message = await self._message()
            if message["type"] != "http.request":  # http.disconnect
                self.ended = True
                raise ClientGoneError
            if not message.get("more_body", False):
                self.ended = True
            data = message.get("body", b"")
            if data:
                self.received += len(data)
                return data  # type: ignore[no-any-return]
        return None

    async def read(self, length: int) -> bytes:
        """The whole body, exactly ``length`` bytes (400 otherwise)."""
        parts = []
        while (data := await self.chunk()) is not None:
            parts.append(data)
            check_received(self.received, length, ended=False)
        check_received(self.received, length, ended=True)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def parts(self, length: int) -> AsyncIterator[list[bytes]]:
        """The body as lists of received pieces, exactly ``length`` bytes (400 otherwise): a
        list holds every piece queued by then (as Quart's body hands them over)."""
        while (data := await self.chunk()) is not None:
            group = [data]
            while self.buffered and (data := await self.chunk()) is not None:
                group.append(data)
            check_received(self.received, length, ended=False)
            yield group
        check_received(self.received, length, ended=True)

    async def drain(self) -> None:
        """Read and drop the rest of the body; gives up when the client goes silent or away
        (Hypercorn then closes the connection), as ``ApplianceConnection._drain`` does."""
        try:
            while await self.chunk() is not None:
                pass
        except (BadRequest, ClientGoneError):
            return


class WriteLane:
    """Answers ``POST /b/{bucket}/{entry}?ts=`` without Quart."""

    def __init__(self, svc: Services, prefix: str, route: str) -> None:
        self.svc = svc
        self._prefix = prefix + "/b/"
        self.route = route  # the URL rule template, for the request metrics

    def match(self, scope: dict[str, Any]) -> tuple[str, str, int] | None:
        """(bucket, entry, timestamp) of a plain single-record write, else None."""
        if (
            scope["method"] != "POST"
            or scope.get("root_path")
            or scope.get("http_version") != "1.1"
        ):
            return None
        path: str = scope["path"]
        if not path.startswith(self._prefix):
            return None
        bucket, _, entry = path[len(self._prefix):].partition("/")
        # The sub-resources ``entries.dispatch`` sends elsewhere for a POST.
        if not bucket or not entry or entry.endswith(("/batch", "/q")):
            return None
        found = _TIMESTAMP.fullmatch(scope["query_string"])
        if found is None:
            return None
        ts = params.parse_u64(found.group(1).decode("latin1"))
        return None if ts is None else (bucket, entry, ts)

    def _take(
        self, scope: dict[str, Any]
    ) -> tuple[str, str, int, int, str, dict[str, str], str | None, str | None] | None:
        """Everything the handler checks before the body, as it checks it: (bucket, entry,
        timestamp, length, content type, labels, token name, IP); None for anything Quart
        is to answer."""
        matched = self.match(scope)
        if matched is None:
            return None
        raw = scope["headers"]
        for name, _ in raw:
            if name in _NOT_OURS:
                return None
        if params.header(raw, b"content-length") is None:
            return None
        svc = self.svc
        if svc.fence.timed:
            return None
        bucket, entry, ts = matched
        try:
            params.bucket_name(bucket)
            params.entry_name(entry)
            token, ip = scope_token(svc, scope)
            require_write(token.name, token.permissions, bucket)
            svc.fence.check(io=False)
            length = params.content_length(raw)
            ctype = params.content_type(raw)
            labels = params.labels(raw)
        except ApplianceError:
            return None  # Quart refuses it, with the same error
        return bucket, entry, ts, length, ctype, labels, token.name, ip

    async def serve(self, scope: dict[str, Any], receive: Receive, send: Send,
                    extra: list[tuple[bytes, bytes]]) -> str | None:
        """Answer the request if it is a plain single-record write: the route template (for
        the metrics); None, with nothing read or changed, otherwise."""
        started = time.perf_counter()
        taken = self._take(scope)
        if taken is None:
            return None
        bucket, entry, ts, length, ctype, labels, token_name, ip = taken
        svc = self.svc
        body = ReceivedBody(receive, svc.settings.io_operation_timeout)
        failed: ApiResponse | None = None
        try:
            await store(svc, bucket, entry, ts, length, ctype, labels, body)
        except ClientGoneError:
            return self.route  # no one to answer (Quart's path is cancelled there)
        except ApplianceError as exc:
            report_error(exc)
            failed = error_response(exc.status, exc.public_message)
        except Exception as exc:  # noqa: BLE001 - answered as Quart's last error handler does
            report_unexpected("POST", scope["path"])
            failed = unexpected_response(exc)
        if failed is None:
            status, payload = 200, b""
            egress = 0
            headers = [(b"content-length", b"0"), *extra]
            drain = False
        else:
            status, payload = failed.status_code, await failed.get_data()
            egress = len(payload)
            headers = [*encode_headers(failed.headers), *extra]
            unread = 0 if body.ended else max(length - body.received, 0)
            if unread > DRAIN_LIMIT_BYTES:
                headers.append((b"connection", b"close"))
            drain = not body.ended and unread <= DRAIN_LIMIT_BYTES
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if drain:
            # The whole answer first (a client may wait for it before sending its body), then
            # the rest of the body read, then the end: Hypercorn keeps the connection only if
            # the body was read by then.
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            await body.drain()
            payload = b""
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        events = svc.events
        if events.enabled:
            events.request_done(token_name, "POST", scope["path"], status, ip, length,
                                egress, time.perf_counter() - started)
        return self.route
