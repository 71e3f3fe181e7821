"""Single-record endpoints (spec §4): write, read/head, update labels, remove; entry removal
and rename. Small bodies take one worker-thread hop; large ones stream through a ``Pipeline``
(chunk N written while chunk N+1 arrives)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from quart import request

from appliance.api import params
from appliance.api.access import read_access, services, write_access
from appliance.api.connection import RawResponse
from appliance.api.queries import read_one
from appliance.api.record_response import check_state, record_response
from appliance.api.response import ApiResponse as Response
from appliance.api.streaming import (
    QuartBody,
    RecordSink,
    RequestBody,
    parse_body,
    read_any_body,
    write_streamed,
)
from appliance.engine import names
from appliance.engine.models import RecordMeta
from appliance.errors import UnprocessableEntity
from appliance.replication import UPDATE, WRITE
from appliance.sizes import INLINE_READ_BYTES, SMALL_RECORD_BYTES
from appliance.units import KIB

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services

# Single records up to this size may be written on the event loop (``_write_inline``): a
# ``pwrite`` of 16 KiB into the page cache and its CRC32C take a few microseconds.
INLINE_WRITE_BYTES = 16 * KIB

# --- write ----------------------------------------------------------------------------------


def _write_small(
    svc: Services, storage: Storage, bucket: str, entry: str, ts: int, data: bytes, ctype: str,
    labels: dict[str, str],
) -> None:
    storage.get_bucket(bucket).write_record(entry, ts, data, ctype, labels)
    if svc.replicates(bucket):  # logged before the 200: a crash cannot lose the notification
        svc.notify_records(bucket, entry, [(WRITE, ts, labels)])


def _write_inline(
    svc: Services, storage: Storage, bucket: str, entry: str, ts: int, data: bytes, ctype: str,
    labels: dict[str, str],
) -> bool:
    """Store a small record on the event loop when that cannot wait on a lock or the disk's
    commit (``Bucket.try_write_small`` decides); False: the caller takes the worker hop.

    The hop costs two cross-thread wake-ups (~80 µs of CPU and more of latency on this
    2-core VM), more than the write it carries. Not for a lease holder (its engine fence
    may renew the lease with I/O) nor a replicated bucket (its log write may wait).
    """
    if svc.fence.timed or svc.replicates(bucket):
        return False
    target = storage.peek_bucket(bucket)
    return target is not None and target.try_write_small(entry, ts, data, ctype, labels)


def _begin(
    storage: Storage, bucket: str, entry: str, ts: int, size: int, ctype: str,
    labels: dict[str, str],
) -> Any:
    return storage.get_bucket(bucket).begin_write(entry, ts, size, ctype, labels)


async def write(bucket: str, entry: str) -> Response:
    """``POST /b/{bucket}/{entry}?ts=``: store one record."""
    ts = params.timestamp(request.args)
    write_access(bucket)
    raw = request.scope["headers"]
    length = params.content_length(raw)
    ctype = params.content_type(raw)
    labels = params.labels(raw)
    svc = services()
    body = QuartBody(svc.settings.io_operation_timeout)
    await store(svc, bucket, entry, ts, length, ctype, labels, body)
    return _stored()


async def store(
    svc: Services, bucket: str, entry: str, ts: int, length: int, ctype: str,
    labels: dict[str, str], body: RequestBody,
) -> None:
    """Store one record of ``length`` bytes from ``body`` (for ``write`` and the write lane,
    ``write_lane.WriteLane``): raises what the client is to be answered."""
    storage = svc.engine
    if length <= SMALL_RECORD_BYTES:
        data = await body.read(length)
        if length <= INLINE_WRITE_BYTES and _write_inline(svc, storage, bucket, entry, ts, data,
                                                          ctype, labels):
            return
        await svc.workers.run(_write_small, svc, storage, bucket, entry, ts, data, ctype, labels)
        return
    begin = functools.partial(_begin, storage, bucket, entry, ts, length, ctype, labels)
    then = None
    if svc.replicates(bucket):  # logged before the 200, in the hop that finishes the record
        then = functools.partial(svc.notify_records, bucket, entry, [(WRITE, ts, labels)])
    # No body byte yet: the client may wait for an early answer (a refusal must not wait for
    # the body); otherwise the record is opened in the first writing hop, saving a hop.
    sink = RecordSink(begin, then)
    await write_streamed(svc, sink, body.parts(length), not body.buffered)


def _stored() -> RawResponse:
    """The ``200`` of a stored record: sent as raw header pairs in one body message (Quart's
    own path iterates an empty body and ends it with a second message: two trips through
    Hypercorn per answer instead of one). Its own list: a hook's headers are appended to it."""
    return RawResponse(200, [(b"content-length", b"0")], b"")


