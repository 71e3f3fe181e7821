"""Query endpoints (spec §5): create (JSON or legacy parameters), remove by query, and the
helpers that turn a collected ``ReadBatch`` into a response body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quart import Blueprint, request

from appliance import metrics
from appliance.api import params
from appliance.api.access import read_access, services, write_access
from appliance.api.batch_codec import encode_v1_record_header, v2_read_batch_headers
from appliance.api.connection import RawResponse
from appliance.api.record_response import record_response
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import parse_body, payload_stream, read_any_body
from appliance.engine import names
from appliance.errors import NoContent, UnprocessableEntity
from appliance.query.handle import DEFAULT_TTL_SECONDS, BatchLimits, Query, QuerySpec, ReadBatch

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services

blueprint = Blueprint("queries", __name__)
NO_CONTENT = "No content"
OCTET_STREAM = "application/octet-stream"
OCTET_STREAM_BYTES = OCTET_STREAM.encode()
_QUERY_TYPES = ("QUERY", "REMOVE")


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
    """Collect the next batch of ``query`` in one worker-thread hop; 204 if it has nothing."""
    limits = limits_for(svc, query)
    if limit:
        limits = BatchLimits(limit, limits.max_size, limits.max_metadata, limits.timeout)
    batch = await svc.workers.run(query.collect_batch, storage, limits, head, v2)
    if not batch.records:
        raise NoContent(NO_CONTENT)
    return batch


async def read_batch(bucket: str, entry: str | None, qid: int, *, v2: bool) -> Response:
    """The next batch of query ``qid`` as a batched-read response (protocol v1 or v2).

    ``entry`` is the entry of an entry-level query (v1) or None for a bucket-level one (v2).
    """
    read_access(bucket)
    svc = services()
    storage = svc.engine
    head = request.method == "HEAD"
    query = svc.queries.get(qid, bucket, entry)
    batch = await collect(svc, storage, query, head=head, v2=v2)
    metas = [meta for _, meta in batch.records]
    metrics.batch_records("read", len(metas))
    headers = v2_read_batch_headers(metas) if v2 else [encode_v1_record_header(m) for m in metas]
    return batch_response(
        svc, storage, bucket, batch, headers, head=head, only_metadata=query.spec.only_metadata
    )


def batch_body(
    svc: Services, storage: Storage, bucket: str, batch: ReadBatch
) -> bytes | AsyncIterator[bytes]:
    """The concatenated payloads of a batch; streams if some were too big to preload."""
    if all(p is not None for p in batch.payloads):
        return b"".join(batch.payloads)  # type: ignore[arg-type]

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
    svc: Services, storage: Storage, bucket: str, batch: ReadBatch,
    headers: Mapping[str, str] | Sequence[tuple[str, str]], *, head: bool, only_metadata: bool,
) -> Response:
    """A batched-read response; Content-Length is the sum of sizes (also for HEAD).

    Preloaded batches go out as a ``RawResponse``: header pairs encoded once, the body one
    ``bytes``; batches with payloads too big to preload stream through Quart.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    size = sum(meta.size for _, meta in batch.records)
    last = b"true" if batch.last else b"false"
    if head or only_metadata:
        body: bytes | AsyncIterator[bytes] = b""
        length = b"0" if only_metadata and not head else str(size).encode()
    else:
        body = batch_body(svc, storage, bucket, batch)
        length = str(size).encode()
    if not isinstance(body, bytes):
        response = Response(body, status=200, headers=dict(pairs))
        response.headers["x-reduct-last"] = last.decode()
        response.headers["Content-Length"] = length.decode()
        response.headers["Content-Type"] = OCTET_STREAM
        return response
    raw = [(name.lower().encode(), value.encode()) for name, value in pairs]
    raw.append((b"x-reduct-last", last))
    raw.append((b"content-length", length))
    raw.append((b"content-type", OCTET_STREAM_BYTES))
    return RawResponse(200, raw, body)


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
