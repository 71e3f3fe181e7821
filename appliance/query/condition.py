"""Compiled ``when`` conditions: what the query layer calls for every candidate record.

``compile_when`` validates the whole condition up front (every 422 of spec §5.5 surfaces when
the query is created) and returns a ``Condition``. ``Condition.evaluate`` is called once per
record, in record order: ``$each_n``, ``$each_t``, ``$limit`` and ``$gate`` keep state between
calls, so compile one condition per query (per entry when entries are read separately) and
never share it between queries.

Evaluation errors follow ReductStore: in strict mode they propagate (a missing label is 404
``Reference 'x' not found``, a type error 422), in non-strict mode the record is skipped.
``exhausted`` turns true once ``$limit`` has let its N records through; the query must end.
``hide_tombstones`` wraps a condition for ``$meta`` entries, where records labelled
``remove=true`` are attachments deleted by a label update (spec §8.5, §11).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.errors import ApplianceError
from appliance.query.directives import Directives
from appliance.query.nodes import Context, LimitReached, Node
from appliance.query.parser import parse_when
from appliance.query.values import as_bool

__all__ = ["Condition", "compile_when", "hide_tombstones", "is_tombstone"]

TOMBSTONE_LABEL = "remove"


def is_tombstone(labels: Mapping[str, str]) -> bool:
    """True for an attachment record removed by a ``remove=true`` label update."""
    # Typed like any label: only the exact string "true" is the boolean true.
    return labels.get(TOMBSTONE_LABEL) == "true"


class Condition:
    """A compiled, stateful ``when`` condition for one query."""

    __slots__ = ("_exhausted", "_hide_tombstones", "_root", "directives", "is_trivial", "strict")

    def __init__(
        self,
        root: Node,
        directives: Directives,
        *,
        strict: bool = False,
        is_trivial: bool = False,
        hide_tombstones: bool = False,
    ) -> None:
        self._root = root
        self.directives = directives
        self.strict = strict
        self.is_trivial = is_trivial  # no expression at all: every record passes
        self._hide_tombstones = hide_tombstones
        self._exhausted = False

    @property
    def exhausted(self) -> bool:
        """True once ``$limit`` has passed its N records: no further record can match."""
        return self._exhausted

    @property
    def hides_tombstones(self) -> bool:
        """True when records labelled ``remove=true`` are filtered out before the condition."""
        return self._hide_tombstones

    def evaluate(self, timestamp: int, labels: Mapping[str, str]) -> bool:
        """Decide whether the record passes; stateful, so call once per record in order.

        Raises:
            ApplianceError: only in strict mode, when the condition cannot be evaluated
                (``NotFound`` for a missing label, ``UnprocessableEntity`` for a type error).
        """
        if self._exhausted:
            return False
        if self._hide_tombstones and is_tombstone(labels):
            return False  # hidden before the condition, so aggregations never count it
        if self.is_trivial:
            return True
        try:
            return as_bool(self._root.apply(Context(timestamp, labels)))
        except LimitReached:
            self._exhausted = True
            return False
        except ApplianceError:
            if self.strict:
                raise
            return False

    def __repr__(self) -> str:
        return f"Condition({self._root!r}, strict={self.strict})"


def compile_when(when: Mapping[str, Any] | None, *, strict: bool = False) -> Condition:
    """Validate and compile a ``when`` object; ``None`` or ``{}`` always passes.

    Raises:
        UnprocessableEntity: unknown operator or directive, wrong arity, bad literal…
    """
    root, directives, count = parse_when(when)
    return Condition(root, directives, strict=strict, is_trivial=count == 0)


def hide_tombstones(condition: Condition) -> Condition:
    """The same condition, also hiding ``remove=true`` records (for ``$meta`` entries).

    The result shares the compiled tree (and its state) with ``condition``: use it instead of
    the original, not alongside it.
    """
    return Condition(
        condition._root,  # noqa: SLF001 - same module, deliberate sharing
        condition.directives,
        strict=condition.strict,
        is_trivial=condition.is_trivial,
        hide_tombstones=True,
    )
