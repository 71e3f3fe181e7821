"""The ``when`` language: every operator, syntax form, typing rule, directive and 422 (§5.5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from appliance.errors import NotFound, UnprocessableEntity
from appliance.query.condition import compile_when, hide_tombstones, is_tombstone
from appliance.query.directives import Directives, Window
from appliance.query.nodes import Context
from appliance.query.parser import parse_value
from appliance.query.values import Duration

LABELS = {"label": "10", "s": "abc", "t": "true", "f": "false", "x": "1.5", "neg": "-3"}
TS_2024 = 1704067200123456  # 2024-01-01T00:00:00.123456Z, a Monday


def value(expr: Any, labels: Mapping[str, str] = LABELS, ts: int = 0) -> Any:
    """Evaluate one operand expression (as it would appear inside an array)."""
    (node,) = parse_value(expr)
    return node.apply(Context(ts, labels))


def passes(
    when: Any, labels: Mapping[str, str] = LABELS, ts: int = 0, strict: bool = False
) -> bool:
    return compile_when(when, strict=strict).evaluate(ts, labels)


def run(when: Any, timestamps: list[int], labels: Mapping[str, str] = LABELS) -> list[bool]:
    condition = compile_when(when)
    return [condition.evaluate(ts, labels) for ts in timestamps]


def same(a: Any, b: Any) -> bool:
    """Equal value and equal Python type (bool is not int here)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# -- ReductStore's own parser table (operator, operands -> value) ------------------------------

OPERATOR_TABLE = [
    ("$each_n", [1], True),
    ("$each_t", [1], False),
    ("$limit", [1], True),
    ("$add", [1, 2.0], 3.0),
    ("$add", [1, 2], 3),
    ("$add", ["a", "b"], "ab"),
    ("$add", [True, True], 2),
    ("$add", [], 0),
    ("$add", [1, 2, 3.5], 6.5),
    ("$sub", [1, 2], -1),
    ("$sub", [1.5, True], 0.5),
    ("$mult", [2, 3], 6),
    ("$mult", [True, 1, 2.0], 2.0),
    ("$mult", [], 0),
    ("$div", [3, 2], 1.5),
    ("$div", [True, 4], 0.25),
    ("$div_num", [3, 2], 1),
    ("$div_num", [-7, 2], -3),
    ("$div_num", [9.9, 3.0], 3),
    ("$rem", [-10, 6], -4),
    ("$rem", [10, -6], 4),
    ("$rem", [6, 3.5], 2.5),
    ("$rem", [-9.0, 3.5], -2.0),
    ("$rem", [1.5, 0.0], math.nan),
    ("$rem", [{"$div": [1e308, 1e-308]}, 2], math.nan),
    ("$abs", [-10], 10),
    ("$abs", [-1.5], 1.5),
    ("$abs", [True], 1),
    ("$and", [True, False], False),
    ("$all_of", [True, 1, -2.0, "x"], True),
    ("$and", [], True),
    ("$or", [True, False], True),
    ("$any_of", [0, "", 0.0], False),
    ("$not", [True], False),
    ("$not", [False, 0], True),
    ("$none_of", [True, True], False),
    ("$xor", [True, True], False),
    ("$one_of", [False, True, 0], True),
    ("$one_of", [], False),
    ("$in", ["a", "a", "b"], True),
    ("$in", [1, 0, 2, 1.0], True),
    ("$in", [1, 0, 2], False),
    ("$nin", ["a", "a", "b"], False),
    ("$nin", [1, 0, 2], True),
    ("$eq", [10, 10], True),
    ("$eq", [1, 1.0], True),
    ("$eq", [True, 1], True),
    ("$eq", [True, 2], False),
    ("$eq", ["1", 1], False),
    ("$eq", ["$$plugin", "$$plugin"], True),
    ("$ne", [-10, 10], True),
    ("$ne", ["1", 1], True),
    ("$gt", [20, 10], True),
    ("$gt", [1, 1], False),
    ("$gt", ["b", "a"], True),
    ("$gt", ["b", 1], False),
    ("$gte", [20, 10], True),
    ("$gte", [1, 1.0], True),
    ("$gte", ["a", 1], False),
    ("$lt", [20, 10], False),
    ("$lt", [False, True], True),
    ("$lt", ["a", 1], False),
    ("$lte", [20, 10], False),
    ("$lte", [1, True], True),
    ("$contains", ["abc", "b"], True),
    ("$contains", ["abc", "x"], False),
    ("$contains", ["1000", 1], True),
    ("$contains", [0.5, "0."], True),
    ("$contains", [True, "t"], True),
    ("$starts_with", ["abc", "ab"], True),
    ("$starts_with", ["abc", "bc"], False),
    ("$ends_with", ["abc", "bc"], True),
    ("$ends_with", [1.0, "1"], True),
    ("$second", [TS_2024], 0),
    ("$second", [TS_2024, "Europe/Berlin"], 0),
    ("$minute", [TS_2024 + 61_000_000], 1),
    ("$hour", [TS_2024], 0),
    ("$hour", [TS_2024, "Europe/Berlin"], 1),
    ("$day", [TS_2024], 1),
    ("$day", [TS_2024, "America/New_York"], 31),
    ("$month", [TS_2024], 1),
    ("$month", [TS_2024, "America/New_York"], 12),
    ("$year", [TS_2024], 2024),
    ("$year", [TS_2024, "America/New_York"], 2023),
    ("$weekday", [TS_2024], 0),
    ("$weekday", [TS_2024, "America/New_York"], 6),
    ("$year", [-1], 1969),
    ("$exists", ["label"], True),
    ("$has", ["label", "s"], True),
    ("$exists", ["label", "nope"], False),
    ("$cast", [10.0, "int"], 10),
    ("$ref", ["label"], 10),
    ("$ref", ["t"], True),
    ("$timestamp", [], 0),
    ("$id", [], 0),
]


