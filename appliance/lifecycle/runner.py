"""One run of a lifecycle policy against the engine (blocking: call it from a worker thread).

A run looks, per selected entry, at the records of one window of record time: from where the
previous run stopped (or the entry's oldest record) up to ``processing_interval`` later, never
past ``now - older_than``. Records in the window that match ``when`` (all of them without one)
are removed one block at a time (at most ``REMOVE_CHUNK`` timestamps per entry-lock hold): a
writer of the same entry waits for one block's removal at most, never for the whole run, and
each block's files are rewritten once (chunks that split a block rewrite it once per chunk,
which made runs ~8× slower in ``tests/bench/bench_lifecycle.py``). In ``dry_run`` mode the
matching records are only counted.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, NotFound
from appliance.query.patterns import select_entries

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.lifecycle.policy import LifecyclePolicy

__all__ = ["REMOVE_CHUNK", "RunReport", "run_policy"]

# Upper bound of records removed per entry-lock hold (a block of the default 1024-record size
# takes ~15 ms on a small VM: tests/bench/bench_lifecycle.py).
REMOVE_CHUNK = 4096


@dataclass
class RunReport:
    """What one run did: records removed (or that would be, dry run), entries, errors."""

    removed: int = 0
    matched: int = 0
    entries: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: float = 0.0
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The diagnostics object of the last run."""
        return {
            "removed_records": self.removed,
            "matched_records": self.matched,
            "entries": self.entries,
            "errors": list(self.errors),
            "duration_seconds": round(self.duration, 3),
        }


def _chunks(items: list[int], block_ids: list[int], size: int) -> Iterable[list[int]]:
    """``items`` (ascending) cut at block boundaries and at ``size``."""
    chunk: list[int] = []
    block = -1
    for ts in items:
        owner = block_ids[max(bisect_right(block_ids, ts) - 1, 0)] if block_ids else 0
        if chunk and (owner != block or len(chunk) >= size):
            yield chunk
            chunk = []
        block = owner
        chunk.append(ts)
    if chunk:
        yield chunk


def run_policy(
    storage: Storage,
    policy: LifecyclePolicy,
    cursors: MutableMapping[str, int],
    now_us: int,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunReport:
    """Run ``policy`` once; ``cursors`` (entry → first ts of the next window) is updated."""
    from appliance.query.condition import compile_when

    report = RunReport(started_at=time.time())
    began = time.perf_counter()
    dry_run = policy.mode == "dry_run"
    cutoff = now_us - policy.older_than_us
    try:
        bucket = storage.get_bucket(policy.bucket)
    except NotFound as exc:
        report.errors.append(exc.message)
        report.duration = time.perf_counter() - began
        return report
    names = select_entries(list(policy.entries), bucket.entry_names())
    for name in names:
        if should_stop():
            break
        try:
            entry = bucket.get_entry(name)
            oldest = entry.info().oldest_record
        except NotFound:
            continue  # removed meanwhile
        start = max(cursors.get(name, 0), oldest)
        stop = min(start + policy.processing_us, cutoff)
        if stop <= start:
            continue
        report.entries += 1
        cond = compile_when(dict(policy.when)) if policy.when is not None else None
        doomed = [
            r.timestamp
            for r in entry.iter_records(start, stop)
            if cond is None or cond.evaluate(r.timestamp, r.labels)
        ]
        report.matched += len(doomed)
        if not dry_run:
            try:
                for chunk in _chunks(doomed, entry.block_ids(), REMOVE_CHUNK):
                    failed = entry.remove_unchecked(chunk)
                    report.removed += len(chunk) - len(failed)
                    # Python locks are not fair: a short sleep lets a waiting writer in between
                    # two blocks (the run takes ~0.1 s longer per 100 blocks).
                    time.sleep(0.001)
            except ApplianceError as exc:
                report.errors.append(f"{policy.bucket}/{name}: {exc.message}")
                continue
            cursors[name] = stop
    report.duration = time.perf_counter() - began
    return report
