"""Query links (spec §12): ``POST /links/{file_name}`` creates a signed, expiring URL for one
record of a query; ``GET /links/{file_name}?ct&s&i&n[&e&ts]`` serves it without a token.

The record is named by ``record_entry`` + ``record_timestamp`` (API ≥ 1.19; ``e``/``ts`` in the
URL override them) or, for older clients, by ``index`` (the N-th record of the query). The link
runs the query again on every download, with the issuing token's *current* permissions: a token
that lost read access, expired or was removed makes its links fail. ``Range`` requests get 206
with ``Content-Range`` (first range only, as ReductStore), unsatisfiable ones 416.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from quart import Blueprint, request

from appliance.api import params
from appliance.api.access import read_access, services
from appliance.api.queries import parse_query
from appliance.api.record_response import check_state, record_headers
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import payload_stream, read_any_body
from appliance.auth import require_read
from appliance.auth.links import link_issuer, open_link, seal_link
from appliance.errors import NotFound, UnprocessableEntity
from appliance.query.handle import BatchLimits, QuerySpec

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.engine.models import RecordMeta
    from appliance.query.registry import QueryRegistry

blueprint = Blueprint("links", __name__)
IDENTITY_MESSAGE = (
    "Both 'record_entry' and 'record_timestamp' must be provided in payload or URL parameters"
)
# A link's query is scanned at most this long for its record (the request then fails 404).
SCAN_SECONDS = 30.0


def _expire_at(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        from datetime import datetime

        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    raise UnprocessableEntity("Invalid JSON: 'expire_at' must be a unix timestamp in seconds")


def _base_url(value: Any) -> str:
    if value is None:
        return services().settings.public_base_url
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise UnprocessableEntity(f"Invalid base URL '{value}'")
    return value if value.endswith("/") else value + "/"


@blueprint.route("/links/<path:file_name>", methods=["POST"])
async def create_link(file_name: str) -> Response:
    """Create a link: body checked first, then read access to its bucket."""
    body = params.json_object(await read_any_body(services().settings.io_operation_timeout))
    bucket = body.get("bucket")
    if not isinstance(bucket, str):
        raise UnprocessableEntity("Invalid JSON: missing field `bucket`")
    query = body.get("query")
    if not isinstance(query, dict):
        raise UnprocessableEntity("Invalid JSON: missing field `query`")
    query_type, _ = parse_query(json.dumps(query).encode())
    if query_type != "QUERY":
        raise UnprocessableEntity("Query type must be QUERY for a query link")
    record_entry, record_ts = body.get("record_entry"), body.get("record_timestamp")
    index = body.get("index")
    if record_entry is None or record_ts is None:
        if record_entry is not None or record_ts is not None or index is None:
            raise UnprocessableEntity(IDENTITY_MESSAGE)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UnprocessableEntity("Invalid JSON: 'index' must be an unsigned integer")
    elif not isinstance(record_entry, str) or params.parse_u64(str(record_ts)) is None:
        raise UnprocessableEntity(IDENTITY_MESSAGE)
    expire_at = _expire_at(body.get("expire_at", int(time.time()) + 86_400))
    base = _base_url(body.get("base_url"))
    token = read_access(bucket)
    svc = services()
    await svc.workers.run(svc.engine.get_bucket, bucket)  # 404 for a missing bucket, now, not later
    payload = {
        "bucket": bucket,
        "entry": body.get("entry") or "",
        "index": None if record_entry is not None else index,
        "record_entry": record_entry,
        "record_timestamp": None if record_ts is None else int(record_ts),
        "query": query,
        "expire_at": expire_at,
    }
    secret = svc.tokens.link_secret(token.name)
    sealed = seal_link(payload, token.name, secret)
    link = f"{base}api/v1/links/{quote(file_name)}?{urlencode(sealed)}"
    return json_response({"link": link})


def _find(
    registry: QueryRegistry, storage: Storage, payload: dict[str, Any], spec: QuerySpec,
    entry: str | None, ts: int | None, index: int | None,
) -> tuple[str, RecordMeta]:
    """Run the link's query until its record comes (blocking, in a worker thread)."""
    qid = registry.create(storage, payload["bucket"], None, spec)
    query = registry.get(qid, payload["bucket"], None)
    limits = BatchLimits(max_records=1000, timeout=5.0)
    deadline = time.monotonic() + SCAN_SECONDS
    seen = 0
    while time.monotonic() < deadline:
        batch = query.collect_batch(storage, limits, True, False)
        for name, meta in batch.records:
            if index is not None:
                if seen == index:
                    return name, meta
                seen += 1
            elif name == entry and meta.timestamp == ts:
                return name, meta
        if batch.last or not batch.records:
            break
    if index is not None:
        raise NotFound("Record number out of range")
    raise NotFound(f"Record {entry}/{ts} not found in query result")


