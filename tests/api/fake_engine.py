"""A tiny in-memory stand-in for ``appliance.engine.Storage`` (the engine's public contract).

Used to exercise the HTTP layer alone (and before the engine landed); the real engine is used by
every test that does not ask for this fake explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from appliance.engine.models import (
    BucketInfo,
    BucketSettings,
    EngineOptions,
    EntryInfo,
    NewRecord,
    RecordMeta,
    RecordState,
    StorageInfo,
)
from appliance.errors import ApplianceError, Conflict, NotFound


class FakeWriter:
    def __init__(self, entry: FakeEntry, meta: RecordMeta) -> None:
        self.entry = entry
        self.meta = meta
        self.buf = bytearray()

    def write(self, chunk: bytes) -> None:
        self.buf += chunk

    def finish(self) -> None:
        self.entry.records[self.meta.timestamp] = (
            replace(self.meta, state=RecordState.FINISHED), bytes(self.buf)
        )

    def abort(self, reason: str) -> None:
        self.entry.records[self.meta.timestamp] = (
            replace(self.meta, state=RecordState.ERRORED), bytes(self.buf)
        )


class FakeEntry:
    def __init__(self, bucket: str, name: str) -> None:
        self.bucket = bucket
        self.name = name
        self.records: dict[int, tuple[RecordMeta, bytes]] = {}

    def info(self) -> EntryInfo:
        ts = sorted(self.records)
        return EntryInfo(
            self.name, sum(m.size for m, _ in self.records.values()), len(ts), 1 if ts else 0,
            ts[0] if ts else 0, ts[-1] if ts else 0,
        )

    def _missing(self, ts: int) -> NotFound:
        return NotFound(f"Record {ts} not found in entry {self.bucket}/{self.name}")

    def get_record(self, ts: int) -> RecordMeta:
        if ts not in self.records:
            raise self._missing(ts)
        return self.records[ts][0]

    def latest_record(self) -> RecordMeta:
        if not self.records:
            raise NotFound(f"Entry '{self.name}' has no records")
        return self.records[max(self.records)][0]

    def iter_records(self, start: int, stop: int) -> Iterator[RecordMeta]:
        for ts in sorted(self.records):
            if start <= ts < stop and self.records[ts][0].state == RecordState.FINISHED:
                yield self.records[ts][0]

    def read_payload(self, meta: RecordMeta) -> bytes:
        return self.records[meta.timestamp][1]

    def iter_payload(self, meta: RecordMeta) -> Iterator[bytes]:
        data = self.records[meta.timestamp][1]
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    def update_labels(self, ts: int, update: Mapping[str, str], remove: Any) -> RecordMeta:
        meta = self.get_record(ts)
        labels = {k: v for k, v in meta.labels.items() if k not in set(remove)}
        labels.update(update)
        meta = replace(meta, labels=labels)
        self.records[ts] = (meta, self.records[ts][1])
        return meta

    def remove_records(self, timestamps: Sequence[int]) -> dict[int, ApplianceError]:
        errors: dict[int, ApplianceError] = {}
        for ts in timestamps:
            if self.records.pop(ts, None) is None:
                errors[ts] = self._missing(ts)
        return errors

    def remove_where(self, start: int, stop: int, predicate: Callable[[RecordMeta], bool]) -> int:
        doomed = [m.timestamp for m in self.iter_records(start, stop) if predicate(m)]
        for ts in doomed:
            del self.records[ts]
        return len(doomed)


class FakeBucket:
    def __init__(self, name: str, settings: BucketSettings) -> None:
        self.name = name
        self.settings = settings
        self.entries_: dict[str, FakeEntry] = {}

    def info(self) -> BucketInfo:
        infos = [e.info() for e in self.entries_.values()]
        return BucketInfo(
            self.name, len(infos), sum(i.size for i in infos),
            min((i.oldest_record for i in infos), default=0),
            max((i.latest_record for i in infos), default=0),
        )

    def entries(self) -> list[EntryInfo]:
        return sorted((e.info() for e in self.entries_.values() if "$meta" not in e.name),
                      key=lambda i: i.name)

    def entry_names(self) -> list[str]:
        return sorted(self.entries_)

    def update_settings(self, **fields: Any) -> BucketSettings:
        self.settings = self.settings.merged(**fields)
        return self.settings

    def get_entry(self, name: str) -> FakeEntry:
        if name not in self.entries_:
            raise NotFound(f"Entry '{name}' not found in bucket '{self.name}'")
        return self.entries_[name]

    def get_or_create_entry(self, name: str) -> FakeEntry:
        return self.entries_.setdefault(name, FakeEntry(self.name, name))

    def remove_entry(self, name: str) -> None:
        self.get_entry(name)
        for key in [k for k in self.entries_ if k == name or k.startswith(name + "/")]:
            del self.entries_[key]

    def rename_entry(self, old: str, new: str) -> None:
        entry = self.get_entry(old)
        if new in self.entries_:
            raise Conflict(f"Entry '{new}' already exists in bucket '{self.name}'")
        del self.entries_[old]
        entry.name = new
        self.entries_[new] = entry

    def begin_write(
        self, entry: str, ts: int, size: int, content_type: str, labels: Mapping[str, str]
    ) -> FakeWriter:
        e = self.get_or_create_entry(entry)
        if ts in e.records:
            raise Conflict(f"A record with timestamp {ts} already exists")
        meta = RecordMeta(ts, size, content_type, dict(labels), RecordState.STARTED, entry)
        e.records[ts] = (meta, b"")
        return FakeWriter(e, meta)

    def write_record(
        self, entry: str, ts: int, data: bytes, content_type: str, labels: Mapping[str, str]
    ) -> None:
        writer = self.begin_write(entry, ts, len(data), content_type, labels)
        writer.write(data)
        writer.finish()

    def write_batch(self, entry: str, records: Sequence[NewRecord]) -> dict[int, ApplianceError]:
        errors: dict[int, ApplianceError] = {}
        for r in records:
            try:
                self.write_record(entry, r.timestamp, r.data, r.content_type, r.labels)
            except ApplianceError as exc:
                errors[r.timestamp] = exc
        return errors


class FakeStorage:
    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.buckets: dict[str, FakeBucket] = {}
        self.closed = 0
        self.lock = threading.Lock()

    @classmethod
    def open(cls, options: EngineOptions) -> FakeStorage:
        return cls(options)

    def close(self) -> None:
        self.closed += 1

    def compact(self) -> None:
        pass

    def info(self) -> StorageInfo:
        infos = [b.info() for b in self.buckets.values()]
        return StorageInfo(len(infos), sum(i.size for i in infos), 0, 0)

    def bucket_names(self) -> list[str]:
        return list(self.buckets)

    def create_bucket(self, name: str, settings: BucketSettings | None = None) -> FakeBucket:
        if name in self.buckets:
            raise Conflict(f"Bucket '{name}' already exists")
        bucket = self.buckets[name] = FakeBucket(name, settings or self.options.bucket_defaults)
        return bucket

    def get_bucket(self, name: str) -> FakeBucket:
        if name not in self.buckets:
            raise NotFound(f"Bucket '{name}' is not found")
        return self.buckets[name]

    def remove_bucket(self, name: str) -> None:
        self.get_bucket(name)
        del self.buckets[name]

    def rename_bucket(self, old: str, new: str) -> None:
        bucket = self.get_bucket(old)
        if new in self.buckets:
            raise Conflict(f"Bucket '{new}' already exists")
        del self.buckets[old]
        bucket.name = new
        self.buckets[new] = bucket
