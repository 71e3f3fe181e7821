"""A query handle (spec §5): its spec, read positions, and collecting one read batch.

A ``Query`` remembers, per selected entry, the next timestamp to read. Each read re-opens the
entries' record iterators at those positions and merges them by (timestamp, entry name), so a
continuous query sees records written since the last read and nothing is held open between
requests. ``collect_batch`` runs in an engine worker thread: one thread hop collects a whole
batch (metadata and small payloads).

Records may be removed while a query reads them (by another client, a REMOVE query or the FIFO
quota). A record that is gone by the time its payload is read is skipped, never an error: the
batch goes out without it, and if nothing of the batch is left the next records are collected
instead (a 204 would end the client's query early). Payloads too big to preload are opened in
the collecting hop (``ReadBatch.streams``), so a removal after the headers are decided cannot
cut a response short: the open descriptor keeps the record's bytes readable.

A batch's headers stay within ``max_metadata`` (``RS_IO_BATCH_MAX_METADATA_SIZE``): each
record's header size is bounded from above before it joins the batch, and a record that would
cross the limit waits for the next batch (only a batch's first record may exceed it alone).
"""

from __future__ import annotations

import copy
import heapq
import logging
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING, Any, overload

from appliance.engine.block import Run
from appliance.engine.models import U64_MAX, RecordMeta
from appliance.engine.names import is_meta_entry
from appliance.errors import NotFound
from appliance.query.context import RecordShaper, shaper_for
from appliance.sizes import PRELOAD_BATCH_BYTES, PRELOAD_RECORD_BYTES

if TYPE_CHECKING:
    from appliance.engine import Entry, Storage

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 60.0
# How long a batch collected ahead may spend getting the next block ready after it
# (``warm``): a share of the time a client takes to parse a batch, so the next batch
# is still collected without waiting for the GIL behind it.
WARM_SECONDS = 0.0003


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """A parsed query request (JSON body or legacy query-string parameters)."""

    start: int | None = None
    stop: int | None = None
    ttl: float = DEFAULT_TTL_SECONDS
    continuous: bool = False
    only_metadata: bool = False
    when: dict[str, Any] | None = None
    strict: bool = False
    entries: tuple[str, ...] | None = None

    @property
    def is_empty_removal(self) -> bool:
        """True when a REMOVE names no criterion at all (refused with 422)."""
        return self.start is None and self.stop is None and self.when is None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """When to cut a batch (``RS_IO_BATCH_*``, or a query's ``#batch_*`` directives)."""

    max_records: int = 85
    max_size: int = 8_000_000
    max_metadata: int = 512_000
    timeout: float = 5.0


@dataclass(slots=True)
class ReadBatch:
    """One batch: records in emission order, their payloads (None = stream it), last flag.

    ``streams`` holds, by record index, the payload iterators of records that were too big to
    preload, already opened (first chunk read) so the record cannot vanish before it is sent.
    """

    records: list[tuple[str, RecordMeta]] = field(default_factory=list)
    payloads: list[bytes | None] = field(default_factory=list)
    last: bool = False
    streams: dict[int, Iterator[bytes]] = field(default_factory=dict)
    more: bool = False  # cut by a limit: the query has records left right now
    body: bytes | None = None  # every payload, back to back, when read as one span
    encoded: Any = None  # the response's parts, built in the collecting hop (``prepare``)
    # When read as spans of blocks' ``Columns``: (columns, lo, hi) of each block in turn, the
    # records being ``columns.records[lo:hi]`` of each (the response encoder's per-block
    # derivations are kept in the columns).
    columns: list[tuple[Any, int, int]] | None = None
    # When collected as runs of blocks' columns (``_collect_plain``): the same, to be read.
    run: list[tuple[Any, int, int]] | None = None
    plain: bool = False  # collected from one entry read whole (``_collect_plain``)

    def close(self) -> None:
        """Close the payload streams opened while collecting (a batch that is not sent)."""
        for stream in self.streams.values():
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        self.streams.clear()


