"""Batch protocol v1 (spec §7): one entry, ``x-reduct-time-<ts>`` headers.

Reads come from an entry-level query; writes, label updates and removals answer 200 with an
``x-reduct-error-<ts>`` header per failed record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from quart import request

from appliance.api import params
from appliance.api.access import services, write_access
from appliance.api.batch_codec import (
    encode_v1_error,
    parse_v1_headers,
    parse_v1_timestamps,
)
from appliance.api.batch_codec.fast import parse_v1_write
from appliance.api.encoding import content_encoding
from appliance.api.ingest import Incoming, write_records
from appliance.api.queries import query_id, read_batch
from appliance.api.response import ApiResponse as Response
from appliance.engine import names
from appliance.errors import ApplianceError, PayloadTooLarge, UnprocessableEntity
from appliance.replication import UPDATE

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services

LENGTH_MISMATCH = (
    "content-length header does not match the sum of the content-lengths in the headers"
)


def header_map() -> dict[str, str]:
    """The request headers as ``{lower-case name: value}`` (what the batch codec takes)."""
    return {k.decode("latin1").lower(): params.decode_value(v) for k, v in request.scope["headers"]}


def check_batch_limits() -> None:
    """413 when the request announces more records than ``RS_IO_BATCH_MAX_WRITE_RECORDS`` or
    more record-header bytes than ``RS_IO_BATCH_MAX_METADATA_SIZE`` (Σ len(name)+len(value)+2,
    as for batched reads): refused before any parsing, so a request with thousands of headers
    costs one cheap pass and never reaches the engine.
    """
    settings = services().settings
    raw = request.scope["headers"]
    if not isinstance(raw, (list, tuple)):
        raw = list(raw)
    # An upper bound in C first: every header counted as a record and all header bytes as
    # record-header bytes. A batch within both limits (nearly all) skips the exact loop
    # (~0.3 µs a header); one that may be over gets counted exactly, as before.
    if len(raw) <= settings.io_batch_max_write_records:
        # Joined, the names and the values give their byte counts in C (0.05 µs a header
        # against 0.12 for ``sum(map(len, ...))``).
        names = b"".join([name for name, _ in raw])
        values = b"".join([value for _, value in raw])
        if len(names) + len(values) + 2 * len(raw) <= settings.io_batch_max_metadata_size:
            return
    count = size = 0
    for name, value in raw:
        # v1 `x-reduct-time-<ts>` and v2 `x-reduct-<index>-<delta>`: names ending in digits.
        if name[:9].lower() == b"x-reduct-" and name[-1:].isdigit():
            count += 1
            size += len(name) + len(value) + 2
    if count > settings.io_batch_max_write_records:
        raise PayloadTooLarge(
            f"Too many records in batch: {count}, at most "
            f"{settings.io_batch_max_write_records} (RS_IO_BATCH_MAX_WRITE_RECORDS)"
        )
    if size > settings.io_batch_max_metadata_size:
        raise PayloadTooLarge(
            f"Batch headers are too large: {size} bytes, at most "
            f"{settings.io_batch_max_metadata_size} (RS_IO_BATCH_MAX_METADATA_SIZE)"
        )


def batch_header_map() -> dict[str, str]:
    """``header_map`` of a batch write, update or removal, after ``check_batch_limits``."""
    check_batch_limits()
    return header_map()


def error_headers(errors: dict[int, ApplianceError]) -> dict[str, str]:
    """``x-reduct-error-<ts>`` headers for per-record failures."""
    return dict(encode_v1_error(ts, err) for ts, err in sorted(errors.items()))


async def read(bucket: str, entry: str) -> Response:
    """``GET|HEAD /b/{bucket}/{entry}/batch?q=``: the next batch of an entry-level query."""
    raw = request.args.get("q")
    if raw is None:
        raise UnprocessableEntity("'q' parameter is required for batched reads")
    qid = query_id(raw, "'q' must be a number")
    return await read_batch(bucket, entry, qid, v2=False)


async def write(bucket: str, entry: str) -> Response:
    """``POST /b/{bucket}/{entry}/batch``: write records given in ascending ts order."""
    check_batch_limits()
    parsed = parse_v1_write(request.scope["headers"], entry)
    if parsed is None:  # something unusual: the general parser (it raises the exact error)
        headers = header_map()
        rows = [
            Incoming(r.timestamp, entry, r.timestamp, r.content_length, r.content_type, r.labels)
            for r in parse_v1_headers(headers)
        ]
        total = sum(row[3] for row in rows)
    else:
        rows, headers, total = parsed.rows, parsed.others, parsed.content_length
    write_access(bucket)
    encoding = content_encoding(headers)
    declared = params.header(request.scope["headers"], b"content-length")
    # With an encoding, Content-Length counts encoded bytes; the decoder bounds the rest.
    if (
        encoding is None
        and declared is not None
        and params.parse_u64(declared.decode("latin1").strip()) != total
    ):
        raise UnprocessableEntity(LENGTH_MISMATCH)
    svc = services()
    errors = await write_records(svc, svc.engine, bucket, rows, encoding)
    return Response(b"", status=200, headers=error_headers(errors))  # type: ignore[arg-type]


def _update(
    svc: Services, storage: Storage, bucket: str, entry: str,
    updates: list[tuple[int, dict[str, str], set[str]]],
) -> dict[int, ApplianceError]:
    e = storage.get_bucket(bucket).get_entry(entry)
    errors: dict[int, ApplianceError] = {}
    done: list[tuple[int, int, Mapping[str, str]]] = []
    for ts, update, remove in updates:
        try:
            done.append((UPDATE, ts, e.update_labels(ts, update, remove).labels))
        except ApplianceError as exc:
            errors[ts] = exc
    if done and svc.replicates(bucket):
        svc.notify_records(bucket, entry, done)
    return errors


async def update(bucket: str, entry: str) -> Response:
    """``PATCH /b/{bucket}/{entry}/batch``: label updates; an empty value removes a label."""
    records = parse_v1_headers(batch_header_map())
    write_access(bucket)
    updates = []
    for r in records:
        change = r.label_update()
        updates.append((r.timestamp, dict(change.set), set(change.remove)))
    svc = services()
    errors = await svc.workers.run(_update, svc, svc.engine, bucket, entry, updates)
    return Response(b"", status=200, headers=error_headers(errors))


def _remove(
    storage: Storage, bucket: str, entry: str, stamps: list[int]
) -> dict[int, ApplianceError]:
    return dict(storage.get_bucket(bucket).get_entry(entry).remove_records(stamps))


async def remove(bucket: str, entry: str) -> Response:
    """``DELETE /b/{bucket}/{entry}/batch``: remove the listed records."""
    if names.is_meta_entry(entry):
        raise UnprocessableEntity(
            f"Can't delete records from system entry '{entry}'; use label update with remove=true"
        )
    stamps = parse_v1_timestamps(batch_header_map())
    write_access(bucket)
    svc = services()
    errors = await svc.workers.run(_remove, svc.engine, bucket, entry, stamps)
    return Response(b"", status=200, headers=error_headers(errors))
