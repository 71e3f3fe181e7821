"""One replication task: its transaction logs, its filters and its sender loop.

Writer side (any engine thread, called before the write's 200 leaves): ``notify`` filters the
records, appends ``(kind, ts)`` to the entry's log with one ``pwrite`` and wakes the sender. No
network, no wait for the destination: a dead destination costs a writer one page-cache write.

Sender side (one asyncio task): for each entry with pending transactions, read up to
``RS_IO_BATCH_MAX_RECORDS``/``RS_IO_BATCH_MAX_SIZE`` of them from local storage, send them as
one batch, and only then pop them from the log. A crash between send and pop resends the batch;
the destination answers 409 for the records it already has, which count as delivered, so every
record arrives exactly once in the end. An unreachable destination leaves the log untouched and
the loop backs off ``RS_REPLICATION_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.api.batch_codec import encode_name
from appliance.engine.models import RecordMeta, RecordState
from appliance.errors import ApplianceError
from appliance import metrics
from appliance.replication.diagnostics import Diagnostics, Emit, SyncEvents
from appliance.replication.filter import EntryFilter, entry_selected
from appliance.replication.models import Mode, ReplicationSettings
from appliance.replication.remote import Outgoing, Rejected, RemoteBucket, Unavailable
from appliance.replication.txlog import WRITE, BrokenLog, TransactionLog

if TYPE_CHECKING:
    from appliance.engine import Entry, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_SECONDS = 0.25
# A tail shorter than a batch waits this long for more records before it goes out alone: a
# writer's records then travel in full batches, so the destination handles fewer requests
# per record (its per-request cost is what limits a source at >= 10,000 records/s).
LINGER_SECONDS = 0.05
PIPELINE_DEPTH = 3  # batches of one entry in flight at once
PIPELINE_BATCHES = 64  # then the next entry gets its turn
INLINE_RECORD_BYTES = 1024 * 1024  # bigger payloads stream from disk in chunks
LOG_FULL_CODE = 507
LOG_FULL_MESSAGE = "Transaction log is full (RS_REPLICATION_LOG_SIZE): oldest records dropped"
WARN_EVERY_SECONDS = 60.0
TOO_LARGE = frozenset({413, 431})  # request or its headers too large for the destination


@dataclass(frozen=True)
class TaskOptions:
    """Instance-wide knobs of every task (from Settings)."""

    data_path: Path
    log_size: int = 1_000_000
    timeout: float = 5.0
    verify_ssl: bool = True
    ca_path: str | None = None
    batch_records: int = 85
    batch_size: int = 8_000_000
    batch_metadata: int = 512_000


@dataclass
class _Batch:
    """What one pass read from the log of one entry."""

    consumed: int = 0
    start: int = 0  # log position of the first transaction (for an exact pop)
    writes: list[RecordMeta] = field(default_factory=list)
    updates: list[RecordMeta] = field(default_factory=list)
    size: int = 0  # payload bytes of ``writes``
    payloads: dict[int, bytes] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (code, message) per record


Runner = Callable[..., Awaitable[Any]]


class _Replaced(Exception):  # noqa: N818 - a control-flow signal
    """The log front moved under a pipeline (a replaced sender's late pop): re-read it."""


def _record_or_error(source: Entry, ts: int) -> RecordMeta | ApplianceError:
    """The record at ``ts`` or the error that looking it up raised."""
    try:
        return source.get_record(ts)
    except ApplianceError as exc:
        return exc


class ReplicationTask:
    """A task's logs, filters, diagnostics and sender; thread-safe ``notify``."""

    def __init__(
        self,
        name: str,
        settings: ReplicationSettings,
        options: TaskOptions,
        *,
        storage: Callable[[], Storage | None],
        run: Runner,
        events: Emit | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.options = options
        self.diagnostics = Diagnostics()
        # `$system` sync events; never for a task replicating `$system` itself (no feedback)
        self.sync = SyncEvents(events if settings.src_bucket != "$system" else None)
        self._pass = [0, 0, 0]  # written, failed, bytes of the running pass
        self._storage = storage
        self._run = run
        self._lock = threading.Lock()
        self._logs: dict[str, TransactionLog] = {}
        self._filters: dict[str, EntryFilter | None] = {}  # None: entry not selected
        self._flag = settings.mode is Mode.ENABLED  # ReductStore: true until a send fails
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_warning = 0.0
        self._shrunk: dict[str, int] = {}  # entry -> records per batch the destination takes
        self._short_since: dict[str, float] = {}  # entry -> when its short tail was first seen
        self._record_size: dict[str, int] = {}  # entry -> mean payload size of its last batch
        self._linger: float | None = None  # seconds until the next short tail is due
        self.remote = self._make_remote()

    def _make_remote(self) -> RemoteBucket:
        s, o = self.settings, self.options
        return RemoteBucket(
            s.dst_host,
            s.dst_bucket,
            s.dst_token,
            compression=s.compression,
            timeout=o.timeout,
            verify_ssl=o.verify_ssl,
            ca_path=o.ca_path,
        )

    # --- state -------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """Where this task's logs live (outside the engine's bucket folders)."""
        # The name is percent-encoded ("/" and the like never reach the path; "." and ".."
        # are refused at create), so a task's folder is always inside .replication/.
        name = encode_name(self.name)
        return self.options.data_path / ".replication" / name / self.settings.src_bucket

    @property
    def is_active(self) -> bool:
        """ReductStore's ``is_active``: enabled/paused and the last contact went well."""
        return self.settings.mode is not Mode.DISABLED and self._flag

    @property
    def pending_records(self) -> int:
        """Transactions waiting in the logs."""
        with self._lock:
            logs = list(self._logs.values())
        return sum(len(t) for t in logs)

    def info_json(self, provisioned: bool) -> dict[str, Any]:
        """``ReplicationInfo``."""
        return {
            "name": self.name,
            "mode": self.settings.mode.value,
            "is_active": self.is_active,
            "is_provisioned": provisioned,
            "pending_records": self.pending_records,
        }

    def set_mode(self, mode: Mode) -> None:
        """Change the mode; the sender picks it up at once."""
        self.settings = self.settings.with_mode(mode)
        if mode is Mode.DISABLED:
            self._flag = False
        self._poke()

    # --- writer side (engine threads) ------------------------------------------------------

    def oldest_pending(self) -> int | None:
        """Timestamp (µs) of the oldest record waiting in any log (blocking: reads log fronts)."""
        with self._lock:
            logs = list(self._logs.values())
        oldest = None
        for txlog in logs:
            try:
                front = txlog.front(1)
            except Exception:  # noqa: BLE001 - a broken or closed log is the sender's business
                continue
            if front and (oldest is None or front[0][1] < oldest):
                oldest = front[0][1]
        return oldest

    def _log_for(self, entry: str) -> TransactionLog:
        txlog = self._logs.get(entry)
        if txlog is None:
            path = self.folder / (encode_name(entry) + ".log")
            txlog = TransactionLog(path, self.options.log_size)
            self._logs[entry] = txlog
        return txlog

    def notify(self, entry: str, items: Sequence[tuple[int, int, Mapping[str, str]]]) -> None:
        """Log ``(kind, ts, labels)`` items of ``entry`` that pass the filter; wake the sender."""
        if self.settings.mode is Mode.DISABLED:
            return
        with self._lock:
            if entry not in self._filters:
                selected = entry_selected(self.settings.entries, entry)
                self._filters[entry] = EntryFilter(entry, self.settings.when) if selected else None
            filt = self._filters[entry]
            if filt is None:
                return
            if filt.passes_all:
                passed = [(kind, ts) for kind, ts, _ in items]
            else:
                passed = [(kind, ts) for kind, ts, labels in items if filt.passes(ts, labels)]
            if not passed:
                return
            dropped = self._log_for(entry).push(passed)
        if dropped:
            self.diagnostics.error(LOG_FULL_CODE, LOG_FULL_MESSAGE, dropped)
            self._warn(f"replication '{self.name}': {LOG_FULL_MESSAGE} ({dropped} in {entry})")
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # loop closed at shutdown
            pass

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning("%s", message)

    def open_existing_logs(self) -> None:
        """Reopen the logs left by an earlier run (blocking): their backlog is resumed."""
        if not self.folder.is_dir():
            return
        from appliance.api.batch_codec import decode_name

        with self._lock:
            for path in sorted(self.folder.glob("*.log")):
                entry = decode_name(path.name[: -len(".log")])
                if entry not in self._logs:
                    self._logs[entry] = TransactionLog(path, self.options.log_size)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sender loop."""
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        await self._run(self.open_existing_logs)
        self._worker = asyncio.create_task(self._loop_forever(), name=f"replication-{self.name}")

    def adopt_logs(self, old: ReplicationTask) -> None:
        """Take over the open logs of the task this one replaces (same source bucket), so a
        writer racing with the update appends to the very file the new sender reads."""
        with old._lock:  # noqa: SLF001 - same class
            self._logs.update(old._logs)  # noqa: SLF001

    async def stop(self, *, close_logs: bool = True) -> None:
        """Stop the sender (a batch in flight is abandoned: it stays in the log); close the
        logs unless a replacing task adopted them."""
        self._stopping = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.remote.close()
        self.sync.flush(self.pending_records)
        if close_logs:
            with self._lock:
                for txlog in self._logs.values():
                    txlog.close()

    def remove_logs(self, *, every_source: bool = True) -> None:
        """Delete this task's logs (after ``stop``): of its source bucket only, or of every
        source the task name ever had (a removed task)."""
        with self._lock:
            for txlog in self._logs.values():
                txlog.close()
            self._logs.clear()
        folder = self.folder.parent if every_source else self.folder
        shutil.rmtree(folder, ignore_errors=True)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, woken early by a notification or a mode change."""
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _loop_forever(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._wake.clear()
            self._wake_pending = False
            self.sync.flush_due(lambda: self.pending_records)
            mode = self.settings.mode
            if mode is Mode.DISABLED:
                self._flag = False
                await self._sleep(IDLE_SECONDS)
                continue
            if mode is Mode.PAUSED:
                try:
                    await self.remote.ensure()
                    self._flag = True
                except Unavailable:
                    self._flag = False
                await self._sleep(IDLE_SECONDS)
                continue
            self._pass = [0, 0, 0]
            started = time.monotonic()
            try:
                sent = await self.run_pass()
            except Unavailable as exc:
                self._flag = False
                self._passed(exc.code, started)
                self._warn(
                    f"replication '{self.name}': destination {self.settings.dst_host} "
                    f"unavailable ({exc.code}: {exc.message}); retrying every "
                    f"{self.options.timeout:g} s"
                )
                await asyncio.sleep(self.options.timeout)
                continue
            except Exception:  # noqa: BLE001 - the loop must survive anything
                self._flag = False
                self._passed(500, started)
                log.exception("replication '%s': pass failed", self.name)
                await asyncio.sleep(IDLE_SECONDS)
                continue
            self._flag = True
            if sent:
                self._passed(200, started)
            else:
                # a short tail waiting for company: look again when it is due (or on a write)
                await self._sleep(IDLE_SECONDS if self._linger is None else self._linger)

    def _passed(self, status: int, started: float) -> None:
        """Count the pass just made: the error metric, the `$system` aggregate (no I/O)."""
        if status != 200:
            metrics.replication_error(self.name)
        written, failed, nbytes = self._pass
        self.sync.record(status, written, failed, nbytes, time.monotonic() - started,
                         self.pending_records)

    # --- sender ------------------------------------------------------------------------------

    async def run_pass(self) -> bool:
        """One batch per entry with pending records; True if anything was processed."""
        with self._lock:
            entries = sorted(e for e, t in self._logs.items() if len(t))
        self._linger = None
        processed = False
        for entry in entries:
            if self.settings.mode is not Mode.ENABLED or self._stopping:
                break
            processed |= await self._send_entry(entry)
        return processed

    def _limits(self, entry: str) -> tuple[int, int]:
        filt = self._filters.get(entry)
        records = (filt.batch_records if filt else None) or self.options.batch_records
        size = (filt.batch_size if filt else None) or self.options.batch_size
        return min(records, self._shrunk.get(entry, records)), size

    def _due(self, entry: str, available: int, max_records: int, max_size: int) -> bool:
        """Whether ``available`` pending transactions go out now: a full batch (by records or,
        from the last batch's mean record size, by bytes) at once, a short tail only once it
        has waited ``LINGER_SECONDS`` (so a writer's records travel in full batches)."""
        if available <= 0:
            return False
        if available >= max_records or available * self._record_size.get(entry, 0) >= max_size:
            return True
        now = time.monotonic()
        left = self._short_since.setdefault(entry, now) + LINGER_SECONDS - now
        if left <= 0:
            return True
        self._linger = left if self._linger is None else min(self._linger, left)
        return False

    async def _send_entry(self, entry: str) -> bool:
        """Send the entry's backlog, up to ``PIPELINE_BATCHES`` batches, ``PIPELINE_DEPTH`` in
        flight: the next batch is read from disk while earlier ones travel. The log is popped
        strictly in order, only past batches that were delivered (or counted as failed); those
        pops ride along with the next read (one thread hop per batch, not two)."""
        txlog = self._logs[entry]
        max_records, max_size = self._limits(entry)
        inflight: list[tuple[asyncio.Task[None], _Batch]] = []
        delivered: list[_Batch] = []  # settled in order, not popped yet
        offset = sent = 0
        unavailable: Unavailable | None = None

        async def settle_oldest() -> None:
            nonlocal unavailable
            task, done = inflight.pop(0)
            try:
                await task
            except Unavailable as exc:
                unavailable = unavailable or exc
            if unavailable is None:  # in order: nothing is popped past a batch still owed
                delivered.append(done)

        def take_delivered() -> list[_Batch]:
            nonlocal offset
            done = delivered[:]
            delivered.clear()
            offset -= sum(b.consumed for b in done)  # ``offset`` counts from the front
            return done

        try:
            while sent < PIPELINE_BATCHES and unavailable is None and not self._stopping:
                if not self._due(entry, len(txlog) - offset, max_records, max_size):
                    break
                pops = take_delivered()
                batch = await self._run(
                    self._prepare, txlog, entry, pops, offset, max_records, max_size
                )
                if batch.consumed == 0:
                    break  # nothing more, or the next record is still being written
                self._short_since.pop(entry, None)
                if batch.writes:
                    self._record_size[entry] = batch.size // len(batch.writes)
                offset += batch.consumed
                sent += 1
                task = asyncio.create_task(self._process(entry, batch))
                inflight.append((task, batch))
                if len(inflight) >= PIPELINE_DEPTH:
                    await settle_oldest()
            while inflight:
                await settle_oldest()
            if delivered:
                await self._run(self._pop, txlog, take_delivered())
        except BrokenLog as exc:
            for task, _ in inflight:
                task.cancel()
            log.error("replication '%s': %s; the log is recreated empty", self.name, exc)
            self.diagnostics.error(500, str(exc), len(txlog))
            with self._lock:
                txlog.remove()
                self._logs[entry] = TransactionLog(txlog.path, self.options.log_size)
            return True
        except _Replaced:
            for task, _ in inflight:
                task.cancel()
            return True
        except BaseException:
            for task, _ in inflight:
                task.cancel()
            raise
        if unavailable is not None:
            raise unavailable
        return sent > 0

    @staticmethod
    def _pop(txlog: TransactionLog, done: Sequence[_Batch]) -> None:
        """Pop delivered batches, oldest first (blocking); _Replaced if the front moved."""
        for batch in done:
            if not txlog.pop(batch.consumed, batch.start):
                raise _Replaced  # someone else moved the front: start the pass again

    async def _process(self, entry: str, batch: _Batch) -> None:
        """Deliver one batch and count it; Unavailable if it must be sent again later."""
        count = len(batch.writes) + len(batch.updates)
        try:
            failed = await self._deliver(entry, batch)
        except Rejected as exc:
            if exc.code in TOO_LARGE and count > 1:
                # The destination's limits are smaller than ours: resend in halves, drop nothing.
                self._shrunk[entry] = max(1, count // 2)
                log.warning(
                    "replication '%s': destination refused %d records of %s as too large (%s); "
                    "sending at most %d per batch", self.name, count, entry, exc.code,
                    self._shrunk[entry],
                )
                self.diagnostics.error(exc.code, exc.message, count)
                self._pass[1] += count
                raise Unavailable(exc.code, exc.message) from None
            log.error(
                "replication '%s': destination refused a batch of %d record(s) of %s: %s %s",
                self.name, count, entry, exc.code, exc.message,
            )
            self.diagnostics.error(exc.code, exc.message, count)
            self._pass[1] += count
            metrics.replication_error(self.name)  # the pass goes on: count the refusal here
            failed = {}
            count = 0
        except Unavailable as exc:
            self.diagnostics.error(exc.code, exc.message, count)
            self._pass[1] += count
            raise
        for code, message in batch.failures:
            self.diagnostics.error(code, message)
        for code, message in failed.values():
            self.diagnostics.error(code, message)
        self.diagnostics.ok(count - len(failed))
        self._pass[0] += count - len(failed)
        self._pass[1] += len(failed) + len(batch.failures)
        if count:
            self._pass[2] += sum(m.size for m in batch.writes if m.timestamp not in failed)

    def _prepare(
        self,
        txlog: TransactionLog,
        entry: str,
        pops: Sequence[_Batch],
        skip: int,
        max_records: int,
        max_size: int,
    ) -> _Batch:
        """Pop the delivered ``pops``, then read the log after ``skip`` transactions and the
        records it names (blocking)."""
        self._pop(txlog, pops)
        batch = _Batch()
        batch.start, txs = txlog.peek(max_records, skip)
        if not txs:
            return batch
        storage = self._storage()
        if storage is None:
            return batch
        try:
            source = storage.get_bucket(self.settings.src_bucket).get_entry(entry)
        except ApplianceError as exc:  # entry or bucket removed: those records are gone
            batch.consumed = len(txs)
            batch.failures = [(exc.status, exc.message)] * len(txs)
            return batch
        size = meta_bytes = 0
        max_meta = self.options.batch_metadata // 2
        seen_writes: set[int] = set()
        wanted = [ts for _, ts in txs]
        try:
            metas = source.records_at(wanted)  # one lock hold, not one per record
        except ApplianceError:
            # e.g. a block that cannot be read: one by one, so only its records fail (and are
            # counted), as with single lookups, and the rest still go
            metas = [_record_or_error(source, ts) for ts in wanted]
        for (kind, ts), meta in zip(txs, metas, strict=True):
            if isinstance(meta, ApplianceError):
                batch.failures.append((meta.status, meta.message))
                batch.consumed += 1
                continue
            if meta.state is RecordState.STARTED:
                break  # still being written: send it in a later pass
            batch.consumed += 1
            if meta.state is RecordState.ERRORED:
                batch.failures.append((500, f"Record {ts} in {entry} is broken"))
                continue
            if kind == WRITE:
                if ts in seen_writes:
                    continue
                seen_writes.add(ts)
                batch.writes.append(meta)
                size += meta.size
            else:
                batch.updates.append(meta)
            labels = meta.labels
            meta_bytes += 40
            if labels:  # C-level sums: this runs for every replicated record
                meta_bytes += 2 * len(labels) + sum(map(len, labels))
                meta_bytes += sum(map(len, labels.values()))
            if size >= max_size or meta_bytes >= max_meta:
                break
        batch.size = size
        small = [m for m in batch.writes if m.size <= INLINE_RECORD_BYTES]
        if small:
            for meta, data in zip(small, source.read_payloads(small), strict=True):
                batch.payloads[meta.timestamp] = data
        return batch

    def _outgoing(self, entry: str, metas: Sequence[RecordMeta]) -> list[Outgoing]:
        dst = self.settings.dst_entry(entry)
        return [Outgoing(dst, m.timestamp, m.size, m.content_type, m.labels) for m in metas]

    async def _deliver(self, entry: str, batch: _Batch) -> dict[int, tuple[int, str]]:
        """Send updates (then, as writes, the ones the destination lacks) and writes."""
        failed: dict[int, tuple[int, str]] = {}
        writes = list(batch.writes)
        if batch.updates:
            errors = await self.remote.update(
                self.settings.dst_entry(entry), self._outgoing(entry, batch.updates)
            )
            retry = {m.timestamp for m in writes}
            for meta in batch.updates:
                if meta.timestamp in errors and meta.timestamp not in retry:
                    writes.append(meta)  # the destination lacks it: send the whole record
                    retry.add(meta.timestamp)
            writes.sort(key=lambda m: m.timestamp)
        if writes:
            payloads = batch.payloads
            body: bytes | AsyncIterator[bytes]
            if all(m.timestamp in payloads for m in writes):
                body = b"".join([payloads[m.timestamp] for m in writes])  # one send, not 85
            else:
                body = self._body(entry, writes, payloads)
            errors = await self.remote.write(self._outgoing(entry, writes), body)
            if errors and all(code == 404 for code, _ in errors.values()):
                self.remote.available = False  # the bucket vanished there: recreate, resend
                raise Unavailable(404, next(iter(errors.values()))[1])
            for ts, (code, message) in errors.items():
                if code != 409:  # 409: already there (a resend after a crash) = delivered
                    failed[ts] = (code, message)
        return failed

    async def _body(
        self, entry: str, metas: Sequence[RecordMeta], payloads: dict[int, bytes]
    ) -> AsyncIterator[bytes]:
        pending: list[bytes] = []  # small payloads go out together, not one send each
        for meta in metas:
            data = payloads.get(meta.timestamp)
            if data is not None:
                pending.append(data)
                continue
            if pending:
                yield b"".join(pending)
                pending.clear()
            chunks = await self._run(self._open_payload, entry, meta)
            while True:
                chunk = await self._run(next, chunks, None)
                if chunk is None:
                    break
                yield chunk
        if pending:
            yield b"".join(pending)

    def _open_payload(self, entry: str, meta: RecordMeta) -> Iterator[bytes]:
        storage = self._storage()
        if storage is None:
            raise Unavailable(503, "source storage closed")
        source = storage.get_bucket(self.settings.src_bucket).get_entry(entry)
        return iter(source.iter_payload(meta))
