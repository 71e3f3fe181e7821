"""Copy one bucket from a source to a destination, entry by entry (issue 12 §3).

Steps: read the source bucket's settings and entries; create the destination bucket with
those settings when it is missing; select entries (globs, ``!`` exclusions); then copy each
entry in its own task, ``parallel`` at a time. Per entry, batches read from the source are
filtered (labels, limit) and written in batched requests whose bodies are the source's
payloads streamed through, so no record is ever held whole in memory twice.

Re-running is safe: a record the destination already has answers 409 and is counted as
skipped. ``from_last`` starts each entry after the newest record the destination has.
A transient failure (connection lost, 5xx, 429) resumes the entry after the last record the
destination acknowledged, up to ``retries`` times; the records of the write that broke off
are sent again, and a 409 for one of them counts as copied (that write stored it). A record
the source cannot read (checksum) counts as failed, the write it was part of is redone
without it, and the copy goes on. Anything failed makes ``Copier.ok`` false.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from appliance.hotcopy.filters import CopyFilter
from appliance.hotcopy.model import CopyError, EntryStat, RecordHeader, Source, SourceBatch
from appliance.hotcopy.progress import CopyStats, Reporter
from appliance.hotcopy.remote import Remote
from appliance.engine.names import META_SEGMENT, is_meta_entry
from appliance.query.patterns import select_entries
from appliance.units import KIB

WRITE_MAX_RECORDS = 1000
WRITE_MAX_HEADER_BYTES = (
    64 * KIB
)  # servers cap a request head (ours: RS_IO_BATCH_MAX_METADATA_SIZE)
MAX_ERRORS_KEPT = 20
COALESCE_BYTES = 256 * KIB
RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How to copy: the filter plus concurrency, resumption and retries."""

    filter: CopyFilter = CopyFilter()
    parallel: int = 4
    from_last: bool = False
    retries: int = 3
    attachments: bool = True


@dataclass(slots=True)
class _EntryPlan:
    """One entry to copy: where to start and the timestamp window the progress measures."""

    stat: EntryStat
    start: int | None
    low: int
    high: int
    next_start: int | None = None
    covered: int = 0
    kept: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    sending: list[RecordHeader] = field(default_factory=list)  # the write in progress
    unconfirmed: set[int] = field(default_factory=set)  # sent by a write that broke off
    unreadable: set[int] = field(default_factory=set)  # failed at the source: not again
    attachments: bool = False  # ``<entry>/$meta``: copied whole, unfiltered, may not exist


def write_groups(records: Sequence[RecordHeader]) -> list[list[RecordHeader]]:
    """Split records into write requests that stay under the header limits."""
    groups: list[list[RecordHeader]] = []
    current: list[RecordHeader] = []
    header_bytes = 0
    for record in records:
        size = (
            40
            + len(record.content_type)
            + sum(len(k) + len(v) + 4 for k, v in record.labels.items())
        )
        if current and (
            len(current) >= WRITE_MAX_RECORDS or header_bytes + size > WRITE_MAX_HEADER_BYTES
        ):
            groups.append(current)
            current, header_bytes = [], 0
        current.append(record)
        header_bytes += size
    if current:
        groups.append(current)
    return groups


async def _body(batch: SourceBatch, group: list[RecordHeader]) -> AsyncIterator[bytes]:
    """The group's payloads; small ones coalesced, since every chunk costs one socket send."""
    pending = bytearray()
    for record in group:
        async for chunk in batch.payload(record):
            if len(chunk) >= COALESCE_BYTES:
                if pending:
                    yield bytes(pending)
                    pending.clear()
                yield chunk
                continue
            pending += chunk
            if len(pending) >= COALESCE_BYTES:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)


