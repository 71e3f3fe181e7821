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

    RecordWriter.meta / .write(chunk) / .write_many(chunks) / .finish() / .abort(reason)
        (also a context manager)

    Entry.name / .info() / .get_record(ts) / .latest_record()
    Entry.iter_records(start, stop) -> Iterator[RecordMeta]       FINISHED only, ascending ts
    Entry.read_payload(meta) -> bytes / .iter_payload(meta, chunk_size) -> Iterator[bytes]
                                                                  (payload CRC32C verified)
    Entry.update_labels(ts, update, remove) -> RecordMeta
    Entry.remove_records(timestamps) -> dict[int, ApplianceError]
    Entry.remove_where(start, stop, predicate) -> int

    engine.check.check(data_path, repair=False) -> CheckReport     offline scrub (CLI `check`)

Errors are ``appliance.errors`` classes with ReductStore's messages. Every method is
thread-safe (one lock per entry; payload bytes move outside it). No ``OSError`` leaves the
public methods above: ``ioerrors.io_boundary`` maps it once, at these entry points (full disk
-> 507, out of descriptors -> 503, name too long -> 422, else 500 naming the operation).

Behaviour worth knowing:

- Durability: when ``RecordWriter.finish`` / ``write_record`` / ``write_batch`` return, the
  record survives SIGKILL (payload in the page cache, then one framed WAL append); with
  ``sync_writes`` it survives power loss too (data + WAL fsynced, group commit).
- A write that never finished (STARTED at a crash) does not come back after restart.
- Runtime corruption: a descriptor failing its CRC -> ``CorruptionError`` and the block is
  hidden until restart; a payload failing its CRC -> ``CorruptionError`` for that record only.
- A belated record inside the span of a full block goes into that block (may exceed the block
  limits) so every block holds exactly ``[id, next_id)``; ReductStore would start a new block.

Modules, bottom up: ``names`` (name validation), ``sizing`` (ReductStore's record metadata
size), ``models`` (value types and enums), ``generations`` (generation fencing rules for WAL
replay and file replacement), ``codec`` (sans-I/O formats), ``fs_ops`` (the engine's atomic
writes, durable renames and removals, on ``backends.durability``'s fsync/rename), ``ioerrors``
(the OSError boundary), ``reserve`` (the removal reserve for a full disk), ``fd_cache`` (the
bounded cache of open descriptors), ``commit`` (group commit), ``block`` (a block in memory,
block LRU), ``context`` (shared caches and options), ``entry_folder`` (the files of one entry
folder and the I/O on them), ``blockset`` (block index in memory and block choice),
``bulk_read`` and ``entry_removal`` (two jobs of ``Entry``, mixed in), ``entry``,
``writer`` (``RecordWriter``), ``recovery`` (startup recovery of an entry), ``scan`` (finding
buckets and entries), ``quota`` (write admission of a bucket), ``bucket``, ``storage``,
``report`` (``RecoveryReport``), ``check``, ``mirror`` (the local folder as a bounded cache of
an object store: upload, eviction, fetch on a miss; ``EngineOptions.mirror``, None = local data).
"""

from appliance.engine.bucket import Bucket
from appliance.engine.entry import Entry
from appliance.engine.report import Problem, RecoveryReport
from appliance.engine.storage import Storage
from appliance.engine.writer import RecordWriter

__all__ = ["Bucket", "Entry", "Problem", "RecordWriter", "RecoveryReport", "Storage"]
