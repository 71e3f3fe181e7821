"""Batch protocol v2 (spec §8): multi-entry ``/io/{bucket}/read|write|update|remove``.

Every write/update/remove response echoes ``x-reduct-entries`` and ``x-reduct-start-ts`` (the
Python client fails without them) plus ``x-reduct-error-<index>-<delta>`` per failed record.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, cast

from quart import Blueprint, request

from appliance.api import params
from appliance.api.access import services, write_access
from appliance.api.batch_codec import (
    V2Request,
    encode_v2_echo,
    encode_v2_error,
    parse_v2_remove,
    parse_v2_request,
    parse_v2_update,
)
from appliance.api.batch_codec.fast import WriteHeaders, parse_v2_write
from appliance.api.batch_v1 import batch_header_map, check_batch_limits, header_map
from appliance.api.encoding import content_encoding
from appliance.api.ingest import Incoming, write_records
from appliance.api.queries import query_id, read_batch
from appliance.api.response import ApiResponse as Response
from appliance.engine import names
from appliance.errors import ApplianceError, NotFound, UnprocessableEntity
from appliance.replication import UPDATE

if TYPE_CHECKING:
    from appliance.services import Services
    from appliance.engine import Storage

blueprint = Blueprint("io", __name__)
LENGTH_MISMATCH = (
    "content-length header does not match the sum of the content-lengths in the headers"
)


def _respond(req: V2Request | WriteHeaders, errors: dict[Hashable, ApplianceError]) -> Response:
    headers = encode_v2_echo(req)
    keyed = cast("dict[tuple[int, int], ApplianceError]", errors)  # keys: (index, delta)
    for (index, delta), error in sorted(keyed.items()):
        name, value = encode_v2_error(index, delta, error)
        headers[name] = value
    return Response(b"", status=200, headers=headers)


def _check_entries(req: V2Request | WriteHeaders) -> None:
    for name in req.entries:
        params.entry_name(name)


@blueprint.route("/io/<bucket>/read", methods=["GET", "HEAD"])
async def read(bucket: str) -> Response:
    """The next batch of a bucket-level query (``x-reduct-query-id`` header)."""
    params.bucket_name(bucket)
    raw = request.headers.get("x-reduct-query-id")
    if raw is None:
        raise UnprocessableEntity("x-reduct-query-id header is required for batched reads")
    qid = query_id(raw, "Invalid query id")
    return await read_batch(bucket, None, qid, v2=True)


@blueprint.route("/io/<bucket>/write", methods=["POST"])
async def write(bucket: str) -> Response:
    """Write records of several entries; body in (entry_index, delta) order."""
    params.bucket_name(bucket)
    check_batch_limits()
    req: V2Request | WriteHeaders | None = parse_v2_write(request.scope["headers"])
    if req is None:  # something unusual: the general parser (it raises the exact error)
        headers = header_map()
        full = req = parse_v2_request(headers)
        rows = [
            Incoming(
                (r.entry_index, r.delta), r.entry, r.timestamp, r.content_length,
                r.content_type, r.labels,
            )
            for r in full.records
        ]
        total = full.content_length
    else:
        headers, rows, total = req.others, req.rows, req.content_length
    _check_entries(req)
    write_access(bucket)
    encoding = content_encoding(headers)
    declared = params.header(request.scope["headers"], b"content-length")
    if declared is None and encoding is None:
        raise UnprocessableEntity("content-length header is required")
    # With an encoding, Content-Length counts encoded bytes; the decoder bounds the rest.
    if encoding is None and params.parse_u64(declared.decode("latin1").strip()) != total:  # type: ignore[union-attr]
        raise UnprocessableEntity(LENGTH_MISMATCH)
    svc = services()
    errors = await write_records(svc, svc.engine, bucket, rows, encoding)
    return _respond(req, errors)


def _update(
    svc: Services, storage: Storage, bucket: str, req: V2Request
) -> dict[Hashable, ApplianceError]:
    b = storage.get_bucket(bucket)
    errors: dict[Hashable, ApplianceError] = {}
    entries: dict[str, object] = {}
    done: dict[str, list[tuple[int, int, Mapping[str, str]]]] = {}
    for r in req.records:
        try:
            entry = entries.get(r.entry)
            if entry is None:
                entry = entries[r.entry] = b.get_entry(r.entry)
            new = entry.update_labels(r.timestamp, dict(r.update.set), set(r.update.remove))  # type: ignore[attr-defined]
            done.setdefault(r.entry, []).append((UPDATE, r.timestamp, new.labels))
        except ApplianceError as exc:
            errors[(r.entry_index, r.delta)] = exc
    if done and svc.replicates(bucket):
        for name, items in done.items():
            svc.notify_records(bucket, name, items)
    return errors


@blueprint.route("/io/<bucket>/update", methods=["PATCH"])
async def update(bucket: str) -> Response:
    """Update labels of records of several entries."""
    params.bucket_name(bucket)
    req = parse_v2_update(batch_header_map())
    _check_entries(req)
    write_access(bucket)
    svc = services()
    errors = await svc.workers.run(_update, svc, svc.engine, bucket, req)
    return _respond(req, errors)


def _remove(storage: Storage, bucket: str, req: V2Request) -> dict[Hashable, ApplianceError]:
    b = storage.get_bucket(bucket)
    errors: dict[Hashable, ApplianceError] = {}
    groups: dict[str, list[tuple[int, int, int]]] = {}
    for r in req.records:
        groups.setdefault(r.entry, []).append((r.entry_index, r.delta, r.timestamp))
    for name, rows in groups.items():
        try:
            failed = b.get_entry(name).remove_records([ts for _, _, ts in rows])
        except NotFound as exc:
            failed = {ts: exc for _, _, ts in rows}
        for index, delta, ts in rows:
            if ts in failed:
                errors[(index, delta)] = failed[ts]
    return errors


@blueprint.route("/io/<bucket>/remove", methods=["DELETE"])
async def remove(bucket: str) -> Response:
    """Remove records of several entries (``$meta`` entries are refused)."""
    params.bucket_name(bucket)
    req = parse_v2_remove(batch_header_map())
    _check_entries(req)
    for name in req.entries:
        if names.is_meta_entry(name):
            raise UnprocessableEntity(
                f"Can't delete records from system entry '{name}'; "
                "use label update with remove=true"
            )
    write_access(bucket)
    svc = services()
    errors = await svc.workers.run(_remove, svc.engine, bucket, req)
    return _respond(req, errors)
