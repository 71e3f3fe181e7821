"""The ASGI connection of the app: common headers, startup gate, CORS, bounded request bodies.

These run for every request, so they live below Quart's request machinery (no before/after
request hooks): ``x-reduct-api`` and ``Server`` are appended to every response start message
(success, error, 404 fallback, 204, 503), the startup gate answers 503 before routing, and CORS
headers are added for allowed origins (spec §0.1, §0.3, §0.4).

Responses whose headers are already ASGI byte pairs and whose body is one ``bytes``
(``RawResponse``: batched reads, up to a few hundred headers each) are sent as they are, without
Quart's per-header encoding.

Quart's connection copies every received chunk into the request ``Body`` as fast as the socket
delivers, so a 1 GiB upload to a slower disk would pile up in RAM. ``ApplianceConnection``
stops pulling from the server once ``HIGH_WATER_BYTES`` are buffered and resumes when the
handler drains the body; Hypercorn's bounded app queue then pushes back on the TCP socket.

A response may leave before the request body was read (401/403/404/409/422/507 refusing a
write). HTTP/1.1 then must not simply reuse the connection: the unread body would be parsed as
the next request, and Hypercorn closes such a connection silently, so a client that reused it
lost its next request. A body of up to ``DRAIN_LIMIT_BYTES`` still to come is read and dropped
after the response (the connection stays usable); a bigger or chunked one gets
``Connection: close`` on the response, so the client knows not to reuse the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlparse

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import ASGIHTTPConnection, _normalise_path
from quart.typing import ResponseTypes
from quart.wrappers import Request
from quart.wrappers.request import Body
from werkzeug.datastructures import Headers
from werkzeug.exceptions import BadRequestKeyError, RequestEntityTooLarge

from appliance import metrics
from appliance.api.response import ApiResponse

HIGH_WATER_BYTES = 4 * 1024 * 1024
# An unread request body up to this size is drained after an early response (keep-alive
# kept); a bigger one closes the connection instead of costing the bandwidth.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024
POLICY_KEY = "appliance.http_policy"
NOT_READY_ROUTE = "(not ready)"
access_log = logging.getLogger("appliance.access")


class BoundedBody(Body):
    """A request body that tells the receiver when the handler has drained it.

    Received chunks are kept as a list rather than Quart's growing ``bytearray``: a chunk is
    handed on as it came (no copy) when it is alone, else the pending chunks are joined once,
    so a large body is copied at most once between the socket and the engine.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        self._parts: list[bytes] = []
        self._size = 0
        self.received = 0  # every byte appended so far, consumed or not
        self.drained = asyncio.Event()

    def _take(self) -> bytes:
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self._size = 0
        return data

    async def __anext__(self) -> bytes:
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._complete.is_set() and not self._size:
            raise StopAsyncIteration()
        data = self._take()
        self._has_data.clear()
        self.drained.set()
        return data

    def __await__(self) -> Generator[Any, None, Any]:
        if self._must_raise is not None:
            raise self._must_raise
        yield from self._complete.wait().__await__()
        if self._must_raise is not None:
            raise self._must_raise
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        self._parts.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        self.received += len(data)
        self._has_data.set()
        if self._max_content_length is not None and self._size > self._max_content_length:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()

    def clear(self) -> None:
        self._parts.clear()
        self._size = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._size

    @property
    def complete(self) -> bool:
        """True once the whole body has arrived."""
        return self._complete.is_set()

    def take_all(self) -> bytes:
        """Everything buffered (call only when ``complete``)."""
        return self._take()

    def take_parts(self) -> list[bytes]:
        """The chunks received and not consumed yet, as received (no copy); [] when none."""
        if self._must_raise is not None:
            raise self._must_raise
        parts = self._parts
        if not parts:
            return parts[:0]
        self._parts = []
        self._size = 0
        self._has_data.clear()
        self.drained.set()
        return parts

    async def wait_data(self) -> None:
        """Return once a chunk is buffered or the body is complete."""
        if not self._complete.is_set():
            await self._has_data.wait()


class RawResponse(ApiResponse):
    """A response built as ASGI header pairs (lower-case names) and one body ``bytes``.

    Quart still sees a normal (empty) response, so error handlers and hooks work as usual;
    ``ApplianceConnection`` sends ``raw_headers`` plus any header a hook set (other than the
    content length) and ``raw_body`` in one body message. ``raw_headers`` must carry the
    content length (for HEAD too, where the body is empty). ``after_send``, if set, runs on
    the event loop once the body was handed to the server (batched reads start collecting
    the next batch there, not while this one is being sent).
    """

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(b"", status=status)
        self.raw_headers = headers
        self.raw_body = body
        self.after_send: Callable[[], None] | None = None