class Copier:
    """One ``cp`` run: a source bucket into a destination bucket."""

    def __init__(
        self, source: Source, destination: Remote, options: CopyOptions, reporter: Reporter
    ) -> None:
        self.source = source
        self.destination = destination
        self.options = options
        self.reporter = reporter
        self.stats = CopyStats()
        self.entry_errors = 0

    def _error(self, message: str) -> None:
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append(message)
        elif len(self.stats.errors) == MAX_ERRORS_KEPT:
            self.stats.errors.append("… more errors not shown")

    async def _destination_latest(self, settings: dict[str, object]) -> dict[str, int]:
        """Newest record per destination entry; creates the bucket when it is missing."""
        try:
            info = await self.destination.bucket_info()
        except CopyError as exc:
            if exc.status == 403 and not self.options.from_last:
                # A write-only token can't read the bucket; the writes will tell the rest.
                self.reporter.note(f"note: {exc.message}; assuming the bucket exists")
                return {}
            raise
        if info is None:
            await self.destination.create_bucket(settings)
            self.reporter.note(
                f"created {self.destination.description} with the source's settings: {settings}"
            )
            return {}
        return {
            e["name"]: e["latest_record"] for e in info.get("entries") or [] if e["record_count"]
        }

    def _plan(self, entries: list[EntryStat], latest: dict[str, int]) -> list[_EntryPlan]:
        flt = self.options.filter
        chosen = set(select_entries(list(flt.entries) or None, [e.name for e in entries]))
        plans = []
        for stat in entries:
            if stat.name not in chosen or is_meta_entry(stat.name):
                continue
            if self.options.attachments:
                meta = EntryStat(f"{stat.name}/{META_SEGMENT}", 0, 0, 0)
                plans.append(_EntryPlan(meta, None, 0, -1, attachments=True))
            if stat.record_count == 0:
                continue
            start = flt.start
            if self.options.from_last and stat.name in latest:
                start = max(start or 0, latest[stat.name] + 1)
            low = max(start or 0, stat.oldest_record)
            high = stat.latest_record if flt.stop is None else min(flt.stop - 1, stat.latest_record)
            if high < low:
                continue  # nothing in the window (e.g. the destination is up to date)
            plans.append(_EntryPlan(stat, start, low, high))
        return plans

    async def run(self) -> CopyStats:
        """Copy everything selected; CopyError only for what stops the whole copy."""
        settings = await self.source.bucket_settings()
        entries = await self.source.entries()
        latest = await self._destination_latest(settings)
        plans = self._plan(entries, latest)
        self.stats.entries = sum(1 for p in plans if not p.attachments)
        self.stats.span = sum(p.high - p.low + 1 for p in plans if not p.attachments)
        upper = sum(p.stat.record_count for p in plans)
        entries_count = sum(1 for p in plans if not p.attachments)
        self.reporter.note(
            f"copying {entries_count} entr(ies), at most {upper:,} record(s), from "
            f"{self.source.description} to {self.destination.description}"
        )
        self.reporter.start(self.stats)
        semaphore = asyncio.Semaphore(max(1, self.options.parallel))
        try:
            await asyncio.gather(*(self._copy_entry(plan, semaphore) for plan in plans))
        finally:
            self.reporter.stop()
        return self.stats

    async def _copy_entry(self, plan: _EntryPlan, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            plan.next_start = plan.start
            attempts = 0
            failed = False
            while True:
                try:
                    await self._copy_pass(plan)
                    break
                except CopyError as exc:
                    if plan.attachments and exc.status == 404 and not exc.transient:
                        return  # the entry has no attachments (a missing query is transient)
                    # Records of a write that broke off may be stored: the next pass re-sends
                    # them from the last acknowledged one, and a 409 then means "copied".
                    plan.unconfirmed.update(r.timestamp for r in plan.sending)
                    plan.sending = []
                    if exc.timestamp is not None:  # one record the source can't read
                        self.stats.failed += 1
                        plan.failed += 1
                        plan.unreadable.add(exc.timestamp)
                        self._error(exc.message)
                        continue
                    if exc.transient and attempts < self.options.retries:
                        delay = RETRY_BACKOFF_SECONDS[min(attempts, len(RETRY_BACKOFF_SECONDS) - 1)]
                        attempts += 1
                        self.reporter.note(
                            f"retrying entry {plan.stat.name!r} in {delay} s: {exc.message}"
                        )
                        await asyncio.sleep(delay)
                        continue
                    self._error(exc.message)
                    self.entry_errors += 1
                    failed = True
                    break
            self._advance(plan, plan.high)
            if plan.attachments and not (failed or plan.copied + plan.skipped + plan.failed):
                return
            verdict = "FAILED" if failed else "done"
            self.reporter.note(
                f"entry {plan.stat.name}: {verdict}: {plan.copied} copied, {plan.skipped} "
                f"skipped, {plan.failed} failed"
            )

    def _advance(self, plan: _EntryPlan, timestamp: int) -> None:
        if plan.attachments:
            self.reporter.update()
            return
        covered = min(timestamp, plan.high) - plan.low + 1
        if covered > plan.covered:
            self.stats.covered += covered - plan.covered
            plan.covered = covered
        self.reporter.update()

    async def _copy_pass(self, plan: _EntryPlan) -> None:
        """Copy from ``plan.next_start`` to the end; ``next_start`` follows the acknowledgements."""
        # Attachments are an entry's metadata, not time series: no filter applies to them.
        flt = CopyFilter() if plan.attachments else self.options.filter
        name = plan.stat.name
        reader = self.source.read(name, plan.next_start, flt.stop, flt.when)
        async with contextlib.aclosing(reader) as batches:  # type: ignore[type-var]
            async for batch in batches:
                keep = [
                    r
                    for r in batch.records
                    if flt.accepts(r.labels) and r.timestamp not in plan.unreadable
                ]
                if flt.limit is not None:
                    keep = keep[: flt.limit - plan.kept]
                for group in write_groups(keep):
                    plan.sending = group
                    errors = await self.destination.write(name, group, _body(batch, group))
                    plan.sending = []
                    self._account(plan, group, errors)
                    plan.kept += len(group)  # per group: a retry resumes after the last one
                    plan.next_start = group[-1].timestamp + 1
                    self._advance(plan, group[-1].timestamp)
                if batch.records:
                    plan.next_start = batch.records[-1].timestamp + 1
                    self._advance(plan, batch.records[-1].timestamp)
                if flt.limit is not None and plan.kept >= flt.limit:
                    return

    def _account(
        self, plan: _EntryPlan, group: list[RecordHeader], errors: dict[int, tuple[int, str]]
    ) -> None:
        for record in group:
            error = errors.get(record.timestamp)
            if error is not None and error[0] == 409 and record.timestamp in plan.unconfirmed:
                error = None  # stored by the write that broke off: copied, not skipped
            if error is None:
                plan.copied += 1
                self.stats.copied += 1
                self.stats.bytes += record.size
            elif error[0] == 409:
                plan.skipped += 1
                self.stats.skipped += 1
            else:
                plan.failed += 1
                self.stats.failed += 1
                self._error(
                    f"{self.destination.description}: record {record.timestamp} of entry "
                    f"{plan.stat.name!r}: {error[0]} {error[1]}"
                )

    @property
    def ok(self) -> bool:
        """True when no record and no entry failed."""
        return self.stats.failed == 0 and self.entry_errors == 0
