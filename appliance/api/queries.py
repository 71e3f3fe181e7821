"""Query endpoints (spec §5): create (JSON or legacy parameters), remove by query, and the
helpers that turn a collected ``ReadBatch`` into a response body."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import Blueprint, request

from appliance import metrics
from appliance.api import params
from appliance.api.access import read_access, services, write_access
from appliance.api.batch_codec import (
    header_pairs,
    run_tails,
    run_values,
    v1_lines,
    v1_run_lines,
    v2_one_entry_lines,
    v2_read_batch_raw,
    v2_run_lines,
)
from appliance.api.connection import RawResponse
from appliance.api.instance import json_response
from appliance.api.record_response import record_response
from appliance.api.response import ApiResponse as Response
from appliance.api.streaming import parse_body, payload_stream, read_any_body
from appliance.engine import names
from appliance.errors import NoContent, UnprocessableEntity
from appliance.http1.headers import values_are_clean
from appliance.http1.prepared import prepare
from appliance.query.handle import (
    DEFAULT_TTL_SECONDS,
    Ahead,
    BatchLimits,
    Query,
    QuerySpec,
    ReadBatch,
    block_header_costs,
    warm,
)

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services

blueprint = Blueprint("queries", __name__)
NO_CONTENT = "No content"
OCTET_STREAM = "application/octet-stream"
_OCTET_STREAM_LINE = b"content-type: %s\r\n" % OCTET_STREAM.encode()
_LAST_TRUE = b"x-reduct-last: true\r\n"
_LAST_FALSE = b"x-reduct-last: false\r\n"
_QUERY_TYPES = ("QUERY", "REMOVE")
# Header bytes per batch counted against the prefetch budget beside its body.
METADATA_GUESS_BYTES = 64 * 1024


def parse_query(body: bytes) -> tuple[str, QuerySpec]:
    """The query type and spec of a ``QueryEntry`` JSON body (422 ``Invalid JSON: ...``)."""
    obj = params.json_object(body)
    query_type = obj.get("query_type")
    if query_type is None:
        raise UnprocessableEntity("Invalid JSON: missing field `query_type`")
    if query_type not in _QUERY_TYPES:
        raise UnprocessableEntity(
            f"Invalid JSON: unknown variant `{query_type}`, expected `QUERY` or `REMOVE`"
        )
    entries = obj.get("entries")
    if entries is not None and (
        not isinstance(entries, list) or not all(isinstance(e, str) for e in entries)
    ):
        raise UnprocessableEntity("Invalid JSON: invalid type for `entries`, expected a list")
    when = obj.get("when")
    if when is not None and not isinstance(when, dict):
        raise UnprocessableEntity("Invalid JSON: invalid type for `when`, expected a map")
    ext = obj.get("ext")
    if ext is not None:
        if not isinstance(ext, dict):
            raise UnprocessableEntity("Invalid JSON: invalid type for `ext`, expected a map")
        for name in ext:
            raise UnprocessableEntity(f"Unknown extension '{name}' in query")
    ttl = params.opt_u64(obj, "ttl")
    # `include`, `exclude`, `each_n`, `each_s`, `limit` were removed in 1.21: ignored.
    spec = QuerySpec(
        start=params.opt_u64(obj, "start"),
        stop=params.opt_u64(obj, "stop"),
        ttl=float(ttl) if ttl is not None else DEFAULT_TTL_SECONDS,
        continuous=bool(params.opt_bool(obj, "continuous")),
        only_metadata=bool(params.opt_bool(obj, "only_metadata")),
        when=when,
        strict=bool(params.opt_bool(obj, "strict")),
        entries=tuple(entries) if entries is not None else None,
    )
    return query_type, spec


def limits_for(svc: Services, query: Query) -> BatchLimits:
    """Batch limits from the settings, overridden by the query's ``#batch_*`` directives."""
    s = svc.settings
    d = query.directives
    return BatchLimits(
        max_records=(d and d.batch_records) or s.io_batch_max_records,
        max_size=(d and d.batch_size) or s.io_batch_max_size,
        max_metadata=(d and d.batch_metadata_size) or s.io_batch_max_metadata_size,
        timeout=(d and d.batch_timeout_seconds) or s.io_batch_timeout,
    )