@pytest.mark.parametrize(("operator", "operands", "expected"), OPERATOR_TABLE)
def test_operator_values(operator: str, operands: list[Any], expected: Any) -> None:
    assert same(value({operator: operands}), expected)


def test_timestamp_operator_reads_the_record_time() -> None:
    assert value("$timestamp", ts=1234567890) == 1234567890
    assert value({"$add": ["$timestamp", 1]}, ts=5) == 6
    assert passes({"$eq": [{"$hour": ["$id"]}, 1]}, ts=3_600_000_000)


# -- label typing and literals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "typed"),
    [
        ("true", True), ("false", False), ("True", "True"), ("42", 42), ("-42", -42),
        ("+7", 7), ("42.0", 42.0), ("2000.0", 2000.0), ("1e3", 1000.0), (".5", 0.5),
        ("5.", 5.0), ("inf", math.inf), ("NaN", math.nan), ("9223372036854775808", 2.0**63),
        ("some string", "some string"), ("", ""), (" 1", " 1"), ("1_000", "1_000"),
        ("5s", "5s"), ("0x10", "0x10"),
    ],
)
def test_label_values_are_typed_on_read(raw: str, typed: Any) -> None:
    assert same(value("&v", labels={"v": raw}), typed)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("1h", Duration(3_600_000_000)),
        ("100ms 500us", Duration(100_500)),
        ("1h -30m", Duration(1_800_000_000)),
        ("2d 3h", Duration(183_600_000_000)),
        ("-5s", Duration(-5_000_000)),
        ("m5", Duration(300_000_000)),  # ReductStore groups digits wherever they are
        ("2.5m", "2.5m"),
        ("5", "5"),
        ("1h,2m", "1h,2m"),
        ("100xyz", "100xyz"),
        ("abc", "abc"),
        ("$$5s", "$5s"),
        ("", ""),
    ],
)
def test_string_literals(literal: str, expected: Any) -> None:
    assert same(value(literal), expected)


def test_duration_literals_compare_with_microseconds() -> None:
    assert passes({"$eq": ["1h", 3_600_000_000]})
    assert passes({"$lt": ["500ms", "1s"]})
    assert value({"$cast": ["1h 30m", "string"]}) == "1h 30m"
    assert value({"$cast": ["-1s", "string"]}) == "-1s"
    assert value({"$cast": [{"$sub": ["1d", "1h"]}, "int"]}) == 82_800_000_000


def test_references_and_escapes() -> None:
    assert value("&s") == "abc"
    assert value("$$text") == "$text"
    assert value("$$") == "$"
    with pytest.raises(NotFound, match="^Reference 'zz' not found$"):
        value("&zz")
    with pytest.raises(NotFound, match="^Computed reference 'v' not found$"):
        value("@v")