@dataclass(slots=True)
class Ahead:
    """A batch collected before its request came (``Query.collect_ahead``), with what undoes
    it: the query's state before it, and each read entry's change count at that time."""

    batch: ReadBatch
    head: bool
    state: tuple[Any, ...]
    changes: list[tuple[Any, int]]
    held: Any = None  # the share of the prefetch budget it holds (released with it)
    # (entry, read position) of each entry the query reads on from, taken with the batch:
    # the blocks to get ready next (``warm``, once the batch is handed over).
    warm_from: list[tuple[Any, int]] = field(default_factory=list)

    def unchanged(self) -> bool:
        """True if no entry it read lost or relabelled a record since (lock-free reads of
        two attributes per entry, so the event loop may ask)."""
        return all(not e.removed and e.changes == n for e, n in self.changes)


def warm(
    targets: list[tuple[Any, int]], runs: bool, prepare: Callable[[Any], object] | None = None
) -> None:
    """Get ready, for ``WARM_SECONDS`` (at least one step an entry), the next block each
    entry of ``targets`` (``Ahead.warm_from``) will be read from (``Entry.warm_next_block``:
    its descriptor decoded; for a query that reads in ``runs``, then its columns built and
    handed to ``prepare``). A decode of a whole block (~1.5 ms for 1,024 records here) and
    its columns (~0.5 ms) would otherwise fall on the batch that reaches it, and the client
    would wait for it. Run after the batch was handed over, outside the query's lock: it
    reads no query state, only what ``warm_from`` took."""
    deadline = time.perf_counter() + WARM_SECONDS
    for entry, ts in targets:
        try:
            entry.warm_next_block(ts, deadline, runs=runs, prepare=prepare)
        except Exception:  # noqa: BLE001 - only a head start: the batch is what counts
            log.debug("no decode ahead for %s", entry.name, exc_info=True)


def block_header_costs(columns: Any) -> list[int]:
    """``_header_costs`` of a block's ``Columns``, worked out once (kept in their memo)."""
    costs = columns.memo.get("header_costs")
    if costs is None:
        costs = columns.memo["header_costs"] = _header_costs(columns.records)
    return costs


def _header_costs(records: list[Any]) -> list[int]:
    """Running sums of ``header_cost(record, "")`` (the part that does not depend on the
    entry's name), from 0: computed once per (labels, content type) pair of objects."""
    known: dict[int, tuple[Any, Any, int]] = {}  # by labels id: labels, content type, cost
    costs: list[int] = []
    append = costs.append
    last_labels: Any = None
    last_type: Any = None
    cost = 0
    for record in records:
        labels = record.labels
        content_type = record.content_type
        if labels is not last_labels or content_type is not last_type:
            found = known.get(id(labels))
            if found is not None and found[1] is content_type:
                cost = found[2]
            else:
                cost = header_cost(record, "")
                known[id(labels)] = (labels, content_type, cost)
            last_labels, last_type = labels, content_type
        append(cost)
    return list(accumulate(costs, initial=0))


def header_cost(rec: RecordMeta, name: str) -> int:
    """An upper bound of the header bytes ``rec`` adds to a batched-read response (v1 or v2:
    header name, size, content type, labels quoted and percent-encoded at worst)."""
    cost = 64 + len(rec.content_type) + 3 * len(name)
    for key, value in rec.labels.items():
        cost += 3 * len(key) + len(value) + 8
    return cost