async def collect(
    svc: Services, storage: Storage, query: Query, *, head: bool, v2: bool, limit: int = 0
) -> ReadBatch:
    """The next batch of ``query``: the one collected ahead if still valid, else collected (and
    for a batched read encoded) in one worker-thread hop; 204 if it has nothing."""
    limits = limits_for(svc, query)
    if limit:
        limits = BatchLimits(limit, limits.max_size, limits.max_metadata, limits.timeout)
    undo: Ahead | None = None
    ahead = await take_ahead(query)
    if ahead is not None:
        batch = ahead.batch
        unencoded = batch.records and batch.encoded is None  # its encoding failed
        if unencoded or not ahead.unchanged() or ahead.head != head or limit:
            undo = ahead  # not what this request would collect: undone in the same hop
        elif batch.records or not query.spec.continuous:
            if not batch.records:
                raise NoContent(NO_CONTENT)
            return batch
        # else: a continuous query that had run dry; records may have come since
    encode = None if limit else (v2, head, query.spec.only_metadata)
    batch = await svc.workers.run(collect_encoded, query, storage, limits, head, v2, encode, undo)
    if not batch.records:
        raise NoContent(NO_CONTENT)
    return batch


async def take_ahead(query: Query) -> Ahead | None:
    """The batch collected ahead for ``query`` (waiting for it if still collecting), or None."""
    fut = query.ahead
    if fut is None:
        return None
    query.ahead = None
    try:
        return await asyncio.shield(fut)  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        if query.ahead is None:  # the request went: its records stay for the next one
            query.ahead = fut
        raise


