"""Batched reads whose batch is ready, answered inside Hypercorn's HTTP/1 protocol.

The read lane (``read_lane.ReadLane``) answers a batched read below Quart, but still as an
ASGI app: for every request h11 parses the head and runs its state machine, Hypercorn builds
a stream, a scope and a task, passes the response through its send path, h11 checks and
writes ~90 headers, and the keep-alive timer is stopped and restarted. A bare ASGI callable
that only replays ready responses costs 4.9 µs of server CPU a 1 KiB record that way, about
all that three times PostgreSQL's CPU allows for the whole read
(``tests/bench/bench_reads_floor.py``).

``ProtocolLane.answer`` runs in ``H11Protocol.handle`` (``appliance.http1.early``) for the
bytes read while no request is in flight. It takes them only when they are exactly one whole
``GET`` head, on a keep-alive HTTP/1.1 connection whose h11 state is idle with nothing
buffered, the head is one h11 would accept as it is (its request-line pattern and header byte
classes, ``http1.request_head``), it carries exactly one ``Host`` and no framing, ``Expect``,
``Upgrade`` or ``Connection`` header other than ``keep-alive``, and the read lane claims the
batch (``ReadLane.claim``: the same name, token, role and batch checks as the ASGI lane). Then
h11 never sees the request: its state stays idle, as it is between requests. The answer is the
bytes h11 would write for the ASGI lane's response: the status line, the batch's header lines
checked ahead (``queries.encode_batch``), the content length, the common and CORS headers and
Hypercorn's ``date``, ``connection: close`` when Hypercorn's cap of requests per connection is
reached; one write with the body up to ``JOIN_BYTES``. Then what Hypercorn does at a request's
end: the request counted for that cap and the worker's, the connection closed or the keep-alive
timer restarted (not after every request: an idle connection is closed within 1 % of the
timeout, ``IDLE_RESTART_FRACTION``); and what the ASGI lane does: the batch metric, the next
batch started, the audit record, the request metric and the access log line.

Anything else returns False before anything changed, and Hypercorn handles the bytes as it
always did (h11, and Quart or the ASGI lane). ``APPLIANCE_PROTOCOL_LANE=off`` turns it off
(a benchmark knob); so do ``APPLIANCE_READ_LANE=off`` and ``APPLIANCE_HTTP_PARSER=h11``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import h11
from h11._state import IDLE
from hypercorn.events import Closed, RawData, Updated

from appliance.api.connection import HttpPolicy, observe
from appliance.http1.headers import values_are_clean
from appliance.http1.request_head import REQUEST_LINE_RE, split_lines

if TYPE_CHECKING:
    from appliance.api.queries import EncodedBatch
    from appliance.api.read_lane import ReadLane

log = logging.getLogger(__name__)

LANE_ENV = "APPLIANCE_PROTOCOL_LANE"
# After a request answered here the keep-alive timer is restarted only if this share of its
# timeout has passed since this lane last restarted it (a restart is a task cancelled and
# one created, ~30 µs): an idle connection is closed at most 1 % of the timeout early.
IDLE_RESTART_FRACTION = 0.01
# Head and body go out joined, as one write, up to this body size; above it, two writes.
JOIN_BYTES = 256 * 1024
_HEAD_END = b"\r\n\r\n"
_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
# Header names that change how h11 frames the request or treats the connection.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_IDLE_AT = "_appliance_idle_at"


class ProtocolLane:
    """Answers ready batched reads in Hypercorn's ``H11Protocol`` (see the module)."""

    def __init__(self, policy: HttpPolicy, lane: ReadLane) -> None:
        self.policy = policy
        self.lane = lane
        self._v1 = lane.v1_prefix.encode()
        self._v2 = lane.v2_prefix.encode()
        self._date = (0, b"")

    def _server_lines(self, config: Any) -> bytes:
        """The lines of the headers Hypercorn adds to every response
        (``Config.response_headers``: ``date``), made again when the second changes."""
        now = int(time.time())
        second, lines = self._date
        if second != now:
            lines = b"".join([b"%s: %s\r\n" % pair for pair in config.response_headers("h11")])
            self._date = (now, lines)
        return lines

    def _request(self, protocol: Any, data: bytes) -> dict[str, Any] | None:
        """The ASGI scope (the parts the lanes read) of ``data`` if it is one whole plain
        ``GET`` head with a batched read's target that h11 would take as it is; else None."""
        if not data.startswith(b"GET ") or data.find(_HEAD_END) != len(data) - 4:
            return None
        # The target's shape first: every other GET costs only this (the request line is
        # checked against h11's pattern below).
        target = data[4 : data.find(b" ", 4)]
        if target.startswith(self._v2):
            if not target.endswith(b"/read"):
                return None
        elif not (target.startswith(self._v1) and b"/batch?" in target):
            return None
        conn = protocol.connection
        if (
            type(conn) is not h11.Connection
            or conn.our_state is not IDLE
            or conn.their_state is not IDLE
            or conn._receive_buffer  # noqa: SLF001 - bytes h11 holds: not ours to reorder
            or len(data) > conn._max_incomplete_event_size  # noqa: SLF001 - h11's 431
        ):
            return None
        lines = data[:-4].split(b"\r\n")
        line = REQUEST_LINE_RE.fullmatch(lines[0])
        if (
            line is None
            or line.group("http_version") != b"1.1"
            or line.group("target") != target
            or len(lines) < 2
        ):
            return None
        columns = split_lines(lines[1:])
        if columns is None:
            return None
        names = list(map(bytes.lower, columns[0]))
        values = columns[1]
        if names.count(b"host") != 1 or not _FRAMING.isdisjoint(names):
            return None
        if b"connection" in names:
            at = names.index(b"connection")
            if names.count(b"connection") > 1 or values[at].lower() != b"keep-alive":
                return None
        path, _, query_string = target.partition(b"?")
        if b"%" in path:
            return None  # percent-decoding: Hypercorn's to do
        # (h11's request-line pattern takes only printable ASCII: the decoding cannot fail.)
        return {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https" if protocol.ssl else "http",
            "path": path.decode("ascii"),
            "raw_path": path,
            "query_string": query_string,
            "root_path": protocol.config.root_path,
            "headers": list(zip(names, values)),
            "client": protocol.client,
            "server": protocol.server,
        }

    async def answer(self, protocol: Any, data: bytes) -> bool:
        """Answer ``data`` (the bytes just read) if it is a ready batched read; True if it
        was answered, False (nothing changed) if Hypercorn is to handle it."""
        if protocol.context.terminated.is_set() or not self.policy.is_ready():
            return False
        started = time.perf_counter()
        scope = self._request(protocol, data)
        if scope is None:
            return False
        extra = self.policy.extra_headers(scope)
        tail = [*extra]
        stopped = False
        block: bytes | None = None  # the batch's checked header lines, once claimed

        async def waiting() -> None:
            nonlocal stopped
            stopped = True
            await protocol.send(Updated(idle=False))  # as Hypercorn does for a request

        def sendable(encoded: EncodedBatch, body: bytes) -> bool:
            """Whether the batch's header lines were checked ahead, its content length is
            that of ``body``, and the headers added here are clean."""
            nonlocal block
            lines = encoded.lines
            if lines is None or encoded.length != b"%d" % len(body):
                return False
            tail.insert(0, (b"content-length", encoded.length))
            if not values_are_clean([value for _, value in tail]):
                return False
            block = lines
            return True

        try:
            claimed = await self.lane.claim(scope, waiting, sendable)
        except Exception:  # noqa: BLE001 - a bug here must not cost the connection
            log.exception("protocol lane: claiming a batch failed; Quart answers the request")
            claimed = None
        if claimed is None:
            if stopped:
                await protocol.send(Updated(idle=True))
            return False
        assert block is not None  # sendable() kept it: the claim passed through it
        config = protocol.config
        protocol.keep_alive_requests += 1
        close = protocol.keep_alive_requests >= config.keep_alive_max_requests
        lines = b"".join([b"%s: %s\r\n" % pair for pair in tail])
        head = b"".join((
            _STATUS_LINE,
            block,
            lines,
            self._server_lines(config),
            b"connection: close\r\n\r\n" if close else b"\r\n",
        ))
        await protocol.context.mark_request()
        body = claimed.body
        if len(body) <= JOIN_BYTES:
            await protocol.send(RawData(data=head + body))
        else:  # copying a large body costs more than a second write (1 MiB records: +20 % CPU)
            await protocol.send(RawData(data=head))
            await protocol.send(RawData(data=body))
        if close or protocol.context.terminated.is_set():
            await protocol.send(Closed())
        else:
            now = time.monotonic()
            since = now - protocol.__dict__.get(_IDLE_AT, 0.0)
            if stopped or since >= config.keep_alive_timeout * IDLE_RESTART_FRACTION:
                setattr(protocol, _IDLE_AT, now)
                await protocol.send(Updated(idle=True))
        try:
            route = self.lane.finish(claimed, scope["path"], started)
            observe(self.policy, scope, started, 200, len(claimed.body), route)
        except Exception:  # noqa: BLE001 - the answer is out; the next request will tell
            log.exception("protocol lane: after answering a batched read")
        return True