class _Cursor:
    """An entry's records from a read position: one at a time (the merge of several entries)
    or the rest of a run at a time (one entry read whole); its end, or the entry's removal,
    reads as None."""

    __slots__ = ("_runs", "_run", "_at")

    def __init__(self, runs: Iterator[list[RecordMeta]]) -> None:
        self._runs = runs
        self._run: list[RecordMeta] = []
        self._at = 0

    def _fetch(self) -> list[RecordMeta] | None:
        try:
            return next(self._runs, None)
        except NotFound:
            return None

    def next(self) -> RecordMeta | None:
        """The next record, or None."""
        at = self._at
        if at < len(self._run):
            self._at = at + 1
            return self._run[at]
        run = self._fetch()
        if run is None:
            return None
        self._run, self._at = run, 1
        return run[0]

    def unread(self) -> None:
        """Step back over the record ``next`` just gave: ``rest`` gives it again."""
        self._at -= 1

    def rest(self) -> list[RecordMeta] | None:
        """The records left in the current run, else the next run; None at the end. The rest
        of a ``Run`` is still one (of the same columns)."""
        run, at = self._run, self._at
        if at < len(run):
            self._at = len(run)
            if not at:
                return run
            return run.tail(at) if type(run) is Run else run[at:]
        fetched = self._fetch()
        if fetched is None:
            return None
        self._run, self._at = fetched, len(fetched)
        return fetched


