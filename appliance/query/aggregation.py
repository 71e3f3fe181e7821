"""Stateful operators of the ``when`` language: ``$each_n``, ``$each_t``, ``$limit``, ``$gate``.

They keep state across calls, so a compiled condition must see the records of one query in
order, each once. They are only reached when the operands before them in an ``$and`` passed
(evaluation short-circuits like ReductStore's), so ``{"&a": {...}, "$each_n": 2}`` keeps every
second record *among those matching* ``&a``.
"""

from __future__ import annotations

from appliance.errors import UnprocessableEntity
from appliance.query.nodes import Context, LimitReached, Node
from appliance.query.values import Duration, Value, as_bool, as_float, as_int

__all__ = ["EachN", "EachT", "Gate", "Limit"]

US_PER_SECOND = 1_000_000


def _span_us(value: Value) -> int:
    """A duration operand in µs: a duration literal as is, any number as seconds."""
    if isinstance(value, Duration):
        return int(value)
    # Rust casts `seconds * 1e6` with `as u64`: truncation, negatives saturate to 0.
    return max(0, int(as_float(value) * US_PER_SECOND))


class EachN(Node):
    """True for the N-th, 2N-th, … record that reaches it."""

    __slots__ = ("count", "operand")

    def __init__(self, operand: Node) -> None:
        self.operand = operand
        self.count = 0

    def apply(self, ctx: Context) -> Value:
        """Count the record and pass every N-th."""
        self.count += 1
        n = as_int(self.operand.apply(ctx))
        if n == 0:
            raise UnprocessableEntity("Value '0' is not a valid operand for $each_n")
        return self.count % n == 0


class EachT(Node):
    """False for the first record, then true once T has passed since the last true."""

    __slots__ = ("last_timestamp", "operand")

    def __init__(self, operand: Node) -> None:
        self.operand = operand
        self.last_timestamp: int | None = None

    def apply(self, ctx: Context) -> Value:
        """Pass the record if at least T elapsed since the last passed (or first seen) one."""
        if self.last_timestamp is None:
            self.last_timestamp = ctx.timestamp
        span = _span_us(self.operand.apply(ctx))
        passed = ctx.timestamp - self.last_timestamp >= span
        if passed:
            self.last_timestamp = ctx.timestamp
        return passed


class Limit(Node):
    """True for the first N records that reach it; the next one ends the query."""

    __slots__ = ("count", "operand")

    def __init__(self, operand: Node) -> None:
        self.operand = operand
        self.count = 0

    def apply(self, ctx: Context) -> Value:
        """Pass N records, then signal the end of the query."""
        self.count += 1
        if self.count > as_int(self.operand.apply(ctx)):
            raise LimitReached()
        return True


class Gate(Node):
    """Edge-triggered window: a false->true edge of the input opens it for a duration.

    While open the output mirrors the input; after the window the output stays false until
    the input has gone false again and rises anew. Time going backwards resets the gate.
    """

    __slots__ = ("deadline", "input", "last_timestamp", "previous_input", "reset_required", "span")

    def __init__(self, span: Node, input_: Node) -> None:
        self.span = span
        self.input = input_
        self.deadline: int | None = None
        self.previous_input = False
        self.reset_required = False
        self.last_timestamp: int | None = None

    def apply(self, ctx: Context) -> Value:
        """Advance the gate with this record and return its output."""
        now = ctx.timestamp
        if self.last_timestamp is not None and now < self.last_timestamp:
            self.deadline, self.previous_input, self.reset_required = None, False, False
        self.last_timestamp = now

        span = _span_us(self.span.apply(ctx))
        value = as_bool(self.input.apply(ctx))

        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.reset_required = True

        if self.reset_required:
            if not value:
                self.reset_required = False
            self.previous_input = value
            return False

        if self.deadline is None and not self.previous_input and value:
            self.deadline = now + span

        output = self.deadline is not None and now < self.deadline and value
        self.previous_input = value
        return output
