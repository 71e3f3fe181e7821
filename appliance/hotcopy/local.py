"""A local data folder (or a complete backup's ``data/``) as copy source, opened read-only.

The folder is opened with the engine's replica view (``EngineOptions(read_only=True)``): no
recovery, no WAL replay, nothing written, so it is safe on a backup and on the folder of a
running instance. The price: records still only in a WAL (an instance killed before its
compaction) are not visible; ``LocalSource.uncompacted_wals`` counts such segments so the CLI
can say so. Engine calls run in worker threads; every payload is checksum-verified as it is
read, and a record that fails its checksum is never sent whole (the last chunk is held back
until the checksum passed), so a corrupt record cannot reach the destination.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from appliance.engine import Entry, Storage
from appliance.engine.models import U64_MAX, EngineOptions, RecordMeta
from appliance.engine.names import is_meta_entry
from appliance.errors import ApplianceError, NotFound
from appliance.hotcopy.model import CopyError, EntryStat, RecordHeader
from appliance.query.condition import compile_when, hide_tombstones
from appliance.units import KIB, MIB
from appliance.workers import Workers

BATCH_RECORDS = 512
BATCH_BYTES = 8 * MIB
PREFETCH_BYTES = 4 * MIB  # small payloads read ahead in one engine call
SMALL_RECORD_BYTES = 256 * KIB
CHUNK_BYTES = 512 * KIB
DATA_FOLDER = "data"
MANIFEST_PREFIX = "manifest"


def resolve_folder(path: Path, bucket: str) -> Path:
    """The data folder holding ``bucket``: ``path`` itself, or ``path/data`` for a backup.

    A backup folder (``<target>/<backup-id>/``) is complete only once its manifest exists
    (issue 12 §1), so one without a manifest is refused.
    """
    if not path.is_dir():
        raise CopyError(f"source folder {str(path)!r} does not exist")
    if (path / bucket).is_dir():
        return path
    data = path / DATA_FOLDER
    if data.is_dir():
        if not any(p.name.startswith(MANIFEST_PREFIX) for p in path.iterdir() if p.is_file()):
            raise CopyError(
                f"source folder {str(path)!r} looks like a backup without a manifest: "
                "it is incomplete (interrupted) and can't be copied from"
            )
        if (data / bucket).is_dir():
            return data
        path = data
    raise CopyError(f"source folder {str(path)!r} has no bucket {bucket!r}", status=404)


class _LocalBatch:
    """Up to ``BATCH_RECORDS`` records of one entry; payloads read on demand (``SourceBatch``)."""

    def __init__(self, source: LocalSource, entry: Entry, metas: list[RecordMeta]) -> None:
        self._source = source
        self._entry = entry
        self._metas = {meta.timestamp: meta for meta in metas}
        self._order = [meta.timestamp for meta in metas]
        self._cache: dict[int, bytes] = {}
        self.records = [
            RecordHeader(entry.name, m.timestamp, m.size, m.content_type, dict(m.labels))
            for m in metas
        ]

    def _prefetch(self, timestamp: int) -> None:
        """Read ``timestamp`` and the small records after it (up to PREFETCH_BYTES) at once."""
        first = self._order.index(timestamp)
        group: list[RecordMeta] = []
        size = 0
        for ts in self._order[first:]:
            meta = self._metas[ts]
            if group and (meta.size > SMALL_RECORD_BYTES or size + meta.size > PREFETCH_BYTES):
                break
            group.append(meta)
            size += meta.size
        try:
            payloads = self._entry.read_payloads(group)
        except ApplianceError:
            group = group[:1]  # one of them is damaged: read record by record to name it
            payloads = [self._entry.read_payload(group[0])]
        self._cache = {meta.timestamp: data for meta, data in zip(group, payloads, strict=True)}

    async def payload(self, record: RecordHeader) -> AsyncIterator[bytes]:
        """The verified payload of ``record``."""
        meta = self._metas[record.timestamp]
        try:
            if meta.size <= SMALL_RECORD_BYTES:
                if record.timestamp not in self._cache:
                    await self._source.run(self._prefetch, record.timestamp)
                yield self._cache.pop(record.timestamp)
                return
            chunks = self._entry.iter_payload(meta, CHUNK_BYTES)
            held = await self._source.run(next, chunks, None)
            while held is not None:
                # Hold each chunk until the next one is read: the checksum is verified when
                # the iterator ends, and the destination must not get a bad record whole.
                following = await self._source.run(next, chunks, None)
                yield held
                held = following
        except ApplianceError as exc:
            raise CopyError(
                f"{self._source.description}: record {record.timestamp} of entry "
                f"{record.entry!r} can't be read: {exc.public_message}",
                timestamp=record.timestamp,
            ) from exc


class LocalSource:
    """One bucket of a data folder, opened read-only."""

    def __init__(self, folder: Path, bucket: str) -> None:
        self.folder = resolve_folder(folder, bucket)
        self.bucket = bucket
        self.description = f"source {self.folder}/{bucket}"
        self._workers = Workers(ThreadPoolExecutor(max_workers=4, thread_name_prefix="cp-local"))
        self._storage: Storage | None = None

    async def run(self, func: Any, *args: Any) -> Any:
        """Run a blocking engine call in the source's threads."""
        return await self._workers.run(func, *args)

    async def _open(self) -> Storage:
        if self._storage is None:
            options = EngineOptions(data_path=self.folder, read_only=True)
            self._storage = await self.run(Storage.open, options)
        return self._storage

    @property
    def uncompacted_wals(self) -> int:
        """WAL segments in the bucket: their records are invisible to a read-only open."""
        return sum(1 for _ in (self.folder / self.bucket).glob("**/.wal/*.wal"))

    async def _bucket(self) -> Any:
        storage = await self._open()
        try:
            return storage.get_bucket(self.bucket)
        except NotFound as exc:
            raise CopyError(f"{self.description}: {exc.public_message}", status=404) from exc

    async def bucket_settings(self) -> dict[str, Any]:
        """The bucket's settings file as ReductStore's JSON object."""
        return (await self._bucket()).settings.to_json()  # type: ignore[no-any-return]

    async def entries(self) -> list[EntryStat]:
        """Every entry with its statistics (``$meta`` entries included)."""
        bucket = await self._bucket()
        infos = await self.run(bucket.entries)
        return [EntryStat(i.name, i.record_count, i.oldest_record, i.latest_record) for i in infos]

    async def read(
        self, entry: str, start: int | None, stop: int | None, when: Mapping[str, Any] | None
    ) -> AsyncIterator[_LocalBatch]:
        """Batches of one entry's records with start <= ts < stop matching ``when``."""
        bucket = await self._bucket()
        try:
            handle: Entry = bucket.get_entry(entry)
            condition = compile_when(dict(when) if when else None)
        except ApplianceError as exc:
            message = f"{self.description}: entry {entry!r}: {exc.public_message}"
            raise CopyError(message, status=exc.status) from exc
        if is_meta_entry(entry):
            condition = hide_tombstones(condition)  # removed attachments, as queries hide them
        records = handle.iter_records(start or 0, U64_MAX if stop is None else stop)

        def next_batch(it: Iterator[RecordMeta]) -> list[RecordMeta]:
            batch: list[RecordMeta] = []
            size = 0
            for meta in it:
                if condition.evaluate(meta.timestamp, meta.labels):
                    batch.append(meta)
                    size += meta.size
                if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES or condition.exhausted:
                    break
            return batch

        while True:
            try:
                metas = await self.run(next_batch, records)
            except ApplianceError as exc:
                raise CopyError(
                    f"{self.description}: entry {entry!r} can't be read: {exc.public_message}"
                ) from exc
            if not metas:
                return
            yield _LocalBatch(self, handle, metas)

    async def aclose(self) -> None:
        """Close the engine's files and the worker threads."""
        if self._storage is not None:
            await self.run(self._storage.close)
            self._storage = None
        self._workers.shutdown()