class Query:
    """One registered query: selected entries, read positions and per-entry conditions."""

    def __init__(
        self,
        qid: int,
        bucket: str,
        scope: str | None,
        spec: QuerySpec,
        entries: list[str],
        conditions: dict[str, Any],
        stops: dict[str, int],
    ) -> None:
        self.id = qid
        self.bucket = bucket
        self.scope = scope
        self.spec = spec
        self.entries = entries
        self.conditions = conditions
        self.stops = stops
        start = spec.start if spec.start is not None else 0
        self.positions = {name: start for name in entries}
        self.done: set[str] = set()
        self.pending: tuple[str, RecordMeta] | None = None
        self.backlog: deque[tuple[str, RecordMeta]] = deque()
        self.finished = False
        self.last_access = 0.0
        self.lock = threading.RLock()  # collect_ahead holds it around collect_batch
        self.ahead: Any = None  # the future of a batch collected ahead (event loop only)
        first = next(iter(conditions.values()), None)
        self.directives: Any = getattr(first, "directives", None)
        # #ctx_before/#ctx_after/#select_labels: one shaper per entry (their windows are
        # per entry), None when the query has none of them.
        self.shapers: dict[str, RecordShaper] = {}
        for name, cond in conditions.items():
            shaper = shaper_for(getattr(cond, "directives", None))
            if shaper is not None:
                self.shapers[name] = shaper

    def _passes(self, name: str, meta: RecordMeta) -> bool:
        if meta.labels.get("remove") == "true" and is_meta_entry(name):
            return False  # attachment tombstone (spec §11)
        cond = self.conditions.get(name)
        if cond is None:
            return True
        ok = bool(cond.evaluate(meta.timestamp, meta.labels))
        if cond.exhausted:
            self.done.add(name)
        return ok

    def collect_batch(
        self, storage: Storage, limits: BatchLimits, head: bool, cut_interleaved: bool,
        undo: Ahead | None = None,
    ) -> ReadBatch:
        """Collect the next batch (blocking: call from a worker thread, ``Workers.run``).

        A batch whose every record was removed before its payload was read is collected
        again from where it ended; each round consumes records, so this ends. ``undo``: a
        batch collected ahead that will not be sent; the query first returns to its state
        from before that batch, so this collects exactly what it would have without it.
        """
        with self.lock:
            if undo is not None:
                undo.batch.close()
                self._restore(undo.state)
            while True:
                batch, dropped = self._collect(storage, limits, head, cut_interleaved)
                if batch.records or batch.last or not dropped:
                    return batch

    def collect_ahead(
        self, storage: Storage, limits: BatchLimits, head: bool, cut_interleaved: bool
    ) -> Ahead | None:
        """Collect the next batch before it is asked for (worker thread), keeping what undoes
        it; None if the query's conditions cannot be copied (then nothing was collected).

        Served only if no entry the query reads lost or relabelled a record meanwhile
        (``Ahead.unchanged``), else undone (``collect_batch(undo=...)``): either way the
        client sees what a batch collected at its request would hold. A record written
        meanwhile is outside the batch, as if written just after that request.
        """
        with self.lock:
            try:
                state = self._snapshot()
                changes: list[tuple[Any, int]] = []
                bucket = storage.get_bucket(self.bucket)
                for name in self.entries:
                    try:
                        entry = bucket.get_entry(name)
                    except NotFound:
                        continue
                    changes.append((entry, entry.changes))
            except Exception:  # noqa: BLE001 - nothing collected: the request collects itself
                return None  # (a condition deepcopy cannot copy, a bucket gone, ...)
            try:
                batch = self.collect_batch(storage, limits, head, cut_interleaved)
            except Exception:  # noqa: BLE001 - undone: the request's own collect reports it
                self._restore(state)
                return None
            ahead = Ahead(batch, head, state, changes)
            if batch.more:
                positions = self.positions
                ahead.warm_from = [
                    (entry, positions[entry.name])
                    for entry, _ in changes
                    if entry.name not in self.done and entry.name in positions
                ]
            return ahead

    def _snapshot(self) -> tuple[Any, ...]:
        """Everything ``_collect`` changes, copied (conditions and shapers keep counters)."""
        stateful = (self.conditions, self.shapers) if self.conditions or self.shapers else None
        return (
            dict(self.positions), set(self.done), self.pending, deque(self.backlog),
            self.finished, copy.deepcopy(stateful) if stateful is not None else None,
        )

    def _restore(self, state: tuple[Any, ...]) -> None:
        positions, done, pending, backlog, finished, stateful = state
        self.positions, self.done, self.pending = positions, done, pending
        self.backlog, self.finished = backlog, finished
        if stateful is not None:
            self.conditions, self.shapers = stateful

    def _collect(
        self, storage: Storage, limits: BatchLimits, head: bool, cut_interleaved: bool
    ) -> tuple[ReadBatch, bool]:
        batch = ReadBatch()
        if self.finished:
            batch.last = True
            return batch, False
        bucket = storage.get_bucket(self.bucket)
        heap: list[tuple[int, str, RecordMeta]] = []
        iters: dict[str, tuple[Entry, _Cursor]] = {}
        # One run is a batch's worth (and one to tell whether the query is exhausted).
        run_size = limits.max_records + 1
        for name in self.entries:
            if name in self.done:
                continue
            try:
                entry = bucket.get_entry(name)
            except NotFound:
                continue
            it = _Cursor(
                entry.iter_runs(self.positions[name], self.stops.get(name, U64_MAX), run_size)
            )
            first = it.next()
            if first is not None:
                heap.append((first.timestamp, name, first))
                iters[name] = (entry, it)
        pending, self.pending = self.pending, None
        plain = (
            len(heap) == 1
            and not self.backlog
            and (pending is None or pending[0] == heap[0][1])
            and self.conditions.get(heap[0][1]) is None
            and heap[0][1] not in self.shapers
            and not is_meta_entry(heap[0][1])
        )
        batch.plain = plain
        if plain:
            # One entry read whole; a record left pending by the metadata limit goes first.
            _, name, first = heap[0]
            cursor = iters[name][1]
            cursor.unread()  # ``first`` comes again, in its run
            run = cursor.rest() if pending is None else [pending[1]]
            exhausted = self._collect_plain(name, run, cursor, limits, head, batch)
        elif len(heap) == 1 and pending is None and not self.backlog:
            _, name, first = heap[0]
            exhausted = self._collect_single(name, first, iters[name][1], limits, head, batch)
        else:
            heapq.heapify(heap)
            exhausted = self._collect_merged(heap, iters, pending, limits, head, cut_interleaved,
                                             batch)
        batch.more = not exhausted
        if exhausted:
            # As ReductStore 1.21: an entry-level (v1) read flags the batch that ran the query
            # dry as last, continuous or not (its reader sees "no content" after the records);
            # a bucket-level (v2, ``cut_interleaved``) continuous query never says last — its
            # aggregator keeps polling, and reduct-js ends a subscription on a last record.
            batch.last = not (self.spec.continuous and cut_interleaved)
            self.finished = not self.spec.continuous
        dropped = False
        if not head and not self.spec.only_metadata:
            dropped = _load(bucket, batch, iters)
        return batch, dropped

    def _collect_plain(
        self, name: str, run: list[RecordMeta] | None, cursor: _Cursor, limits: BatchLimits,
        head: bool, batch: ReadBatch,
    ) -> bool:
        """``_collect_single`` for an entry read whole (no condition, no context directive,
        nothing hidden), from ``run`` then ``cursor``, a run at a time. A ``Run`` of a block's
        columns is taken in bulk (``_take_run``); the records of any other run one by one,
        a header's cost computed once per labels object (records decoded together share
        equal ones). A batch made of ``Run``s only (of one block, or running on into the
        next ones) gets them as ``batch.run``. True if exhausted."""
        out = batch.records
        append = out.append
        body = metadata = 0
        max_records, max_size, max_meta = limits.max_records, limits.max_size, limits.max_metadata
        deadline = time.monotonic() + limits.timeout
        # Header costs by labels object: (its content type, the labels, the cost); holding
        # the labels keeps their id from being reused while this runs.
        costs: dict[int, tuple[str, Any, int]] = {}
        last_labels: Any = None
        last_type: Any = None
        cost = 0
        position: int | None = None
        # [columns, lo, hi] of each block while the batch is made of runs only.
        spans: list[list[Any]] | None = []
        try:
            while run is not None:
                if type(run) is Run and run.columns.entry == name:
                    n = len(out)
                    if n >= max_records or (not head and body > max_size):
                        return False
                    if n and time.monotonic() > deadline:
                        return False
                    taken, body, metadata, whole = self._take_run(
                        name, run, n, body, metadata, limits, head
                    )
                    cols, lo = run.columns, run.at
                    out.extend(zip([name] * taken, run))
                    if spans is not None and taken:
                        if spans and spans[-1][0] is cols and spans[-1][2] == lo:
                            spans[-1][2] += taken
                        else:
                            spans.append([cols, lo, lo + taken])
                    if self.pending is not None:  # the metadata limit left one out
                        position = self.pending[1].timestamp + 1
                        return False
                    position = cols.ts[lo + taken - 1] + 1
                    if not whole:
                        return False  # cut by the record or body limit
                    run = cursor.rest()
                    continue
                spans = None
                for rec in run:
                    n = len(out)
                    if n >= max_records or (not head and body > max_size):
                        return False
                    if n and not n % 16 and time.monotonic() > deadline:
                        return False
                    labels = rec.labels
                    if labels is not last_labels or rec.content_type is not last_type:
                        last_labels, last_type = labels, rec.content_type
                        known = costs.get(id(labels))
                        if known is not None and known[0] is last_type:
                            cost = known[2]
                        else:
                            cost = header_cost(rec, name)
                            costs[id(labels)] = (last_type, labels, cost)
                    if rec.entry != name:
                        rec = replace(rec, entry=name)
                    position = rec.timestamp + 1
                    if n and metadata + cost > max_meta:
                        self.pending = (name, rec)  # first of the next batch
                        return False
                    append((name, rec))
                    body += rec.size
                    metadata += cost
                run = cursor.rest()
            return True
        finally:
            if position is not None:
                self.positions[name] = position
            if spans:
                batch.run = [(cols, lo, hi) for cols, lo, hi in spans]

    def _take_run(
        self, name: str, run: Run, n: int, body: int, metadata: int, limits: BatchLimits,
        head: bool,
    ) -> tuple[int, int, int, bool]:
        """How many records of ``run`` go into a batch holding ``n`` records, ``body`` bytes
        and ``metadata`` header bytes, by the limits ``_collect_plain`` applies one record at
        a time, found by bisecting the columns' running sums: (count, body, metadata, whether
        the whole run went in). A record the metadata limit leaves out becomes the query's
        pending one. The caller has checked that the first record is within the record and
        body limits."""
        cols, lo = run.columns, run.at
        room = limits.max_records - n
        k = len(run) if len(run) <= room else room
        acc = cols.sizes_acc
        limit = k
        if not head:
            # Record i goes in while the body before it is within the limit (so the one
            # crossing it is included).
            limit = bisect_right(acc, limits.max_size - body + acc[lo], lo, lo + k) - lo
        costs = block_header_costs(cols)
        per_name = 3 * len(name)
        base = metadata - costs[lo] - lo * per_name

        def after(j: int) -> int:  # the header bytes with records lo .. j-1
            return base + costs[j] + j * per_name

        fits = bisect_right(range(lo + 1, lo + limit + 1), limits.max_metadata, key=after)
        taken = 1 if fits == 0 and n == 0 else fits  # a batch's first record always goes
        if taken < limit:
            self.pending = (name, cols.records[lo + taken])  # first of the next batch
        end = lo + taken
        return taken, body + acc[end] - acc[lo], after(end), taken == len(run)

    def _collect_single(
        self, name: str, first: RecordMeta, it: _Cursor, limits: BatchLimits,
        head: bool, batch: ReadBatch,
    ) -> bool:
        """The one-entry case without a merge heap (the common, hot one). True if exhausted."""
        out = batch.records
        body = metadata = 0
        max_records, max_size, max_meta = limits.max_records, limits.max_size, limits.max_metadata
        cond = self.conditions.get(name)
        shaper = self.shapers.get(name)
        hide = is_meta_entry(name)
        done = self.done
        deadline = time.monotonic() + limits.timeout
        rec: RecordMeta | None = first
        while rec is not None:
            if len(out) >= max_records or (not head and body > max_size):
                return False
            if out and not len(out) % 16 and time.monotonic() > deadline:
                return False
            self.positions[name] = rec.timestamp + 1
            labels = rec.labels
            ok = not (hide and labels.get("remove") == "true")
            if ok and cond is not None:
                ok = bool(cond.evaluate(rec.timestamp, labels))
                if cond.exhausted:
                    done.add(name)
            if shaper is not None:
                emit = shaper.feed(rec, ok)
            else:
                emit = [rec] if ok else []
            for i, item in enumerate(emit):
                if item.entry != name:
                    item = replace(item, entry=name)
                cost = header_cost(item, name)
                if out and metadata + cost > max_meta:
                    self.pending = (name, item)  # first of the next batch, not re-evaluated
                    self.backlog.extend((name, m) for m in emit[i + 1 :])  # its context
                    return False
                out.append((name, item))
                body += item.size
                metadata += cost
            if name in done:
                return True
            rec = it.next()
        return True

    def _collect_merged(
        self,
        heap: list[tuple[int, str, RecordMeta]],
        iters: dict[str, tuple[Entry, _Cursor]],
        pending: tuple[str, RecordMeta] | None,
        limits: BatchLimits,
        head: bool,
        cut_interleaved: bool,
        batch: ReadBatch,
    ) -> bool:
        """Several entries merged by (timestamp, name). True if exhausted."""
        out = batch.records
        body = metadata = 0
        run_entry: str | None = None
        seen: set[str] = set()
        deadline = time.monotonic() + limits.timeout
        while True:
            if len(out) >= limits.max_records:
                break
            if not head and body > limits.max_size:
                break
            if out and time.monotonic() > deadline:
                break
            if pending is not None:
                name, meta = pending
                pending = None
            elif self.backlog:  # context records a shaper emitted together with a match
                name, meta = self.backlog.popleft()
            else:
                if not heap:
                    break
                ts, name, meta = heapq.heappop(heap)
                self.positions[name] = ts + 1
                if name in self.done:
                    continue
                nxt = iters[name][1].next()
                if nxt is not None:
                    heapq.heappush(heap, (nxt.timestamp, name, nxt))
                shaper = self.shapers.get(name)
                if shaper is not None:
                    emitted = shaper.feed(meta, self._passes(name, meta))
                    if not emitted:
                        continue
                    meta = emitted[0]
                    self.backlog.extend((name, m) for m in emitted[1:])
                elif not self._passes(name, meta):
                    continue
            if cut_interleaved and name != run_entry and name in seen:
                # Spec §8.3: never let an entry re-appear after another one started in this
                # batch, so (ts, entry_index) and (entry_index, ts) body orders coincide.
                self.pending = (name, meta)
                break
            if meta.entry != name:
                meta = replace(meta, entry=name)
            cost = header_cost(meta, name)
            if out and metadata + cost > limits.max_metadata:
                self.pending = (name, meta)
                break
            out.append((name, meta))
            seen.add(name)
            run_entry = name
            body += meta.size
            metadata += cost
        if self.pending is not None or self.backlog:
            return False
        return not any(n not in self.done for _, n, _ in heap)