# --- read -----------------------------------------------------------------------------------


def _fetch(
    storage: Storage, bucket: str, entry: str, ts: int | None, head: bool
) -> tuple[RecordMeta, bytes | None]:
    e = storage.get_bucket(bucket).get_entry(entry)
    meta = e.get_record(ts) if ts is not None else e.latest_record()
    check_state(bucket, entry, meta)
    if head or meta.size > INLINE_READ_BYTES:
        return meta, None
    return meta, e.read_payload(meta)


async def read(bucket: str, entry: str) -> Response:
    """``GET|HEAD /b/{bucket}/{entry}[?ts=|?q=]``: one record (latest without parameters)."""
    args = request.args
    head = request.method == "HEAD"
    q = args.get("q")
    ts = params.optional_timestamp(args, "ts") if q is None else None
    read_access(bucket)
    svc = services()
    storage = svc.engine
    if q is not None:
        return await read_one(svc, storage, bucket, entry, q, head)
    meta, payload = await svc.workers.run(_fetch, storage, bucket, entry, ts, head)
    return record_response(svc, storage, bucket, entry, meta, payload, head)


# --- labels, removal, rename ----------------------------------------------------------------


def _update(
    svc: Services, storage: Storage, bucket: str, entry: str, ts: int, labels: dict[str, str]
) -> None:
    update = {k: v for k, v in labels.items() if v}
    remove = {k for k, v in labels.items() if not v}
    new = storage.get_bucket(bucket).get_entry(entry).update_labels(ts, update, remove)
    if svc.replicates(bucket):
        svc.notify_records(bucket, entry, [(UPDATE, ts, new.labels)])


async def update_labels(bucket: str, entry: str) -> Response:
    """``PATCH /b/{bucket}/{entry}?ts=``: set labels; an empty value removes one."""
    ts = params.timestamp(request.args)
    write_access(bucket)
    labels = params.labels(request.scope["headers"])
    svc = services()
    await svc.workers.run(_update, svc, svc.engine, bucket, entry, ts, labels)
    return Response(b"", status=200)


def _remove_record(storage: Storage, bucket: str, entry: str, ts: int) -> None:
    errors = storage.get_bucket(bucket).get_entry(entry).remove_records([ts])
    if ts in errors:
        raise errors[ts]


async def remove_record(bucket: str, entry: str) -> Response:
    """``DELETE /b/{bucket}/{entry}?ts=``: remove one record."""
    ts = params.timestamp(request.args)
    write_access(bucket)
    if names.is_meta_entry(entry):
        raise UnprocessableEntity(
            f"Can't delete records from system entry '{entry}'; use label update with remove=true"
        )
    svc = services()
    await svc.workers.run(_remove_record, svc.engine, bucket, entry, ts)
    return Response(b"", status=200)


async def remove_entry(bucket: str, entry: str) -> Response:
    """``DELETE /b/{bucket}/{entry}``: remove an entry and its descendants."""
    if names.is_meta_entry(entry):
        raise UnprocessableEntity(f"Can't remove system entry '{entry}'")
    write_access(bucket)
    svc = services()
    storage = svc.engine
    await svc.workers.run(lambda: storage.get_bucket(bucket).remove_entry(entry))
    return Response(b"", status=200)


async def rename_entry(bucket: str, entry: str) -> Response:
    """``PUT /b/{bucket}/{entry}/rename``: rename an entry and its descendants."""
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    new = await parse_body(svc, params.new_name, body)
    params.entry_name(new)
    write_access(bucket)
    storage = svc.engine
    await svc.workers.run(lambda: storage.get_bucket(bucket).rename_entry(entry, new))
    return Response(b"", status=200)
