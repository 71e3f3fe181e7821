"""Applying the output directives of a query: ``#ctx_before``, ``#ctx_after``, ``#select_labels``.

A ``RecordShaper`` sits between a query's condition and its output, one per selected entry
(the context of one entry never mixes with another's). It is fed every candidate record in
timestamp order with the condition's verdict and answers the records to emit:

* ``#ctx_before: N`` emits up to N records that did not match just before a match;
  ``#ctx_before: "5s"`` those less than 5 s older than the match (ReductStore's windows);
* ``#ctx_after: N`` emits the N records after a match, ``"5s"`` those up to 5 s after it;
* ``#select_labels: [..]`` keeps only the listed labels in every emitted record.

A record is emitted at most once (a match inside another's window is still just one record),
and context records are emitted in timestamp order before the match that pulled them in. The
"before" buffer is bounded by N, or by the duration (records older than the window are dropped
as they age out), so a query never holds more than its window in memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.engine.models import RecordMeta
    from appliance.query.directives import Directives, Window

__all__ = ["RecordShaper", "shaper_for"]

# A duration window still needs a bound on memory: a burst of small records inside it is
# capped here (the oldest are dropped first, as if they fell out of the window).
MAX_BUFFERED_RECORDS = 100_000


class RecordShaper:
    """Context windows and label selection for the records of one entry of one query."""

    __slots__ = ("_after", "_after_left", "_after_until", "_before", "_buffer", "_labels")

    def __init__(
        self,
        before: Window | None = None,
        after: Window | None = None,
        select_labels: tuple[str, ...] | None = None,
    ) -> None:
        self._before = before
        self._after = after
        self._labels = frozenset(select_labels) if select_labels is not None else None
        limit = MAX_BUFFERED_RECORDS
        if before is not None and before.records is not None:
            limit = before.records
        self._buffer: deque[RecordMeta] = deque(maxlen=limit)
        self._after_left = 0  # records still owed after the last match
        self._after_until = -1  # ... or the last timestamp inside its time window

    def feed(self, meta: RecordMeta, matched: bool) -> list[RecordMeta]:
        """The records to emit now that ``meta`` (next in order) got verdict ``matched``."""
        if matched:
            out = self._drain_before(meta.timestamp)
            out.append(self._shape(meta))
            self._open_after(meta.timestamp)
            return out
        if self._in_after(meta.timestamp):
            return [self._shape(meta)]
        if self._before is not None and self._buffer.maxlen:
            span = self._before.duration_us
            if span is not None:  # drop what has aged out of the window already
                while self._buffer and meta.timestamp - self._buffer[0].timestamp > span:
                    self._buffer.popleft()
            self._buffer.append(meta)
        return []

    def _drain_before(self, timestamp: int) -> list[RecordMeta]:
        if not self._buffer:
            return []
        span = self._before.duration_us if self._before is not None else None
        items = list(self._buffer)
        self._buffer.clear()
        if span is not None:
            items = [m for m in items if timestamp - m.timestamp <= span]
        return [self._shape(m) for m in items]

    def _open_after(self, timestamp: int) -> None:
        after = self._after
        if after is None:
            return
        if after.records is not None:
            self._after_left = after.records
        elif after.duration_us is not None:
            self._after_until = timestamp + after.duration_us

    def _in_after(self, timestamp: int) -> bool:
        if self._after_left > 0:
            self._after_left -= 1
            return True
        return timestamp <= self._after_until

    def _shape(self, meta: RecordMeta) -> RecordMeta:
        if self._labels is None:
            return meta
        return replace(meta, labels={k: v for k, v in meta.labels.items() if k in self._labels})


def shaper_for(directives: Directives | None) -> RecordShaper | None:
    """A shaper for a query's directives, or None when no output directive is set."""
    if directives is None:
        return None
    if directives.ctx_before is None and directives.ctx_after is None:
        if directives.select_labels is None:
            return None
    return RecordShaper(directives.ctx_before, directives.ctx_after, directives.select_labels)