def _load(bucket: Any, batch: ReadBatch, iters: Mapping[str, tuple[Any, Any]]) -> bool:
    """Fill ``batch.payloads`` (preloaded small ones) and ``batch.streams`` (opened big ones);
    drop the records removed meanwhile. True if any record was dropped."""
    records = batch.records
    if _load_span(bucket, batch, iters):
        return False
    payloads: list[bytes | None] = [None] * len(records)
    gone: set[int] = set()
    _preload(bucket, records, iters, payloads, gone)
    for i, (name, meta) in enumerate(records):
        if payloads[i] is None and i not in gone:
            stream = _open_stream(bucket, iters, name, meta)
            if stream is None:
                gone.add(i)
            else:
                batch.streams[i] = stream
    if gone:
        keep = [i for i in range(len(records)) if i not in gone]
        batch.records = [records[i] for i in keep]
        batch.streams = {n: batch.streams[i] for n, i in enumerate(keep) if i in batch.streams}
        payloads = [payloads[i] for i in keep]
    batch.payloads = payloads
    return bool(gone)


def _load_span(bucket: Any, batch: ReadBatch, iters: Mapping[str, tuple[Any, Any]]) -> bool:
    """Read a batch of one entry whose records lie back to back on disk with one ``pread``
    (``Entry.read_run``): ``batch.body`` is then the response body as read, and the payloads
    are views of it. False (nothing done) when the batch is not such a span.

    Large records: ``read_payloads`` reads those (above ``JOIN_RECORD_BYTES``) one ``pread``
    each and the response joined them into a new body, a second copy of every byte into fresh
    memory (100 KiB records: -15 % server CPU). Small ones it reads in runs, but slices each
    payload out to check it and the response joins them again; the span skips both (1 KiB
    records with cycling labels, collected and encoded in-process: 4.91 -> 4.67-4.70 µs a
    record).
    """
    records = batch.records
    if len(records) < 2:
        return False
    name = records[0][0]
    if batch.run is not None and _load_run(bucket, batch, iters, name):
        return True
    total = 0
    metas = []
    sizes = []
    for entry_name, meta in records:
        size = meta.size
        if entry_name != name or size > PRELOAD_RECORD_BYTES:
            return False
        total += size
        metas.append(meta)
        sizes.append(size)
    if total > PRELOAD_BATCH_BYTES:
        return False
    try:
        run = _entry(bucket, iters, name).read_run(metas)
    except NotFound:
        return False
    if run is None:
        return False
    body, columns, at = run
    batch.payloads = SpanPayloads(body, sizes)  # type: ignore[assignment]
    batch.body = body
    if columns is not None:
        batch.columns = [(columns, at, at + len(metas))]
    return True


