"""Which records a task logs: the entry patterns, then ``when`` (spec replication §1.6).

One ``EntryFilter`` per task and entry, because ``$each_n``/``$each_t`` keep state per entry.
``$meta`` entries follow their parent's selection and skip ``when`` (ReductStore).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.errors import ApplianceError
from appliance.query.condition import Condition, compile_when
from appliance.engine.names import is_meta_entry
from appliance.query.patterns import matches

log = logging.getLogger(__name__)


def _meta_parent(name: str) -> str | None:
    if name == "$meta":
        return ""
    if name.endswith("/$meta"):
        return name[: -len("/$meta")]
    return None


def entry_selected(patterns: Sequence[str], name: str) -> bool:
    """True when the task's ``entries`` select entry ``name`` (empty: every entry)."""
    includes = [p for p in patterns if not p.startswith("!")]
    excludes = [p[1:] for p in patterns if p.startswith("!")]

    def hit(pattern: str) -> bool:
        if matches(pattern, name):
            return True
        parent = _meta_parent(name)
        # An attachment entry travels with its parent (``a`` selects ``a/$meta``).
        return bool(parent) and matches(pattern, parent)  # type: ignore[arg-type]

    chosen = not includes or any(hit(p) for p in includes)
    return chosen and not any(hit(p) for p in excludes)


class EntryFilter:
    """The stateful record filter of one task for one entry."""

    def __init__(self, entry: str, when: Mapping[str, Any] | None) -> None:
        self.entry = entry
        self._meta = is_meta_entry(entry)
        self._condition: Condition | None = None
        if when:
            try:
                self._condition = compile_when(when, strict=True)
            except ApplianceError as exc:  # validated at create: only bad persisted data
                log.warning("replication condition ignored for %s: %s", entry, exc)

    @property
    def batch_size(self) -> int | None:
        """``#batch_size`` of the condition, if any."""
        return self._condition.directives.batch_size if self._condition else None

    @property
    def batch_records(self) -> int | None:
        """``#batch_records`` of the condition, if any."""
        return self._condition.directives.batch_records if self._condition else None

    @property
    def passes_all(self) -> bool:
        """True when every record passes (no ``when``, or an attachment entry): the writer
        then skips the per-record evaluation."""
        return self._meta or self._condition is None

    def passes(self, timestamp: int, labels: Mapping[str, str]) -> bool:
        """Whether the record goes into the log (call once per record, in write order)."""
        if self._meta or self._condition is None:
            return True
        try:
            return self._condition.evaluate(timestamp, labels)
        except ApplianceError as exc:
            log.debug("record %d of %s not replicated: %s", timestamp, self.entry, exc)
            return False