# -- $cast and string forms -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operand", "type_name", "expected"),
    [
        (True, "bool", True), (1, "bool", True), (0.0, "bool", False), ("", "bool", False),
        ("x", "bool", True), (True, "int", 1), (1.9, "int", 1), (-1.9, "int", -1),
        ("12", "int", 12), (True, "float", 1.0), ("1.5", "float", 1.5), (2, "float", 2.0),
        (True, "string", "true"), (1, "string", "1"), (1.0, "string", "1"),
        (0.1, "string", "0.1"), (1e21, "string", "1000000000000000000000"),
        (-0.0, "string", "-0"), ("1s", "string", "1s"), ("1d 1h", "string", "1d 1h"),
        ("23h 5us", "string", "23h 5us"), (5, "duration", Duration(5)),
        ("2s", "duration", Duration(2_000_000)), ("7", "duration", Duration(7)),
        (1.5, "duration", Duration(1)),
    ],
)
def test_cast(operand: Any, type_name: str, expected: Any) -> None:
    assert same(value({"$cast": [operand, type_name]}), expected)


def test_cast_of_zero_duration_renders_0us() -> None:
    assert value({"$cast": [{"$cast": [0, "duration"]}, "string"]}) == "0us"


def test_cast_of_label_to_string_like_remove_attachments() -> None:
    # reduct-py's Bucket.remove_attachments sends exactly this condition.
    when = {"$in": [{"&key": {"$cast": "string"}}, "a", "$$b", "12"]}
    # "12.0" is typed as the float 12.0, whose string form is "12" (Rust's Display).
    assert [passes(when, {"key": k}) for k in ("a", "$b", "b", "12", "12.0", "12.5")] == [
        True, True, False, True, True, False
    ]
    assert passes(when, {}) is False  # no key label: skipped
    with pytest.raises(NotFound, match="Reference 'key' not found"):
        passes(when, {}, strict=True)


# -- evaluation errors ------------------------------------------------------------------------

EVAL_ERRORS = [
    ({"$add": [True, "s"]}, "Cannot add boolean to string"),
    ({"$add": [1, "s"]}, "Cannot add integer to string"),
    ({"$add": ["1h", "s"]}, "Cannot add duration to string"),
    ({"$add": [1.5, "s"]}, "Cannot add float to string"),
    ({"$add": ["s", 1]}, "Cannot add string to integer"),
    ({"$sub": [1, "s"]}, "Cannot subtract string from integer"),
    ({"$sub": ["s", True]}, "Cannot subtract string from boolean"),
    ({"$sub": ["s", "t"]}, "Cannot subtract string"),
    ({"$mult": [2, "s"]}, "Cannot multiply integer by string"),
    ({"$mult": ["s", "s"]}, "Cannot multiply string by string"),
    ({"$div": ["s", 1]}, "Cannot divide string"),
    ({"$div": [1, "s"]}, "Cannot divide by string"),
    ({"$div": [1, 0]}, "Cannot divide by zero"),
    ({"$div_num": [1, 0.5]}, "Cannot divide by zero"),
    ({"$div_num": ["s", 1]}, "Cannot divide string"),
    ({"$rem": [1, "s"]}, "Cannot divide integer by string"),
    ({"$rem": ["s", 1.0]}, "Cannot divide string by float"),
    ({"$rem": ["s", "t"]}, "Cannot divide string"),
    ({"$rem": [1, 0]}, "Cannot divide by zero"),
    ({"$abs": ["s"]}, "Cannot calculate absolute value of a string"),
    ({"$cast": ["xx", "int"]}, "Value 'xx' could not be parsed as integer"),
    ({"$cast": ["xx", "float"]}, "Value 'xx' could not be parsed as float"),
    ({"$cast": [1, "foo"]}, "Unknown type 'foo'"),
    ({"$hour": [TS_2024, "Mars/Olympus"]}, "Invalid timezone: 'Mars/Olympus'"),
    ({"$hour": [TS_2024, 123]}, "$hour requires timezone to be a string"),
    ({"$hour": [2**63 - 1]},
     f"$hour requires a valid timestamp in microseconds, got {2**63 - 1}"),
    ({"$hour": ["&s"]}, "Value 'abc' could not be parsed as integer"),
    ({"$each_t": ["&s"]}, "Value 'abc' could not be parsed as float"),
    ({"$each_n": ["&s"]}, "Value 'abc' could not be parsed as integer"),
    ({"$limit": ["&s"]}, "Value 'abc' could not be parsed as integer"),
    ({"$each_n": ["&zero"]}, "Value '0' is not a valid operand for $each_n"),
]