def _load_run(
    bucket: Any, batch: ReadBatch, iters: Mapping[str, tuple[Any, Any]], name: str
) -> bool:
    """``_load_span`` of a batch collected as runs of blocks' columns (``batch.run``): its
    sizes and where it lies come from the columns, nothing per record; one ``pread`` a
    block, the bodies joined when the batch runs on into a second block. False if the
    columns are no longer their blocks' (or a run is not one span): the caller then plans
    the records one by one."""
    spans = batch.run
    assert spans is not None
    sizes = [size for cols, lo, hi in spans for size in cols.sizes[lo:hi]]
    if max(sizes) > PRELOAD_RECORD_BYTES or sum(sizes) > PRELOAD_BATCH_BYTES:
        return False
    bodies = []
    try:
        entry = _entry(bucket, iters, name)
        for columns, lo, hi in spans:
            body = entry.read_columns(columns, lo, hi)
            if body is None:
                return False
            bodies.append(body)
    except NotFound:
        return False
    body = bodies[0] if len(bodies) == 1 else b"".join(bodies)
    batch.payloads = SpanPayloads(body, sizes)  # type: ignore[assignment]
    batch.body = body
    batch.columns = spans
    return True


class SpanPayloads(Sequence[memoryview]):
    """The payloads of a batch read as one span, as views of it made when asked for: the
    span itself is the response body, so they are rarely looked at (making all 85 views of
    a 1 KiB batch up front cost ~0.2 µs a record)."""

    __slots__ = ("_body", "_sizes", "_starts")

    def __init__(self, body: bytes, sizes: list[int]) -> None:
        self._body = body
        self._sizes = sizes
        self._starts: list[int] | None = None

    def __len__(self) -> int:
        return len(self._sizes)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...

    @overload
    def __getitem__(self, index: slice) -> list[memoryview]: ...

    def __getitem__(self, index: int | slice) -> memoryview | list[memoryview]:
        """The view of one payload (or a list of them for a slice)."""
        count = len(self._sizes)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(count))]
        i = range(count)[index]  # negative indexes, and IndexError past the end
        starts = self._starts
        if starts is None:
            starts = self._starts = list(accumulate(self._sizes, initial=0))
        return memoryview(self._body)[starts[i] : starts[i + 1]]


