"""The query registry (spec §5): creation, ids, inactivity TTL, and REMOVE queries.

Queries (``handle.py``) are registered here under ids from one global counter; entry-level
(``/b/{b}/{e}/q``) and bucket-level (``/io/{b}/q``) ids are separate namespaces. ``create`` and
``remove`` run in an engine worker thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from appliance.engine.models import U64_MAX, RecordMeta
from appliance.engine.names import is_meta_entry
from appliance.errors import NotFound, UnprocessableEntity
from appliance.query.handle import Query, QuerySpec
from appliance.sizes import PREFETCH_BYTES

if TYPE_CHECKING:
    from appliance.engine import Storage


def _default_compile(when: dict[str, Any], strict: bool) -> Any:
    from appliance.query.condition import compile_when

    return compile_when(when, strict=strict)


def _default_select(patterns: Sequence[str] | None, names: Sequence[str]) -> list[str]:
    from appliance.query.patterns import select_entries

    return select_entries(list(patterns) if patterns else [], names)


class Held:
    """Bytes held of a ``PrefetchBudget``; given back when this object goes (refcounting
    frees it as soon as the batch it belongs to is sent, undone or dropped with its query)."""

    def __init__(self, budget: PrefetchBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def __del__(self) -> None:
        self._budget.give(self.size)


class PrefetchBudget:
    """Bounds the memory of batches collected ahead of their request, over all queries."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def hold(self, size: int) -> Held | None:
        """Hold ``size`` bytes, or None when that would pass the limit."""
        with self._lock:
            if self.used + size > self.limit:
                return None
            self.used += size
        return Held(self, size)

    def give(self, size: int) -> None:
        """Give back bytes held (``Held`` does it)."""
        with self._lock:
            self.used -= size


class QueryRegistry:
    """All live queries of the instance, keyed by id, expired by inactivity."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        compile_when: Callable[[dict[str, Any], bool], Any] = _default_compile,
        select_entries: Callable[[Sequence[str] | None, Sequence[str]], list[str]] = (
            _default_select
        ),
    ) -> None:
        self._clock = clock
        self._compile = compile_when
        self._select = select_entries
        self._ids = itertools.count(1)
        self._queries: dict[int, Query] = {}
        self._lock = threading.Lock()
        self.budget = PrefetchBudget(PREFETCH_BYTES)

    def __len__(self) -> int:
        return len(self._queries)

    def clear(self) -> None:
        """Drop every query (shutdown)."""
        with self._lock:
            self._queries.clear()

    def sweep(self) -> None:
        """Drop queries whose TTL has lapsed."""
        now = self._clock()
        with self._lock:
            for qid in [q.id for q in self._queries.values() if now - q.last_access >= q.spec.ttl]:
                del self._queries[qid]

    def get(self, qid: int, bucket: str, scope: str | None) -> Query:
        """The live query ``qid`` of this bucket/namespace; 404 if unknown or expired."""
        query = self._queries.get(qid)
        now = self._clock()
        if query is not None and now - query.last_access >= query.spec.ttl:
            with self._lock:
                self._queries.pop(qid, None)
            query = None
        if query is None or query.bucket != bucket or query.scope != scope:
            raise NotFound(
                f"Query {qid} not found and it might have expired. "
                "Check TTL in your query request."
            )
        query.last_access = now
        return query

    def select(self, storage: Storage, bucket: str, patterns: Sequence[str] | None) -> list[str]:
        """Entry names of ``bucket`` selected by ``patterns`` (spec §5.4)."""
        b = storage.get_bucket(bucket)
        names = list(entry_names(b))
        selected = self._select(patterns, names)
        # An exact name selects a `$meta` entry even if the listing hides it (spec §5.4).
        known = set(selected)
        for pattern in patterns or ():
            if is_meta_entry(pattern) and pattern not in known:
                try:
                    b.get_entry(pattern)
                except NotFound:
                    continue
                selected.append(pattern)
                known.add(pattern)
        return selected

    def create(self, storage: Storage, bucket: str, scope: str | None, spec: QuerySpec) -> int:
        """Register a query (blocking); 404 missing bucket/entry, 422 bad condition."""
        self.sweep()
        if spec.start is not None and spec.stop is not None and spec.start > spec.stop:
            if not spec.continuous:
                raise UnprocessableEntity("Start time must be before stop time")
        b = storage.get_bucket(bucket)
        if scope is not None:
            b.get_entry(scope)
            names = [scope]
        else:
            names = self.select(storage, bucket, spec.entries)
        conditions: dict[str, Any] = {}
        if spec.when is not None:
            for name in names:
                conditions[name] = self._compile(spec.when, spec.strict)
            if not names:
                self._compile(spec.when, spec.strict)  # still validate it
        stops: dict[str, int] = {}
        for name in names:
            if spec.stop is not None:
                stops[name] = spec.stop
            elif not spec.continuous:
                try:
                    stops[name] = b.get_entry(name).info().latest_record + 1
                except NotFound:
                    stops[name] = 0
        qid = next(self._ids)
        query = Query(qid, bucket, scope, spec, names, conditions, stops)
        query.last_access = self._clock()
        with self._lock:
            self._queries[qid] = query
        return qid

    def remove(self, storage: Storage, bucket: str, scope: str | None, spec: QuerySpec) -> int:
        """Remove the records a REMOVE query matches (blocking); returns how many."""
        if spec.is_empty_removal:
            raise UnprocessableEntity("Define at least one query parameter to delete records")
        if spec.start is not None and spec.stop is not None and spec.start > spec.stop:
            raise UnprocessableEntity("Start time must be before stop time")
        b = storage.get_bucket(bucket)
        if scope is not None:
            names = [scope]
            b.get_or_create_entry(scope)
        else:
            names = [n for n in self.select(storage, bucket, spec.entries) if not is_meta_entry(n)]
        start = spec.start if spec.start is not None else 0
        stop = spec.stop if spec.stop is not None else U64_MAX
        removed = 0
        for name in names:
            cond = self._compile(spec.when, spec.strict) if spec.when is not None else None
            try:
                entry = b.get_entry(name)
            except NotFound:
                continue
            removed += entry.remove_where(start, stop, _predicate(cond))
        return removed


def _predicate(cond: Any) -> Callable[[RecordMeta], bool]:
    if cond is None:
        return lambda meta: True
    return lambda meta: bool(cond.evaluate(meta.timestamp, meta.labels))


def entry_names(bucket: Any) -> list[str]:
    """Names of every entry of an engine bucket, ``$meta`` entries included."""
    return list(bucket.entry_names())
