"""Synchronous storage engine: buckets → entries → blocks → records (ARCHITECTURE §3).

No asyncio and no Quart here: the API layer calls into it from worker threads. Public surface
(everything else is internal to the package):

    Storage.open(options: EngineOptions) -> Storage      startup recovery runs here
    Storage.recovery: RecoveryReport                     what recovery found and did
    Storage.close() / .compact() / .info() -> StorageInfo
    Storage.bucket_names() / .create_bucket(name, settings=None) / .get_bucket(name)
    Storage.remove_bucket(name) / .rename_bucket(old, new)

    Bucket.name / .settings / .update_settings(...) / .info() / .entries() -> list[EntryInfo]
    Bucket.get_entry(name) / .get_or_create_entry(name) / .remove_entry(name) / .rename_entry(a, b)
    Bucket.begin_write(entry, ts, size, content_type, labels) -> RecordWriter
    Bucket.write_record(entry, ts, data, content_type, labels) -> None
    Bucket.write_batch(entry, records: Sequence[NewRecord]) -> dict[int, ApplianceError]

    RecordWriter.meta / .write(chunk) / .finish() / .abort(reason)

    Entry.name / .info() / .get_record(ts) / .latest_record()
    Entry.iter_records(start, stop) -> Iterator[RecordMeta]       FINISHED only, ascending ts
    Entry.read_payload(meta) -> bytes / .iter_payload(meta) -> Iterator[bytes]  (checksum verified)
    Entry.update_labels(ts, update, remove) -> RecordMeta
    Entry.remove_records(timestamps) -> dict[int, ApplianceError]
    Entry.remove_where(start, stop, predicate) -> int

    engine.check.check(data_path, repair=False) -> CheckReport     offline scrub (CLI `check`)

Errors are ``appliance.errors`` classes with ReductStore's messages.

Modules, bottom up: ``names`` (name validation), ``sizing`` (ReductStore's record metadata
size), ``codec`` (sans-I/O formats), ``fileio`` (the only fsync/rename caller), ``files`` (fd
cache), ``commit`` (group commit), ``block`` (a block in memory, block LRU), ``entry_files``
(files of one entry folder), ``blockset`` (block index in memory and block choice), ``entry``,
``writer`` (``RecordWriter``), ``recovery`` (startup recovery of an entry), ``scan`` (finding
buckets and entries), ``bucket``, ``storage``, ``report`` (``RecoveryReport``), ``check``.
"""

from appliance.engine.bucket import Bucket
from appliance.engine.entry import Entry
from appliance.engine.report import Problem, RecoveryReport
from appliance.engine.storage import Storage
from appliance.engine.writer import RecordWriter

__all__ = ["Bucket", "Entry", "Problem", "RecordWriter", "RecoveryReport", "Storage"]