@pytest.mark.parametrize(("when", "message"), EVAL_ERRORS)
def test_evaluation_errors_fail_strict_and_skip_otherwise(when: Any, message: str) -> None:
    labels = {**LABELS, "zero": "0"}
    assert passes(when, labels) is False
    with pytest.raises(UnprocessableEntity) as info:
        passes(when, labels, strict=True)
    assert info.value.message == message


def test_missing_reference_strict_vs_lenient() -> None:
    when = {"&missing": {"$gt": 1}}
    assert passes(when) is False
    with pytest.raises(NotFound, match="^Reference 'missing' not found$"):
        passes(when, strict=True)
    with pytest.raises(NotFound, match="^Reference 'missing' not found$"):
        passes({"$ref": "missing"}, strict=True)
    with pytest.raises(NotFound):
        passes({"$eq": ["@computed", 1]}, strict=True)
    assert passes({"$or": [True, "&missing"]}, strict=True)  # short-circuit never looks


# -- syntax forms -----------------------------------------------------------------------------

SYNTAX = [
    ({"$and": [True, {"$gt": [20, 10]}]}, True),  # array syntax, nested
    ({"&label": {"$gt": 5}}, True),  # object syntax: label typed as int 10
    ({"&label": {"$gt": 10}}, False),
    ({"&label1": {"$and": True}}, True, {"label1": "true"}),  # spec example: label truthy
    ({"&label1": {"$and": True}}, False, {"label1": "false"}),
    ({"&label1": {"$and": True}}, False, {"label1": "0"}),
    ({"&s": {"$eq": "abc"}, "&label": {"$lt": 11}}, True),  # several keys are AND-ed
    ({"&s": {"$eq": "abc"}, "&label": {"$lt": 10}}, False),
    ({"$not": [{"&s": {"$eq": "abc"}}]}, False),
    ({"$or": [{"&s": {"$eq": "x"}, "&t": {"$eq": True}}]}, True),  # object in array: 2 operands
    ({"$and": [{"&s": {"$eq": "x"}, "&t": {"$eq": True}}]}, False),
    ({"$exists": "label"}, True),  # single-operand syntax
    ({"$each_n": 1}, True),
    ({"&x": {"$gt": 1}}, True),  # float label
    ({"&t": {"$eq": 1}}, True),  # bool label coerces to 1
    ({"&neg": {"$lt": 0}}, True),
    ({"$timestamp": {"$gte": 0}}, True),  # a 0-ary operator as the left of object syntax
    ({"$$plugin": {"$eq": "$$plugin"}}, True),
    ({"$eq": ["&s", "$$abc"]}, False),
    ({"$eq": [{"$cast": ["&label", "string"]}, "10"]}, True),
    ({"&label": {"$in": 10}}, True),  # object syntax gives $in its two operands
    ({"&label": {"$nin": 10}}, False),
    (True, True),  # a bare constant is accepted, like ReductStore
    (0, False),
    ("abc", True),
    ({}, True),
    (None, True),
]


@pytest.mark.parametrize("case", SYNTAX, ids=[str(c[0]) for c in SYNTAX])
def test_syntax_forms(case: tuple[Any, ...]) -> None:
    when, expected, *labels = case
    assert passes(when, labels[0] if labels else LABELS) is expected


def test_in_with_a_label() -> None:
    assert passes({"$in": ["&label", 9, 10]})
    assert not passes({"$nin": ["&label", 9, 10]})


# -- compile-time 422 -------------------------------------------------------------------------