def _spec(payload: dict[str, Any]) -> QuerySpec:
    _, spec = parse_query(json.dumps(payload["query"]).encode())
    entries = spec.entries
    if not entries:
        entries = (payload.get("entry") or "",) if payload.get("entry") else None
    return QuerySpec(start=spec.start, stop=spec.stop, ttl=1.0, when=spec.when,
                     strict=spec.strict, entries=entries, only_metadata=False)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first range of a ``Range: bytes=`` header as (start, end) inclusive; None: 416."""
    unit, _, ranges = header.partition("=")
    first = ranges.split(",")[0].strip()
    if unit.strip().lower() != "bytes" or "-" not in first:
        return None
    lo, _, hi = first.partition("-")
    try:
        if not lo:  # suffix: the last N bytes
            n = int(hi)
            return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
        start = int(lo)
        end = int(hi) if hi else size - 1
    except ValueError:
        return None
    end = min(end, size - 1)
    return (start, end) if start <= end and start < size else None


async def _slice(chunks: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    offset = 0
    async for chunk in chunks:
        lo, hi = offset, offset + len(chunk)
        offset = hi
        if hi <= start:
            continue
        yield chunk[max(start - lo, 0) : min(end + 1 - lo, len(chunk))]
        if hi > end:
            break


@blueprint.route("/links/<path:file_name>", methods=["GET", "HEAD"])
async def get_link(file_name: str) -> Response:
    """Serve the record of a link; no Authorization header needed."""
    args = request.args
    svc = services()
    issuer_name = link_issuer(args)
    payload = open_link(args, svc.tokens.link_secret(issuer_name))
    if int(payload.get("expire_at", 0)) < time.time():
        raise UnprocessableEntity("Query link has expired")
    entry, ts = payload.get("record_entry"), payload.get("record_timestamp")
    if ("e" in args) != ("ts" in args):
        raise UnprocessableEntity("Both 'e' and 'ts' parameters must be provided together")
    if "e" in args:
        ts = params.parse_u64(args["ts"])
        if ts is None:
            raise UnprocessableEntity(f"Invalid 'ts' parameter: {args['ts']}")
        entry = args["e"]
    index = payload.get("index") if entry is None else None
    if (entry is None or ts is None) and index is None:
        raise UnprocessableEntity(IDENTITY_MESSAGE)
    bucket = payload["bucket"]
    issuer = svc.tokens.issuer(issuer_name)
    require_read(issuer.name, issuer.permissions, bucket)
    storage = svc.engine
    name, meta = await svc.workers.run(
        _find, svc.queries, storage, payload, _spec(payload), entry, ts, index
    )
    check_state(bucket, name, meta)
    headers = record_headers(name, meta)
    headers["Accept-Ranges"] = "bytes"
    head = request.method == "HEAD"

    def open_iter() -> Any:
        return iter(storage.get_bucket(bucket).get_entry(name).iter_payload(meta))

    range_header = request.headers.get("Range")
    if range_header is None:
        body: Any = b"" if head else payload_stream(svc, open_iter)
        response = Response(body, status=200, headers=headers)
        response.headers["Content-Length"] = str(meta.size)
        return response
    span = _byte_range(range_header, meta.size)
    if span is None:
        response = Response(b"", status=416, headers=headers)
        response.headers["x-reduct-error"] = "Range not satisfiable"  # every error says why
        response.headers["Content-Range"] = f"bytes */{meta.size}"
        response.headers["Content-Length"] = "0"
        return response
    start, end = span
    body = b"" if head else _slice(payload_stream(svc, open_iter), start, end)
    response = Response(body, status=206, headers=headers)
    response.headers["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
    response.headers["Content-Length"] = str(end - start + 1)
    return response