def _entry(bucket: Any, iters: Mapping[str, tuple[Any, Any]], name: str) -> Any:
    pair = iters.get(name)
    return pair[0] if pair is not None else bucket.get_entry(name)


def _open_stream(
    bucket: Any, iters: Mapping[str, tuple[Any, Any]], name: str, meta: RecordMeta
) -> Iterator[bytes] | None:
    """The record's payload iterator with its first chunk already read (its file is open from
    here on), or None if the record or its entry is gone."""
    try:
        it = iter(_entry(bucket, iters, name).iter_payload(meta))
        first = next(it, None)
    except NotFound:
        return None
    return _resumed(first, it)


def _resumed(first: bytes | None, it: Iterator[bytes]) -> Iterator[bytes]:
    """``first`` then the rest of ``it``; closing this closes ``it`` (and its descriptor)."""
    try:
        if first is not None:
            yield first
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _preload(
    bucket: Any, records: list[tuple[str, RecordMeta]], iters: Mapping[str, tuple[Any, Any]],
    payloads: list[bytes | None], gone: set[int],
) -> None:
    """Payloads of the records small enough to travel in this hop (None: stream it later);
    indexes of records removed since they were listed go to ``gone``.

    One ``Entry.read_payloads`` per entry: the entry lock is taken once and records lying
    back to back in a block file are read with a single pread. If some record of the entry is
    gone, its records are read one by one to tell which.
    """
    loaded = 0
    wanted: dict[str, list[int]] = {}
    for i, (name, meta) in enumerate(records):
        size = meta.size
        if size <= PRELOAD_RECORD_BYTES and loaded + size <= PRELOAD_BATCH_BYTES:
            wanted.setdefault(name, []).append(i)
            loaded += size
    for name, indexes in wanted.items():
        try:
            entry = _entry(bucket, iters, name)
        except NotFound:  # the whole entry was removed
            gone.update(indexes)
            continue
        try:
            data: list[bytes | None] = list(
                entry.read_payloads([records[i][1] for i in indexes])
            )
        except NotFound:
            data = []
            for i in indexes:
                try:
                    data.append(entry.read_payload(records[i][1]))
                except NotFound:
                    data.append(None)
                    gone.add(i)
        for i, payload in zip(indexes, data, strict=True):
            payloads[i] = payload