COMPILE_ERRORS = [
    ({"$xx": [True, True]}, "Operator '$xx' not supported"),
    ({"and": [True, True]}, "Operator 'and' must start with '$'"),
    ({"label": 5}, "Operator 'label' must start with '$'"),
    ({"&ref": {"$and": True, "x": "y"}}, "Object notation must have exactly one operator"),
    ({"&label": {"$in": [10, 20]}}, "Array type is not supported: [10,20]"),
    ({"&ref": {"$and": None}}, "Null type is not supported: null"),
    ({"$and": [None]}, "Null type is not supported: null"),
    ({"$and": [[1]]}, "Array type is not supported: [1]"),
    ([1, 2], "Array type is not supported: [1,2]"),
    ({"$plugin": {"$eq": "value"}},
     "Unknown '$' literal '$plugin'; use '$$' to escape a string value"),
    ({"$eq": ["$plugin", "$plugin"]},
     "Unknown '$' literal '$plugin'; use '$$' to escape a string value"),
    ({"$eq": ["$eq", 1]}, "Unknown '$' literal '$eq'; use '$$' to escape a string value"),
    ({"#invalid_directive": "value"}, "Directive '#invalid_directive' is not supported"),
    ({"#ctx_before": None}, "Directive '#ctx_before' cannot be null"),
    ({"$each_n": 0}, "Value '0' is not a valid operand for $each_n"),
    ({"$each_n": []}, "$each_n requires exactly one operand"),
    ({"$each_t": [1, 2]}, "$each_t requires exactly one operand"),
    ({"$limit": []}, "$limit requires exactly one operand"),
    ({"$gate": ["1s"]}, "$gate requires exactly two operands"),
    ({"$in": [1]}, "$in operator requires at least two operands"),
    ({"$nin": []}, "$nin operator requires at least two operands"),
    ({"$exists": []}, "$exists requires at least one operand"),
    ({"$has": []}, "$exists requires at least one operand"),
    ({"$cast": [1]}, "$cast requires exactly two operands"),
    ({"$ref": []}, "$ref requires exactly one operand"),
    ({"$timestamp": [1]}, "$timestamp requires no operands"),
    ({"$id": [1]}, "$timestamp requires no operands"),
    ({"$abs": [1, 2]}, "$abs requires exactly one operand"),
    # Single-operand syntax with an object parses the object first (ReductStore's order).
    ({"$not": {"&a": {"$eq": 1}}}, "$eq requires exactly two operands"),
    ({"$not": {"&a": 1}}, "Operator '&a' must start with '$'"),
]
for _op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$sub", "$div", "$div_num", "$rem",
            "$contains", "$starts_with", "$ends_with"):
    COMPILE_ERRORS.append(({_op: [1]}, f"{_op} requires exactly two operands"))
for _op in ("$second", "$minute", "$hour", "$day", "$month", "$year", "$weekday"):
    COMPILE_ERRORS.append(({_op: []}, f"{_op} requires one or two operands"))
    COMPILE_ERRORS.append(({_op: [1, "UTC", 3]}, f"{_op} requires one or two operands"))


@pytest.mark.parametrize(("when", "message"), COMPILE_ERRORS)
def test_compile_errors(when: Any, message: str) -> None:
    with pytest.raises(UnprocessableEntity) as info:
        compile_when(when)
    assert info.value.message == message


# -- aggregation ------------------------------------------------------------------------------


def test_each_n_keeps_the_nth_record() -> None:
    assert run({"$each_n": 2}, [1000, 2000, 3000]) == [False, True, False]  # spec example
    assert run({"$each_n": 3}, list(range(7))) == [False, False, True] * 2 + [False]


def test_each_n_counts_only_records_reaching_it() -> None:
    condition = compile_when({"&keep": {"$eq": True}, "$each_n": 2})
    labels = [{"keep": "true"}, {"keep": "false"}, {"keep": "true"}, {"keep": "true"}]
    assert [condition.evaluate(i, lb) for i, lb in enumerate(labels)] == [
        False, False, True, False
    ]


@pytest.mark.parametrize("span", [0.1, "100ms", "100000us"])
def test_each_t(span: Any) -> None:
    assert run({"$each_t": span}, [0, 1, 100_001, 100_002, 200_001]) == [
        False, False, True, False, True
    ]


def test_each_t_zero_passes_everything() -> None:
    assert run({"$each_t": 0}, [5, 5, 6]) == [True, True, True]


def test_limit_ends_the_query() -> None:
    condition = compile_when({"$limit": 2})
    assert [condition.evaluate(t, {}) for t in (1, 2)] == [True, True]
    assert not condition.exhausted
    assert condition.evaluate(3, {}) is False
    assert condition.exhausted
    assert condition.evaluate(4, {}) is False  # stays ended, even in strict mode


def test_limit_after_filter_counts_matches_only() -> None:
    condition = compile_when({"&n": {"$gt": 1}, "$limit": 1}, strict=True)
    results = [condition.evaluate(t, {"n": str(n)}) for t, n in enumerate([0, 5, 0, 7])]
    assert results == [False, True, False, False]
    assert condition.exhausted


