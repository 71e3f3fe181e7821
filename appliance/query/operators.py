"""Every operator of the ``when`` language (spec §5.5), with arity checked at compile time.

``build_operator(name, operands)`` is the single entry point: it validates the operand count
with ReductStore's messages (``$eq requires exactly two operands`` …) and returns a node.
Stateless operators are ``Call`` nodes around a small function; the stateful aggregations live
in ``aggregation.py``. Aliases report errors under their canonical name, as ReductStore does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.errors import UnprocessableEntity
from appliance.query import values as v
from appliance.query.aggregation import EachN, EachT, Gate, Limit
from appliance.query.nodes import Context, Node, Reference, label_name
from appliance.query.values import Value

__all__ = ["OPERATORS", "Call", "build_operator"]

Func = Callable[[Context, Sequence[Node]], Value]
Builder = Callable[[list[Node]], Node]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Call(Node):
    """A stateless operator: a function of the context and the (lazily evaluated) operands."""

    __slots__ = ("func", "name", "operands")

    def __init__(self, name: str, func: Func, operands: list[Node]) -> None:
        self.name = name
        self.func = func
        self.operands = operands

    def apply(self, ctx: Context) -> Value:
        """Run the operator on this record."""
        return self.func(ctx, self.operands)

    def __repr__(self) -> str:
        return f"{self.name}{self.operands!r}"


# -- logical -----------------------------------------------------------------------------------


def _all_of(ctx: Context, ops: Sequence[Node]) -> Value:
    return all(v.as_bool(op.apply(ctx)) for op in ops)


def _any_of(ctx: Context, ops: Sequence[Node]) -> Value:
    return any(v.as_bool(op.apply(ctx)) for op in ops)


def _none_of(ctx: Context, ops: Sequence[Node]) -> Value:
    return not any(v.as_bool(op.apply(ctx)) for op in ops)


def _one_of(ctx: Context, ops: Sequence[Node]) -> Value:
    # Every operand is evaluated (no short-circuit), as ReductStore counts them all.
    return sum(1 for op in ops if v.as_bool(op.apply(ctx))) == 1


def _in(ctx: Context, ops: Sequence[Node]) -> Value:
    needle = ops[0].apply(ctx)
    return any(v.equals(op.apply(ctx), needle) for op in ops[1:])


def _nin(ctx: Context, ops: Sequence[Node]) -> Value:
    return not _in(ctx, ops)


# -- comparison --------------------------------------------------------------------------------


def _comparison(accept: tuple[int, ...]) -> Func:
    def func(ctx: Context, ops: Sequence[Node]) -> Value:
        return v.compare(ops[0].apply(ctx), ops[1].apply(ctx)) in accept

    return func


def _eq(ctx: Context, ops: Sequence[Node]) -> Value:
    return v.equals(ops[0].apply(ctx), ops[1].apply(ctx))


def _ne(ctx: Context, ops: Sequence[Node]) -> Value:
    return not v.equals(ops[0].apply(ctx), ops[1].apply(ctx))


# -- arithmetic and strings ------------------------------------------------------------------


def _fold(step: Callable[[Value, Value], Value]) -> Func:
    def func(ctx: Context, ops: Sequence[Node]) -> Value:
        if not ops:
            return 0  # an empty $add / $mult yields 0, ReductStore's choice for both
        result = ops[0].apply(ctx)
        for op in ops[1:]:
            result = step(result, op.apply(ctx))
        return result

    return func


def _binary(step: Callable[[Value, Value], Value]) -> Func:
    def func(ctx: Context, ops: Sequence[Node]) -> Value:
        return step(ops[0].apply(ctx), ops[1].apply(ctx))

    return func


def _abs(ctx: Context, ops: Sequence[Node]) -> Value:
    return v.absolute(ops[0].apply(ctx))


def _contains(a: Value, b: Value) -> Value:
    return v.to_string(b) in v.to_string(a)


def _starts_with(a: Value, b: Value) -> Value:
    return v.to_string(a).startswith(v.to_string(b))


def _ends_with(a: Value, b: Value) -> Value:
    return v.to_string(a).endswith(v.to_string(b))


# -- dates -------------------------------------------------------------------------------------


def _date(name: str, part: Callable[[datetime], int]) -> Func:
    def func(ctx: Context, ops: Sequence[Node]) -> Value:
        timestamp = v.as_int(ops[0].apply(ctx))
        try:
            moment = _EPOCH + timedelta(microseconds=timestamp)
        except OverflowError:
            raise UnprocessableEntity(
                f"{name} requires a valid timestamp in microseconds, got {timestamp}"
            ) from None
        if len(ops) == 2:
            zone = ops[1].apply(ctx)
            if not isinstance(zone, str):
                raise UnprocessableEntity(f"{name} requires timezone to be a string")
            try:
                moment = moment.astimezone(ZoneInfo(zone))
            except (ZoneInfoNotFoundError, ValueError, OverflowError):
                raise UnprocessableEntity(f"Invalid timezone: '{zone}'") from None
        return part(moment)

    return func


# -- misc --------------------------------------------------------------------------------------


def _exists(ctx: Context, ops: Sequence[Node]) -> Value:
    return all(label_name(op, ctx) in ctx.labels for op in ops)


def _ref(ctx: Context, ops: Sequence[Node]) -> Value:
    return Reference(label_name(ops[0], ctx)).apply(ctx)


def _cast(ctx: Context, ops: Sequence[Node]) -> Value:
    return v.cast(ops[0].apply(ctx), v.to_string(ops[1].apply(ctx)))


def _timestamp(ctx: Context, ops: Sequence[Node]) -> Value:
    return ctx.timestamp


# -- arity and the table -----------------------------------------------------------------------


def _plural(count: int) -> str:
    return {0: "no operands", 1: "exactly one operand", 2: "exactly two operands"}[count]


def _call(canonical: str, func: Func, check: Callable[[int], str | None]) -> Builder:
    def build(operands: list[Node]) -> Node:
        problem = check(len(operands))
        if problem is not None:
            raise UnprocessableEntity(f"{canonical} {problem}")
        return Call(canonical, func, operands)

    return build


def _any(count: int) -> str | None:
    return None


def _exactly(n: int) -> Callable[[int], str | None]:
    return lambda count: None if count == n else f"requires {_plural(n)}"


def _at_least_two_operator(count: int) -> str | None:
    return None if count >= 2 else "operator requires at least two operands"


def _at_least_one(count: int) -> str | None:
    return None if count >= 1 else "requires at least one operand"


def _one_or_two(count: int) -> str | None:
    return None if count in (1, 2) else "requires one or two operands"


def _aggregation(name: str, build: Callable[..., Node], arity: int) -> Builder:
    def builder(operands: list[Node]) -> Node:
        if len(operands) != arity:
            raise UnprocessableEntity(f"{name} requires {_plural(arity)}")
        if name in ("$each_n", "$limit") and operands[0].is_constant():
            # Fail at creation rather than on every record (spec: "N=0 -> 422"); a negative
            # count means nothing either (it would pass every record or none).
            n = v.as_int(operands[0].apply(Context(0, {})))
            if n < 0 or (n == 0 and name == "$each_n"):
                raise UnprocessableEntity(f"Value '{n}' is not a valid operand for {name}")
        return build(*operands)

    return builder


def _build_table() -> dict[str, Builder]:
    logical: dict[tuple[str, ...], tuple[str, Func]] = {
        ("$and", "$all_of"): ("$and", _all_of),
        ("$or", "$any_of"): ("$or", _any_of),
        ("$not", "$none_of"): ("$not", _none_of),
        ("$xor", "$one_of"): ("$xor", _one_of),
    }
    table: dict[str, Builder] = {}
    for names, (canonical, func) in logical.items():
        for name in names:
            table[name] = _call(canonical, func, _any)
    table["$in"] = _call("$in", _in, _at_least_two_operator)
    table["$nin"] = _call("$nin", _nin, _at_least_two_operator)

    comparisons: dict[str, Func] = {
        "$eq": _eq,
        "$ne": _ne,
        "$gt": _comparison((1,)),
        "$gte": _comparison((0, 1)),
        "$lt": _comparison((-1,)),
        "$lte": _comparison((-1, 0)),
    }
    for name, func in comparisons.items():
        table[name] = _call(name, func, _exactly(2))

    table["$add"] = _call("$add", _fold(v.add), _any)
    table["$mult"] = _call("$mult", _fold(v.multiply), _any)
    binary: dict[str, Callable[[Value, Value], Value]] = {
        "$sub": v.subtract,
        "$div": v.divide,
        "$div_num": v.divide_num,
        "$rem": v.remainder,
        "$contains": _contains,
        "$starts_with": _starts_with,
        "$ends_with": _ends_with,
    }
    for name, step in binary.items():
        table[name] = _call(name, _binary(step), _exactly(2))
    table["$abs"] = _call("$abs", _abs, _exactly(1))

    dates: dict[str, Callable[[datetime], int]] = {
        "$second": lambda d: d.second,
        "$minute": lambda d: d.minute,
        "$hour": lambda d: d.hour,
        "$day": lambda d: d.day,
        "$month": lambda d: d.month,
        "$year": lambda d: d.year,
        "$weekday": lambda d: d.weekday(),  # Monday = 0, as chrono's num_days_from_monday
    }
    for name, part in dates.items():
        table[name] = _call(name, _date(name, part), _one_or_two)

    for name in ("$exists", "$has"):
        table[name] = _call("$exists", _exists, _at_least_one)
    table["$cast"] = _call("$cast", _cast, _exactly(2))
    table["$ref"] = _call("$ref", _ref, _exactly(1))
    for name in ("$timestamp", "$id"):
        table[name] = _call("$timestamp", _timestamp, _exactly(0))

    table["$each_n"] = _aggregation("$each_n", EachN, 1)
    table["$each_t"] = _aggregation("$each_t", EachT, 1)
    table["$limit"] = _aggregation("$limit", Limit, 1)
    table["$gate"] = _aggregation("$gate", Gate, 2)
    return table


OPERATORS: dict[str, Builder] = _build_table()


def build_operator(name: str, operands: list[Node]) -> Node:
    """Build the node for ``name`` applied to ``operands``; 422 for unknown names or arity."""
    if not name.startswith("$"):
        raise UnprocessableEntity(f"Operator '{name}' must start with '$'")
    builder = OPERATORS.get(name)
    if builder is None:
        raise UnprocessableEntity(f"Operator '{name}' not supported")
    return builder(operands)