@dataclass(slots=True)
class EncodedBatch:
    """A batched read's response parts, built in the collecting hop (``encode_batch``)."""

    # The header lines up to the content type (``name: value`` CRLF each), checked as h11
    # would send them; None if they did not pass (h11 checks them, or says what is wrong).
    lines: bytes | None
    length: bytes  # the Content-Length value
    body: bytes | None  # the whole body (None: it streams, or there is none)
    raw: list[tuple[bytes, bytes]] | None = None  # the header pairs; see ``headers``

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header pairs, content length last; made from ``lines`` when first asked for
        (in the collecting hop for Quart's path, else on the event loop), with the block marked
        checked (``http1.prepared``)."""
        if self.raw is None:
            assert self.lines is not None  # one of the two is always built
            raw = header_pairs(self.lines)
            prepare(raw)
            raw.append((b"content-length", self.length))
            self.raw = raw
        return self.raw


def encode_batch(batch: ReadBatch, v2: bool, head: bool, only_metadata: bool) -> None:
    """Build the response parts of a batched read into ``batch.encoded`` (in the collecting
    hop, off the event loop): the header lines, the response's own included, checked for
    sending if they pass (all but the content length, which h11 checks itself); and the
    joined body when every payload was preloaded (None: it streams, or there is no body).
    Content-Length is the sum of the sizes (also for HEAD; 0 with only metadata).

    A v1 batch, and a v2 batch of one entry in time order (what a query of one entry
    collects), is written straight as lines and only its distinct values are checked
    (``v1_lines``, ``v2_one_entry_lines``); any other is built as pairs and checked pair by
    pair (``prepare``). 1 KiB records with cycling labels, v2: ~150 -> ~90 µs a batch of 85.
    A batch read from blocks' columns is written from what was derived once per block
    (``v2_run_lines``, ``v1_run_lines``).
    """
    if batch.columns is not None:  # read as runs of blocks: their records, their bytes
        spans = batch.columns
        if len(spans) == 1:
            columns, lo, hi = spans[0]
            metas = columns.records[lo:hi]
        else:
            metas = [meta for columns, lo, hi in spans for meta in columns.records[lo:hi]]
        total = sum([columns.sizes_acc[hi] - columns.sizes_acc[lo] for columns, lo, hi in spans])
    else:
        metas = [meta for _, meta in batch.records]
        total = sum(meta.size for meta in metas)
    own = (_LAST_TRUE if batch.last else _LAST_FALSE) + _OCTET_STREAM_LINE
    size = b"0" if only_metadata and not head else b"%d" % total
    body = None
    if head or only_metadata:
        pass
    elif batch.body is not None:
        body = batch.body  # read as one span: already the body, nothing to join
    elif all(p is not None for p in batch.payloads):
        body = b"".join(batch.payloads)  # type: ignore[arg-type]
    built = None
    if batch.columns is not None:
        built = v2_run_lines(batch.columns) if v2 else v1_run_lines(batch.columns)
    if built is None:
        built = v2_one_entry_lines(metas) if v2 else v1_lines(metas)
    if built is not None and values_are_clean(built[1]):
        batch.encoded = EncodedBatch(built[0] + own, size, body)
        return
    # Pairs, checked pair by pair: lines with a value h11 would refuse (so that h11 says so),
    # or a v2 batch of several entries.
    if built is not None:
        raw = header_pairs(built[0] + own)
    else:
        raw = [*v2_read_batch_raw(metas), *header_pairs(own)]
    checked = prepare(raw)  # checked here as h11 would on the event loop
    raw.append((b"content-length", size))
    lines = raw[0].block.lines if checked else None  # type: ignore[attr-defined]
    batch.encoded = EncodedBatch(lines, size, body, raw)


def collect_encoded(
    query: Query, storage: Storage, limits: BatchLimits, head: bool, v2: bool,
    encode: tuple[bool, bool, bool] | None, undo: Ahead | None,
) -> ReadBatch:
    """``Query.collect_batch`` then ``encode_batch`` (worker thread; ``encode`` None: not),
    the header pairs included: the request waiting for it is Quart's, which sends pairs."""
    batch = query.collect_batch(storage, limits, head, v2, undo)
    if encode is not None and batch.records:
        encode_batch(batch, *encode)
        batch.encoded.headers()  # made here, off the event loop
    return batch


def collect_ahead(
    query: Query, storage: Storage, limits: BatchLimits, head: bool, v2: bool, held: Any
) -> tuple[Ahead | None, Callable[[], None] | None]:
    """``Query.collect_ahead`` then ``encode_batch`` (worker thread); the Ahead keeps ``held``.
    Also what to do once it is handed over: get the next blocks ready (``handle.warm``)."""
    ahead = query.collect_ahead(storage, limits, head, v2)
    if ahead is None:
        return None, None
    ahead.held = held
    if ahead.batch.records:
        try:
            encode_batch(ahead.batch, v2, head, query.spec.only_metadata)
        except Exception:  # noqa: BLE001 - undone; the request's own hop reports it
            ahead.batch.encoded = None
    if not ahead.warm_from:
        return ahead, None
    # Not a method of the Ahead: the batch (its body) is not kept alive by the warming.
    prepare = _prepare_v2 if v2 else _prepare_v1
    return ahead, functools.partial(warm, ahead.warm_from, ahead.batch.plain, prepare)


def _prepare_v2(columns: Any) -> None:
    """What a v2 batch of a block's records derives once per block (``handle.warm``)."""
    block_header_costs(columns)
    run_values(columns)


def _prepare_v1(columns: Any) -> None:
    """What a v1 batch of a block's records derives once per block (``handle.warm``)."""
    block_header_costs(columns)
    run_tails(columns)


def start_ahead(svc: Services, storage: Storage, query: Query, head: bool, v2: bool,
                size: int) -> None:
    """Start collecting the batch after the one just sent, unless one is under way, the query
    is done, or the prefetch budget (``PREFETCH_BYTES``, ~``size`` held) is spent."""
    if query.ahead is not None or query.finished:
        return
    held = svc.queries.budget.hold(size)
    if held is None:
        return
    limits = limits_for(svc, query)
    query.ahead = svc.workers.start_then(collect_ahead, query, storage, limits, head, v2, held)


async def read_batch(bucket: str, entry: str | None, qid: int, *, v2: bool) -> Response:
    """The next batch of query ``qid`` as a batched-read response (protocol v1 or v2).

    ``entry`` is the entry of an entry-level query (v1) or None for a bucket-level one (v2).
    Once a batch that left records behind is sent, the next one is collected (and encoded) in
    a worker thread while the client reads this one: the next request finds it ready.
    """
    read_access(bucket)
    svc = services()
    storage = svc.engine
    head = request.method == "HEAD"
    query = svc.queries.get(qid, bucket, entry)
    batch = await collect(svc, storage, query, head=head, v2=v2)
    metrics.batch_records("read", len(batch.records))
    response = batch_response(
        svc, storage, bucket, batch, head=head, only_metadata=query.spec.only_metadata
    )
    if batch.more and type(response) is RawResponse:
        size = len(response.raw_body) + METADATA_GUESS_BYTES
        response.after_send = lambda: start_ahead(svc, storage, query, head, v2, size)
    return response


def batch_body(
    svc: Services, storage: Storage, bucket: str, batch: ReadBatch
) -> AsyncIterator[bytes]:
    """The payloads of a batch that has some too big to preload, streamed."""

    async def stream() -> AsyncIterator[bytes]:
        for i, ((entry, meta), payload) in enumerate(
            zip(batch.records, batch.payloads, strict=True)
        ):
            if payload is not None:
                yield payload
                continue
            opened = batch.streams.get(i)

            def open_iter(entry: str = entry, meta: Any = meta, opened: Any = opened) -> Any:
                if opened is not None:  # opened while collecting: a removal since can't cut it
                    return opened
                return iter(storage.get_bucket(bucket).get_entry(entry).iter_payload(meta))

            async for chunk in payload_stream(svc, open_iter):
                yield chunk

    return stream()


def batch_response(
    svc: Services, storage: Storage, bucket: str, batch: ReadBatch, *, head: bool,
    only_metadata: bool,
) -> Response:
    """A batched-read response from ``batch.encoded`` (``encode_batch``).

    Preloaded batches go out as a ``RawResponse``: header pairs encoded once, the body one
    ``bytes``; batches with payloads too big to preload stream through Quart.
    """
    encoded = batch.encoded
    raw, body = encoded.headers(), encoded.body
    if body is None and not head and not only_metadata:
        pairs = {name.decode(): value.decode() for name, value in raw}
        return Response(batch_body(svc, storage, bucket, batch), status=200, headers=pairs)
    return RawResponse(200, raw, body or b"")


def query_id(raw: str | None, message: str) -> int:
    """A query id from a parameter or header (422 if not a number)."""
    value = params.parse_u64(raw.strip()) if raw is not None else None
    if value is None:
        raise UnprocessableEntity(message)
    return value


async def read_one(
    svc: Services, storage: Storage, bucket: str, entry: str, raw_id: str, head: bool
) -> Response:
    """``GET /b/{bucket}/{entry}?q=``: the next record of an entry-level query."""
    qid = query_id(raw_id, "'query' must be a number")
    query = svc.queries.get(qid, bucket, entry)
    batch = await collect(svc, storage, query, head=head, v2=False, limit=1)
    (name, meta), payload = batch.records[0], (batch.payloads or [None])[0]
    opened = batch.streams.get(0)
    response = record_response(svc, storage, bucket, name, meta, payload, head, opened)
    response.headers["x-reduct-last"] = "true" if batch.last else "false"
    return response


# --- creation and removal -------------------------------------------------------------------


async def _create_or_remove(
    bucket: str, entry: str | None, query_type: str, spec: QuerySpec
) -> Response:
    svc = services()
    storage = svc.engine
    if query_type == "QUERY":
        read_access(bucket)
        qid = await svc.workers.run(svc.queries.create, storage, bucket, entry, spec)
        return json_response({"id": qid})
    write_access(bucket)
    removed = await svc.workers.run(svc.queries.remove, storage, bucket, entry, spec)
    return json_response({"removed_records": removed})


async def post_entry_query(bucket: str, entry: str) -> Response:
    """``POST /b/{bucket}/{entry}/q``: entry-level QUERY or REMOVE."""
    body = await read_any_body(services().settings.io_operation_timeout)
    query_type, spec = await parse_body(services(), parse_query, body)
    return await _create_or_remove(bucket, entry, query_type, spec)


@blueprint.route("/io/<bucket>/q", methods=["POST"])
async def post_bucket_query(bucket: str) -> Response:
    """``POST /io/{bucket}/q``: multi-entry QUERY or REMOVE."""
    body = await read_any_body(services().settings.io_operation_timeout)
    query_type, spec = await parse_body(services(), parse_query, body)
    params.bucket_name(bucket)
    return await _create_or_remove(bucket, None, query_type, spec)


def _legacy_spec(args: Any) -> QuerySpec:
    start = params.optional_timestamp(args, "start")
    stop = params.optional_timestamp(args, "stop")
    ttl_raw = args.get("ttl")
    ttl = DEFAULT_TTL_SECONDS
    if ttl_raw is not None:
        value = params.parse_u64(ttl_raw)
        if value is None:
            raise UnprocessableEntity("'ttl' must be in seconds as an unsigned integer")
        ttl = float(value)
    continuous = False
    raw = args.get("continuous")
    if raw is not None:
        if raw not in ("true", "false"):
            raise UnprocessableEntity("'continue' must be a bool value")
        continuous = raw == "true"
    return QuerySpec(start=start, stop=stop, ttl=ttl, continuous=continuous)


async def legacy_create(bucket: str, entry: str) -> Response:
    """``GET /b/{bucket}/{entry}/q?start&stop&ttl&continuous``: create an entry query."""
    spec = _legacy_spec(request.args)
    return await _create_or_remove(bucket, entry, "QUERY", spec)


async def legacy_remove(bucket: str, entry: str) -> Response:
    """``DELETE /b/{bucket}/{entry}/q?start&stop``: remove records by query."""
    if names.is_meta_entry(entry):
        raise UnprocessableEntity(f"Can't delete records from system entry '{entry}'")
    spec = _legacy_spec(request.args)
    return await _create_or_remove(bucket, entry, "REMOVE", spec)