def test_gate_opens_on_rising_edge_for_a_duration() -> None:
    condition = compile_when({"$gate": ["10ms", "&on"]})
    steps = [
        (0, "false", False),
        (1_000, "true", True),    # rising edge: open until 11_000
        (5_000, "false", False),  # mirrors the input while open
        (6_000, "true", True),
        (11_000, "true", False),  # window over: forced false...
        (12_000, "true", False),
        (13_000, "false", False),  # ...until the input resets
        (14_000, "true", True),    # and rises again
        (100, "true", True),       # time went backwards: reset, a new edge
    ]
    for ts, on, expected in steps:
        assert condition.evaluate(ts, {"on": on}) is expected, ts


def test_gate_with_float_seconds() -> None:
    assert run({"$gate": [0.1, True]}, [0, 99_999, 100_000]) == [True, True, False]


# -- directives -------------------------------------------------------------------------------


def test_directives_are_parsed_and_removed() -> None:
    condition = compile_when({
        "#ctx_before": "1h",
        "#ctx_after": 3,
        "#select_labels": ["label1", "5s"],
        "#ext": {"plugin": {"x": 1}},
        "#batch_size": "8MB",
        "#batch_records": 10,
        "#batch_metadata_size": 1024,
        "#batch_timeout": "2s",
        "#record_timeout": 0.5,
        "#io_timeout": "1m",
        "&label": {"$eq": 10},
    })
    assert condition.directives == Directives(
        ctx_before=Window(duration_us=3_600_000_000),
        ctx_after=Window(records=3),
        select_labels=("label1", "5s"),
        ext={"plugin": {"x": 1}},
        batch_size=8_000_000,
        batch_records=10,
        batch_metadata_size=1024,
        batch_timeout_seconds=2.0,
        record_timeout_seconds=0.5,
        io_timeout_seconds=60.0,
    )
    assert condition.evaluate(0, LABELS)
    assert not condition.is_trivial


def test_directives_only_is_trivial() -> None:
    condition = compile_when({"#select_labels": "a", "#batch_timeout": "1.5s"})
    assert condition.is_trivial and condition.evaluate(0, {})
    assert condition.directives.select_labels == ("a",)
    assert condition.directives.batch_timeout_seconds == 1.5
    assert compile_when(None).directives == Directives()


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"#ctx_before": "soon"},
         "Directive '#ctx_before' must be a number of records or a duration"),
        ({"#ctx_after": -1}, "Directive '#ctx_after' must be a number of records or a duration"),
        ({"#ctx_after": [1, 2]}, "Directive '#ctx_after' must have exactly one value"),
        ({"#select_labels": [1]}, "Directive '#select_labels' must be a list of label names"),
        ({"#select_labels": [[1]]}, "Directive '#select_labels' has an unsupported value: [[1]]"),
        ({"#batch_size": "lots"}, "Directive '#batch_size' must be a number of bytes or a size"),
        ({"#batch_records": 1.5}, "Directive '#batch_records' must be a number of records"),
        ({"#batch_records": True}, "Directive '#batch_records' must be a number of records"),
        ({"#io_timeout": "later"},
         "Directive '#io_timeout' must be a number of seconds or a duration"),
        ({"#record_timeout": {"a": 1}},
         "Directive '#record_timeout' has an unsupported value: {\"a\":1}"),
    ],
)
def test_directive_errors(when: Any, message: str) -> None:
    with pytest.raises(UnprocessableEntity) as info:
        compile_when(when)
    assert info.value.message == message


# -- $meta tombstones -------------------------------------------------------------------------


def test_hide_tombstones_filters_before_the_condition() -> None:
    condition = hide_tombstones(compile_when({"$each_n": 2}, strict=True))
    assert condition.hides_tombstones and condition.strict
    records = [{"key": "a"}, {"key": "b", "remove": "true"}, {"key": "c"}, {"remove": "True"}]
    # The tombstone is hidden and not counted by $each_n; "True" is not the boolean true.
    assert [condition.evaluate(i, lb) for i, lb in enumerate(records)] == [
        False, False, True, False
    ]
    trivial = hide_tombstones(compile_when(None))
    assert trivial.evaluate(0, {"remove": "false"})
    assert not trivial.evaluate(0, {"remove": "true"})
    assert is_tombstone({"remove": "true"}) and not is_tombstone({})
