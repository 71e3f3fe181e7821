"""Batched reads whose batch is already collected, answered below Quart.

A client reading a query asks for one batch at a time, and while it parses one batch the
next is collected and encoded in a worker thread (``queries.start_ahead``). When the request
for it comes, all that is left is to check who asks and send bytes that are ready; Quart's
request machinery (request object and context, routing, hooks, response object) cost more
than that, ~4 µs a record of an 85-record batch, and a bare ASGI handler on the same
Hypercorn reaches 81 % of what reduct-py can parse against Quart's 67 %
(``tests/bench/bench_reads_floor.py``).

``ReadLane.serve`` answers such a request itself, from the ASGI scope, with the same pieces
the Quart handler uses: ``TokenStore.authenticate`` and ``require_read``, the query
registry, the response parts ``queries.encode_batch`` built, ``queries.start_ahead`` after it, the
batch metric and the audit record. It only takes the plain case; everything else returns
None *before anything changed*, and the request goes to Quart as before, which answers it
exactly as it always did, errors included:

- not ``GET``, another path shape, a root path, a request that declares a body, a query id
  that is not plain digits (``?q=`` alone for v1);
- a name, a token or a query that Quart would refuse (the error is Quart's to give);
- no batch collected ahead, or one Quart's path would not send as it is (for ``HEAD``,
  changed since, empty, not encoded, or with payloads that stream).

The lane claims the batch (``query.ahead = None``) only after all of that, and from then on it
answers 200 with it. ``claim`` and ``finish`` are the two halves around sending; the protocol
lane (``protocol_lane``), which answers such reads in Hypercorn's HTTP/1 protocol before they
become ASGI requests, uses them too. ``APPLIANCE_READ_LANE=off`` sends every request to Quart
(a benchmark knob, like ``APPLIANCE_HTTP_PARSER``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance import metrics
from appliance.api import params
from appliance.api.access import scope_token
from appliance.api.connection import declares_body
from appliance.api.queries import METADATA_GUESS_BYTES, EncodedBatch, start_ahead
from appliance.auth import require_read
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.query.handle import Query
    from appliance.services import Services

LANE_ENV = "APPLIANCE_READ_LANE"
_QUERY_PARAM = re.compile(rb"q=([0-9]+)")  # werkzeug would decode nothing in it
Send = Callable[[Any], Awaitable[None]]


def lane_enabled(
    environ: dict[str, str] | os._Environ[str] = os.environ, name: str = LANE_ENV
) -> bool:
    """False when the knob ``name`` (``APPLIANCE_READ_LANE``) is ``off`` (or
    ``0``/``false``/``no``)."""
    return environ.get(name, "on").strip().lower() not in ("off", "0", "false", "no")


@dataclass(slots=True)
class Claimed:
    """A batch a read lane took off its query to answer a request with."""

    query: Query
    entry: str | None  # None for a v2 read
    records: int
    more: bool  # the query has records left: start the next batch
    encoded: EncodedBatch  # the response's parts (its own headers and the records')
    body: bytes
    token_name: str
    ip: str | None


class ReadLane:
    """Answers ``GET`` batched reads (v1 ``/b/{bucket}/{entry}/batch?q=ID``, v2
    ``/io/{bucket}/read``) whose next batch is ready, without Quart."""

    def __init__(self, svc: Services, prefix: str, v1_route: str, v2_route: str) -> None:
        self.svc = svc
        self.v1_prefix = prefix + "/b/"
        self.v2_prefix = prefix + "/io/"
        self.v1_route = v1_route  # the URL rule templates, for the request metrics
        self.v2_route = v2_route

    def match(self, scope: dict[str, Any]) -> tuple[str, str | None, int] | None:
        """(bucket, entry or None for v2, query id) of a plain batched read, else None."""
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if path.startswith(self.v2_prefix) and path.endswith("/read"):
            bucket = path[len(self.v2_prefix):-5]
            if not bucket or "/" in bucket or scope["query_string"]:
                return None
            raw = params.header(scope["headers"], b"x-reduct-query-id")
            entry = None
        elif path.startswith(self.v1_prefix) and path.endswith("/batch"):
            bucket, _, entry = path[len(self.v1_prefix):-6].partition("/")
            if not bucket or not entry:
                return None
            found = _QUERY_PARAM.fullmatch(scope["query_string"])
            raw = found.group(1) if found is not None else None
        else:
            return None
        if raw is None or declares_body(scope):
            return None
        # The number as the handler reads it (``queries.query_id``); not one: Quart says so.
        qid = params.parse_u64(raw.decode("latin1").strip())
        return None if qid is None else (bucket, entry, qid)

    def _query(self, scope: dict[str, Any], bucket: str, entry: str | None,
               qid: int) -> tuple[Query, str, str | None]:
        """The query, the caller's token name and IP, as the Quart handler checks them
        (raises what it would raise)."""
        params.bucket_name(bucket)
        if entry is not None:
            params.entry_name(entry)
        token, ip = scope_token(self.svc, scope)
        require_read(token.name, token.permissions, bucket)
        return self.svc.queries.get(qid, bucket, entry), token.name, ip

    async def claim(
        self,
        scope: dict[str, Any],
        waiting: Callable[[], Awaitable[None]] | None = None,
        sendable: Callable[[EncodedBatch, bytes], bool] | None = None,
    ) -> Claimed | None:
        """The batch a plain batched read with its batch ready answers with, taken off its
        query; None, with nothing changed, otherwise. ``waiting`` runs before waiting for a
        batch still being collected; ``sendable(encoded, body)`` may refuse a batch the
        caller could not send as it is."""
        matched = self.match(scope)
        if matched is None:
            return None
        bucket, entry, qid = matched
        try:
            query, token_name, ip = self._query(scope, bucket, entry, qid)
        except ApplianceError:
            return None  # Quart refuses it, with the same error
        fut = query.ahead
        if fut is None:
            return None
        if not fut.done():
            if waiting is not None:
                await waiting()
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                raise  # the request went; the batch stays on the query for the next one
            except Exception:  # noqa: BLE001 - Quart's path takes it and reports it
                return None
            if query.ahead is not fut:  # another request took it meanwhile
                return None
        if fut.cancelled() or fut.exception() is not None:
            return None
        ahead = fut.result()
        batch = ahead.batch if ahead is not None else None
        if (
            batch is None
            or ahead.head
            or not batch.records
            or batch.encoded is None
            or (batch.encoded.body is None and not query.spec.only_metadata)
            or not ahead.unchanged()
        ):
            return None
        encoded = batch.encoded
        body = encoded.body or b""
        if sendable is not None and not sendable(encoded, body):
            return None
        query.ahead = None  # claimed: from here on this request answers with it
        return Claimed(query, entry, len(batch.records), batch.more, encoded, body,
                       token_name, ip)

    def finish(self, claimed: Claimed, path: str, started: float) -> str:
        """After the answer went out: the batch metric, the next batch started, the audit
        record; the route template it matched (for the request metrics)."""
        svc = self.svc
        body_bytes = len(claimed.body)
        metrics.batch_records("read", claimed.records)
        if claimed.more:
            start_ahead(svc, svc.engine, claimed.query, False, claimed.entry is None,
                        body_bytes + METADATA_GUESS_BYTES)
        events = svc.events
        if events.enabled:
            events.request_done(claimed.token_name, "GET", path, 200, claimed.ip, 0, body_bytes,
                                time.perf_counter() - started)
        return self.v2_route if claimed.entry is None else self.v1_route

    async def serve(self, scope: dict[str, Any], send: Send,
                    extra: list[tuple[bytes, bytes]]) -> str | None:
        """Answer the request if it is a plain batched read with its batch ready: the route
        template it matched (for the metrics); None, with nothing changed, otherwise."""
        started = time.perf_counter()
        claimed = await self.claim(scope)
        if claimed is None:
            return None
        await send({"type": "http.response.start", "status": 200,
                    "headers": claimed.encoded.headers() + extra})
        await send({"type": "http.response.body", "body": claimed.body, "more_body": False})
        return self.finish(claimed, scope["path"], started)