class ApplianceRequest(Request):
    """Quart's request with a bounded body, and what the audit record needs kept on it."""

    body_class = BoundedBody
    # Set by ``access.authenticate``: the caller's token, for the audit record ($system).
    token_name: str | None = None
    # When the connection handed the request to the app (perf_counter), for its duration.
    started: float = 0.0
    _blueprints: tuple[object, list[str]] | None = None

    @property
    def blueprints(self) -> list[str]:
        """Quart's ``blueprints``, worked out once per matched rule (Quart asks for it in
        every hook round; each answer splits the endpoint name again)."""
        rule = self.url_rule
        cached = self._blueprints
        if cached is None or cached[0] is not rule:
            cached = self._blueprints = (rule, super().blueprints)
        return cached[1]


@dataclass(frozen=True)
class HttpPolicy:
    """What every response gets and when requests are turned away."""

    common: tuple[tuple[bytes, bytes], ...]
    origins: frozenset[str]
    allow_all_origins: bool
    alive_paths: frozenset[str]
    is_ready: Callable[[], bool]
    starting_message: str
    log_access: bool = False
    ungated_prefixes: tuple[str, ...] = ()
    # Answers batched reads whose batch is ready without Quart (``read_lane.ReadLane``).
    read_lane: Any = None
    # Answers plain single-record writes without Quart (``write_lane.WriteLane``).
    write_lane: Any = None

    def extra_headers(self, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """Common headers plus CORS headers for an allowed ``Origin``."""
        headers = list(self.common)
        if self.origins or self.allow_all_origins:
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            if origin and (self.allow_all_origins or origin.decode("latin1") in self.origins):
                headers.append((b"access-control-allow-origin", origin))
                headers.append((b"access-control-expose-headers", b"*"))
                if scope["method"] == "OPTIONS":
                    headers.append((b"access-control-allow-methods", b"*"))
                    headers.append((b"access-control-allow-headers", b"*"))
        return headers


def observe(policy: HttpPolicy, scope: dict[str, Any], started: float, status: int,
            nbytes: int, route: str | None) -> None:
    """Count a request by route template (Prometheus) and write its access log line."""
    seconds = time.perf_counter() - started
    if route is None and not policy.is_ready():
        route = NOT_READY_ROUTE
    metrics.observe_request(scope["method"], route, status, seconds)
    if policy.log_access:
        client = scope.get("client")
        query = scope.get("query_string") or b""
        target = scope["path"] + ("?" + query.decode("latin1") if query else "")
        access_log.info(
            '%s "%s %s HTTP/%s" %d %d %.1fms',
            client[0] if client else "-",
            scope["method"],
            target,
            scope.get("http_version", "1.1"),
            status,
            nbytes,
            seconds * 1000,
        )


def declares_body(scope: dict[str, Any]) -> bool:
    """True if the request announces a body (a non-zero length, or chunked)."""
    for name, value in scope["headers"]:
        if (name == b"content-length" and value.strip() not in (b"0", b"")) or (
            name == b"transfer-encoding"
        ):
            return True
    return False


async def _respond(
    send: ASGISendCallable, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
    scope: dict[str, Any],
) -> None:
    """An answer given before routing. Its request body is never read, so a request that has
    one gets ``Connection: close`` (the unread bytes must not pass for the next request)."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    if declares_body(scope):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[typeddict-item]
    await send({"type": "http.response.body", "body": body, "more_body": False})  # type: ignore[typeddict-item]


def _unread_body(scope: dict[str, Any], body: Body | None) -> int | None:
    """Bytes of the request body not received yet: 0 when complete, None when unknown
    (chunked, or a client waiting for ``100 Continue`` that may never send it)."""
    if body is None or body._complete.is_set():  # noqa: SLF001 - Quart's own flag
        return 0
    declared: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            return None
    if declared is None:
        return None if chunked else 0  # neither header: HTTP/1.1 says there is no body
    received = body.received if isinstance(body, BoundedBody) else 0
    return max(declared - received, 0)


def quart_header_pairs(raw: Any, remote_addr: str) -> list[tuple[str, str]]:
    """The header list Quart makes of the scope's raw pairs: ``Remote-Addr`` first, then each
    name title-cased, names and values decoded as latin-1."""
    pairs = [("Remote-Addr", remote_addr)]
    pairs += [(name.decode("latin1").title(), value.decode("latin1")) for name, value in raw]
    return pairs


class ScopeHeaders(Headers):
    """Werkzeug ``Headers`` over the ASGI scope's raw pairs, built only when needed.

    A batched write carries a header per record (1,000 a request) and the handlers read them
    from the raw scope; the title-cased ``str`` list Quart makes of them (~0.5 µs a header)
    was used only for a few lookups by name (``Content-Length``, ``Authorization``...), each a
    Python loop over all of them in werkzeug. Here a lookup by name is a C-level
    ``list.index`` over the raw lower-case names; anything else (iteration, ``getlist``,
    changes, ``len``) first builds the very list Quart would have (``_list``), which is the
    truth from then on.
    """

    def __init__(self, defaults: Any = None) -> None:
        self._raw: list[tuple[bytes, bytes]] | None = None
        self._names: list[bytes] | None = None
        self._addr = ""
        self._pairs: list[tuple[str, str]] = []
        super().__init__(defaults)

    @classmethod
    def from_scope(cls, raw: Any, remote_addr: str) -> ScopeHeaders:
        """Headers for the scope's raw ``(name, value)`` pairs and the ``Remote-Addr`` Quart
        puts first."""
        headers = cls()
        headers._raw = raw if type(raw) is list else list(raw)
        headers._addr = remote_addr
        return headers

    @property  # type: ignore[override]
    def _list(self) -> list[tuple[str, str]]:
        raw = self._raw
        if raw is not None:
            self._raw = None
            self._pairs = quart_header_pairs(raw, self._addr)
        return self._pairs

    @_list.setter
    def _list(self, value: list[tuple[str, str]]) -> None:
        self._raw = None
        self._pairs = value

    def _get_key(self, key: str) -> str:
        raw = self._raw
        if raw is None:
            return super()._get_key(key)
        names = self._names
        if names is None:
            names = [name for name, _ in raw]
            joined = b"".join(names)
            if not (joined.isascii() and joined == joined.lower()):
                # Not what HTTP/1 and HTTP/2 servers hand over: werkzeug's own comparison.
                return super()._get_key(key)
            self._names = names
        ikey = key.lower()
        if ikey == "remote-addr":
            return self._addr
        try:
            return raw[names.index(ikey.encode("latin1"))][1].decode("latin1")
        except (ValueError, UnicodeEncodeError):
            raise BadRequestKeyError(key) from None


def _scope_headers_agree() -> bool:
    """Whether ``ScopeHeaders`` answers as werkzeug's own ``Headers`` on sample headers.

    It relies on werkzeug's private ``_list`` and ``_get_key`` (werkzeug 3.x); another
    werkzeug that stored or looked up headers otherwise would see an empty or stale list.
    Checked once at import: if it disagrees, requests get werkzeug's ``Headers`` as before."""
    raw = [(b"host", b"h"), (b"content-length", b"5"), (b"x-reduct-time-1", b"1,a/b,k=v"),
           (b"x-a", b"1"), (b"x-a", b"2")]
    try:
        plain = Headers(quart_header_pairs(raw, "1.2.3.4"))
        lazy = ScopeHeaders.from_scope(list(raw), "1.2.3.4")
        lookups = all(
            lazy.get(key) == plain.get(key) and (key in lazy) == (key in plain)
            for key in ("Content-Length", "x-reduct-time-1", "X-A", "missing", "Remote-Addr")
        )
        return lookups and lazy.getlist("X-A") == plain.getlist("X-A") and (
            list(lazy.items()) == list(plain.items()) and len(lazy) == len(plain)
        )
    except Exception:  # noqa: BLE001 - any surprise: keep werkzeug's own class
        return False


SCOPE_HEADERS = _scope_headers_agree()


class ApplianceConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP connection with the policy above and back-pressure on bodies."""

    _request: Request | None = None

    def _create_request_from_scope(self, send: ASGISendCallable) -> Request:
        """Quart's request creation (quart/asgi.py, 0.20-0.22) with the header list made only
        when something needs it (``ScopeHeaders``) and never re-validated: ``Headers.add``
        validates each value again (~1.5 µs a header), and a batch of 1,000 records carries
        1,000 headers (issue 15). The server's HTTP parser (h11, h2) has already refused names
        and values that are not valid header text."""
        scope = self.scope
        remote = (scope.get("client") or ["<local>"])[0]
        if SCOPE_HEADERS:
            headers: Headers = ScopeHeaders.from_scope(scope["headers"], remote)
        else:  # a werkzeug ScopeHeaders does not agree with (see ``_scope_headers_agree``)
            headers = Headers()
            # werkzeug's storage, a list of (name, value): set directly, not re-validated
            headers._list = quart_header_pairs(scope["headers"], remote)  # noqa: SLF001
        if scope["http_version"] < "1.1":
            headers.setdefault("Host", self.app.config["SERVER_NAME"] or "")
        path = scope["path"]
        path = path if path[0] == "/" else urlparse(path).path
        root_path = scope.get("root_path", "")
        if root_path != "":
            path = _normalise_path(path, root_path)
        self._request = request = self.app.request_class(
            scope["method"],
            scope["scheme"],
            path,
            scope["query_string"],
            headers,
            root_path,
            scope["http_version"],
            max_content_length=self.app.config["MAX_CONTENT_LENGTH"],
            body_timeout=self.app.config["BODY_TIMEOUT"],
            send_push_promise=partial(self._send_push_promise, send),
            scope=scope,
        )
        request.started = time.perf_counter()
        return request

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        policy: HttpPolicy = self.app.extensions[POLICY_KEY]
        extra = policy.extra_headers(self.scope)  # type: ignore[arg-type]
        started = time.perf_counter()
        sent = [0, 0]  # status, body bytes: for the metrics and the access log
        drain = False

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                sent[0] = message["status"]
            elif message["type"] == "http.response.body":
                sent[1] += len(message.get("body", b""))
            await send(message)

        async def send_with_headers(message: Any) -> None:
            nonlocal drain
            if message["type"] == "http.response.start":
                headers = [*message["headers"], *extra]
                if self.scope["http_version"] == "1.1":
                    body = self._request.body if self._request is not None else None
                    unread = _unread_body(self.scope, body)  # type: ignore[arg-type]
                    if unread is None or unread > DRAIN_LIMIT_BYTES:
                        headers.append((b"connection", b"close"))
                    elif body is not None and not body._complete.is_set():  # noqa: SLF001
                        drain = True
                message = {**message, "headers": headers}
            elif drain and not message.get("more_body", False):
                # Before the response ends: Hypercorn decides at its end whether the
                # connection can serve another request (only if the body was read).
                drain = False
                await self._drain()
            await counted(message)

        scope = self.scope
        route = None  # the rule template of a request a lane answered
        try:
            path = scope["path"]
            if (
                not policy.is_ready()
                and path not in policy.alive_paths
                and not path.startswith(policy.ungated_prefixes)
            ):
                message = policy.starting_message
                headers = [
                    *extra,
                    (b"x-reduct-error", message.encode()),
                    (b"x-reduct-log-hint", b"skip-error-log"),
                    (b"content-type", b"application/json"),
                ]
                head = scope["method"] == "HEAD"
                body = b"" if head else json.dumps({"detail": message}).encode()
                await _respond(counted, 503, headers, body, scope)  # type: ignore[arg-type]
                return
            if scope["method"] == "OPTIONS" and (policy.origins or policy.allow_all_origins):
                await _respond(counted, 200, extra, b"", scope)  # type: ignore[arg-type]
                return
            if policy.read_lane is not None and scope["method"] == "GET":
                route = await policy.read_lane.serve(scope, counted, extra)
                if route is not None:
                    return
            elif policy.write_lane is not None and scope["method"] == "POST":
                route = await policy.write_lane.serve(scope, receive, counted, extra)
                if route is not None:
                    return
            await super().__call__(receive, send_with_headers)
        finally:
            self._observe(policy, started, sent[0], sent[1], route)
            # The request refers back to this connection (Quart's ``send_push_promise`` partial
            # holds our bound method and send wrapper): without this the pair, its body, headers
            # and events (~60 objects a request) would wait for the cyclic garbage collector,
            # whose young collections then came every few hundred requests and stopped the
            # event loop for milliseconds each.
            self._request = None

    def _observe(
        self, policy: HttpPolicy, started: float, status: int, nbytes: int, route: str | None
    ) -> None:
        """Count the request by route template and write the access log line (``route``: the
        template when Quart did not route it)."""
        request = self._request
        rule = request.url_rule if request is not None else None
        observe(policy, self.scope, started, status, nbytes, rule.rule if rule else route)

    async def _drain(self) -> None:
        """Read and drop the rest of the request body, so the connection can serve the next
        request; gives up (Hypercorn then closes the connection) if the client stalls."""
        request = self._request
        if request is None:
            return
        it = request.body.__aiter__()
        timeout = self.app.config["BODY_TIMEOUT"]
        while True:
            try:
                await asyncio.wait_for(it.__anext__(), timeout)
            except (StopAsyncIteration, TimeoutError, RequestEntityTooLarge):
                return

    async def _send_response(self, send: ASGISendCallable, response: ResponseTypes) -> None:
        if type(response) is not RawResponse:
            await super()._send_response(send, response)
            return
        headers = response.raw_headers
        for name, value in response.headers.items():
            key = name.lower()
            if key != "content-length":
                headers.append((key.encode(), value.encode()))
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        await send(start)  # type: ignore[arg-type]
        await send({"type": "http.response.body", "body": response.raw_body, "more_body": False})
        if response.after_send is not None:
            response.after_send()

    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, BoundedBody):
                    while body.buffered >= HIGH_WATER_BYTES:
                        body.drained.clear()
                        await body.drained.wait()
            elif message["type"] == "http.disconnect":
                # Also end the body: if the handler's cancellation is ever lost (a wait_for race
                # in Python 3.11), its next read sees a short body and aborts the record at once
                # instead of waiting for the I/O timeout.
                body.set_complete()
                return
