"""Writing the records of a batch request body (batch v1 ``POST .../batch`` and v2
``POST /io/{bucket}/write``) with per-record errors.

Bodies up to ``IN_MEMORY_BYTES`` are received whole and written with one ``write_batch`` call
per entry, all in a single worker-thread hop. Bigger bodies are written record by record through
``RecordWriter``s, streaming each payload in ~1 MiB hops, so a batch holding a huge record never
sits in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from quart import request

from appliance import metrics
from appliance.api.batch_codec.fast import Incoming
from appliance.api.encoding import decoded
from appliance.api.streaming import abort_writer, next_chunk
from appliance.engine.models import NewRecord
from appliance.errors import ApplianceError, BadRequest
from appliance.replication import WRITE
from appliance.sizes import IN_MEMORY_BYTES, WRITE_CHUNK_BYTES

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services

SHORT_BODY = "Content is shorter than expected: no more data to read"


class BodyReader:
    """Hands out the request body in exact slices, pulling chunks as needed."""

    def __init__(self, timeout: float, encoding: str | None = None, limit: int = 0) -> None:
        it = request.body.__aiter__()
        self._it = it if encoding is None else decoded(it, encoding, limit).__aiter__()
        self._timeout = timeout
        self._rest = b""

    async def chunks(self, n: int) -> Any:
        """Yield chunks adding up to exactly ``n`` bytes; 400 if the body ends first."""
        while n > 0:
            if not self._rest:
                chunk = await next_chunk(self._it, self._timeout)
                if chunk is None:
                    raise BadRequest(SHORT_BODY)
                self._rest = chunk
            piece, self._rest = self._rest[:n], self._rest[n:]
            n -= len(piece)
            yield piece

    async def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        parts = [piece async for piece in self.chunks(n)]
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_in_memory(
    svc: Services, storage: Storage, bucket: str, items: list[Incoming], body: bytes
) -> dict[Hashable, ApplianceError]:
    errors = _write_groups(storage, bucket, items, body)
    if svc.replicates(bucket):  # logged before the 200 (see ``records._write_small``)
        written: dict[str, list[tuple[int, int, Mapping[str, str]]]] = {}
        for item in items:
            if item.key not in errors:
                written.setdefault(item.entry, []).append((WRITE, item.timestamp, item.labels))
        for entry, records in written.items():
            svc.notify_records(bucket, entry, records)
    return errors


def _write_groups(
    storage: Storage, bucket: str, items: list[Incoming], body: bytes
) -> dict[Hashable, ApplianceError]:
    errors: dict[Hashable, ApplianceError] = {}
    groups: dict[str, tuple[list[Incoming], list[NewRecord]]] = {}
    offset = 0
    for item in items:
        end = offset + item.length
        record = NewRecord(item.timestamp, body[offset:end], item.content_type, item.labels)
        offset = end
        group = groups.get(item.entry)
        if group is None:
            group = groups[item.entry] = ([], [])
        group[0].append(item)
        group[1].append(record)
    try:
        b = storage.get_bucket(bucket)
    except ApplianceError as exc:
        return {item.key: exc for item in items}
    for entry, (incoming, records) in groups.items():
        try:
            failed = b.write_batch(entry, records)
        except ApplianceError as exc:
            for item in incoming:
                errors[item.key] = exc
            continue
        if failed:
            for item in incoming:
                err = failed.get(item.timestamp)
                if err is not None:
                    errors[item.key] = err
    return errors


async def write_records(
    svc: Services, storage: Storage, bucket: str, items: list[Incoming],
    encoding: str | None = None,
) -> dict[Hashable, ApplianceError]:
    """Receive the body for ``items`` (in body order) and write them; per-record errors.

    ``encoding``: the ``Content-Encoding`` (gzip, zstd) the body is decoded from."""
    timeout = svc.settings.io_operation_timeout
    metrics.batch_records("write", len(items))
    total = sum(item.length for item in items)
    reader = BodyReader(timeout, encoding, total)
    if total <= IN_MEMORY_BYTES:
        body = await reader.read(total)
        return await svc.workers.run(_write_in_memory, svc, storage, bucket, items, body)
    errors: dict[Hashable, ApplianceError] = {}
    for item in items:
        await _stream_one(svc, storage, bucket, item, reader, errors)
    return errors


def _begin(storage: Storage, bucket: str, item: Incoming) -> Any:
    return storage.get_bucket(bucket).begin_write(
        item.entry, item.timestamp, item.length, item.content_type, dict(item.labels)
    )


async def _stream_one(
    svc: Services, storage: Storage, bucket: str, item: Incoming, reader: BodyReader,
    errors: dict[Hashable, ApplianceError],
) -> None:
    try:
        writer = await svc.workers.run_through(
            _begin, storage, bucket, item, on_cancel=abort_writer
        )
    except ApplianceError as exc:
        errors[item.key] = exc
        async for _ in reader.chunks(item.length):  # skip this record's bytes
            pass
        return
    consumed = 0
    try:
        parts: list[bytes] = []
        buffered = 0
        async for piece in reader.chunks(item.length):
            consumed += len(piece)
            parts.append(piece)
            buffered += len(piece)
            if buffered >= WRITE_CHUNK_BYTES:
                await svc.workers.run_through(writer.write, b"".join(parts))
                parts.clear()
                buffered = 0
        if parts:
            await svc.workers.run_through(writer.write, b"".join(parts))
        await svc.workers.run_through(writer.finish)
        if svc.replicates(bucket):
            await svc.workers.run(
                svc.notify_records, bucket, item.entry, [(WRITE, item.timestamp, item.labels)]
            )
    except ApplianceError as exc:
        await asyncio.shield(svc.workers.run(writer.abort, str(exc)))
        if isinstance(exc, BadRequest):
            raise
        errors[item.key] = exc
        async for _ in reader.chunks(item.length - consumed):  # keep the body aligned
            pass
    except BaseException:
        await asyncio.shield(svc.workers.run(writer.abort, "client disconnected"))
        raise
