"""The fast batch-write header parsers (``batch_codec.fast``) give exactly what the general
parsers give, or None (then the handler runs the general parser, which raises the exact error).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reduct.batch.batch_v1 import Batch, make_headers_v1
from reduct.batch.batch_v2 import RecordBatch, make_headers_v2

from appliance.api.batch_codec import parse_v1_headers, parse_v2_request
from appliance.api.batch_codec.fast import parse_v1_write, parse_v2_write
from appliance.api.params import decode_value
from appliance.errors import UnprocessableEntity

BASE = [(b"host", b"localhost"), (b"content-type", b"application/octet-stream")]


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """ASGI raw headers as a server hands them over (lower-case names, UTF-8 values)."""
    return BASE + [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def general_map(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """What ``batch_v1.header_map`` builds from raw headers."""
    return {k.decode("latin1").lower(): decode_value(v) for k, v in pairs}


def general_v1(pairs: list[tuple[bytes, bytes]], entry: str) -> list[tuple] | Exception:
    try:
        records = parse_v1_headers(general_map(pairs))
    except UnprocessableEntity as exc:
        return exc
    return [(r.timestamp, entry, r.timestamp, r.content_length, r.content_type, r.labels)
            for r in records]


def general_v2(pairs: list[tuple[bytes, bytes]]) -> tuple | Exception:
    try:
        req = parse_v2_request(general_map(pairs))
    except UnprocessableEntity as exc:
        return exc
    rows = [((r.entry_index, r.delta), r.entry, r.timestamp, r.content_length, r.content_type,
             r.labels) for r in req.records]
    return rows, req.entries, req.start_ts, req.content_length


def check_v1(pairs: list[tuple[bytes, bytes]], entry: str = "e", *, fast: bool) -> None:
    """The fast result equals the general one; ``fast``: it must not fall back."""
    expected = general_v1(pairs, entry)
    got = parse_v1_write(pairs, entry)
    if got is None:
        assert not fast, "fell back on a plain request"
        return
    assert not isinstance(expected, Exception), f"fast parse accepted what fails: {expected}"
    assert got.rows == expected
    assert got.content_length == sum(row[3] for row in expected)
    assert got.others == {k: v for k, v in general_map(pairs).items()
                          if not k.startswith("x-reduct-time-")}


def check_v2(pairs: list[tuple[bytes, bytes]], *, fast: bool) -> None:
    """The fast result equals the general one; ``fast``: it must not fall back."""
    expected = general_v2(pairs)
    got = parse_v2_write(pairs)
    if got is None:
        assert not fast, "fell back on a plain request"
        return
    assert not isinstance(expected, Exception), f"fast parse accepted what fails: {expected}"
    assert (got.rows, got.entries, got.start_ts, got.content_length) == expected


labels_st = st.dictionaries(
    st.sampled_from(["a", "b", "n", "long_name", "x-y"]),
    st.sampled_from(["1", "2", "", "a,b", "ü", "v w", "x=y"]),
    max_size=3,
)
record_st = st.tuples(
    st.integers(0, 2**40), st.integers(0, 5000),
    st.sampled_from([None, "text/plain", "application/octet-stream", "image/jpeg"]), labels_st,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(record_st, max_size=30, unique_by=lambda r: r[0]))
def test_v1_reduct_py_batches_parse_fast_and_equal(records: list) -> None:
    batch = Batch()
    for ts, size, ct, labels in records:
        batch.add(ts, b"x" * size, content_type=ct, labels=labels)
    _, headers = make_headers_v1(batch)
    # A label value with a quote (or an empty one) may legitimately fall back; the rest not.
    plain = all('"' not in v or "," in v for *_, lb in records for v in lb.values())
    check_v1(raw(headers), fast=plain and all(
        "" not in lb.values() for *_, lb in records))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["e1", "e/2", "cam 3"]), record_st), max_size=30,
                unique_by=lambda r: (r[0], r[1][0])))
def test_v2_reduct_py_batches_parse_fast_and_equal(records: list) -> None:
    batch = RecordBatch()
    for entry, (ts, size, ct, labels) in records:
        batch.add(entry, ts, b"x" * size, content_type=ct, labels=labels)
    _, headers = make_headers_v2(batch)
    check_v2(raw(headers), fast=bool(records))


@pytest.mark.parametrize(
    "headers",
    [
        {"x-reduct-time-1": "10"},  # no content type part
        {"x-reduct-time-1": "10,"},
        {"x-reduct-time-1": "abc,text/plain"},
        {"x-reduct-time-+1": "10,text/plain"},
        {"x-reduct-time-x": "10,text/plain"},
        {"x-reduct-time-1": "10,text/plain", "x-reduct-time-01": "5,text/plain"},  # same ts
        {"x-reduct-time-1": "10,text/plain,@a=1"},
        {"x-reduct-time-1": '10,text/plain,a="x,y",b=2'},
        {"x-reduct-time-1": '10,text/plain,a="x'},
        {"x-reduct-time-1": "10,text/plain,a=1,junk"},
        {"x-reduct-time-1": " 10 , text/plain ,a = 1"},
        {"x-reduct-time-99999999999999999999": "10,text/plain"},
        {"x-reduct-time-1": "99999999999999999999999,text/plain"},
    ],
)
def test_v1_odd_headers_equal_or_fall_back(headers: dict[str, str]) -> None:
    check_v1(raw(headers), fast=False)


def test_v1_upper_case_names_and_latin1_values_are_handled() -> None:
    check_v1([(b"X-Reduct-Time-1", b"3,text/plain")], fast=False)
    check_v1([(b"x-reduct-time-1", b"3,text/plain,a=\xff\xfe")], fast=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-reduct-entries": "a", "x-reduct-0-0": "1,text/plain"},  # no start ts
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-1-0": "1,text/plain"},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-0": "1"},  # no meta
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-0": "1,text/plain",
         "x-reduct-0-1": "2", "x-reduct-0-2": "3,,a=1", "x-reduct-0-3": "4,,a="},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-labels": "n,m",
         "x-reduct-0-0": "1,,0=1,1=2", "x-reduct-0-1": "1,,1=", "x-reduct-0-2": "1,,5=1"},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-x": "1,text/plain"},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-": "1,text/plain"},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-1-2": "1,text/plain"},
        {"x-reduct-entries": "a", "x-reduct-start-ts": "5", "x-reduct-0-1": "1,text/plain",
         "x-reduct-00-01": "1,text/plain"},
        {"x-reduct-entries": "", "x-reduct-start-ts": "5"},
        {"x-reduct-entries": "a,b", "x-reduct-start-ts": "+5", "x-reduct-1-0": "1,a/b,x=1",
         "x-reduct-0-3": "2,c/d"},
    ],
)
def test_v2_odd_headers_equal_or_fall_back(headers: dict[str, str]) -> None:
    check_v2(raw(headers), fast=False)


def test_fast_rows_share_label_dicts_between_equal_records() -> None:
    """Why it is fast: the labels of identical header tails are parsed once."""
    pairs = raw({f"x-reduct-time-{i}": "1,text/plain,a=1" for i in range(3)})
    parsed = parse_v1_write(pairs, "e")
    assert parsed is not None
    assert parsed.rows[0][5] is parsed.rows[2][5] == {"a": "1"}


def test_request_headers_built_in_one_pass_equal_quarts() -> None:
    """``ApplianceConnection`` builds ``request.headers`` as Quart does, minus the re-validation."""
    from quart import Quart
    from quart.asgi import ASGIHTTPConnection

    from appliance.api.connection import ApplianceConnection

    app = Quart(__name__)
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/v1/b/x/e/batch", "query_string": b"", "root_path": "",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"h"), (b"x-reduct-time-1", b"1,text/plain,a=\xc3\xbc"),
                    (b"x-dup", b"1"), (b"x-dup", b"2"), (b"authorization", b"Bearer t")],
    }

    async def send(_: object) -> None:
        pass

    ours = ApplianceConnection(app, scope)._create_request_from_scope(send)  # type: ignore[arg-type]
    quarts = ASGIHTTPConnection(app, scope)._create_request_from_scope(send)  # type: ignore[arg-type]
    assert list(ours.headers.items()) == list(quarts.headers.items())
    assert ours.headers.getlist("X-Dup") == ["1", "2"]
    assert ours.scope is scope and ours.path == quarts.path and ours.method == "POST"


def test_v2_rows_share_label_dicts_when_labels_cycle() -> None:
    """v2 inherits labels from the previous record: equal states are still one object, so a
    batch whose labels cycle through ten values parses ten label sets, not one per record."""
    batch = RecordBatch()
    for i in range(100):
        batch.add("e", 1000 + i, b"x", labels={"n": str(i % 10)})
    _, headers = make_headers_v2(batch)
    parsed = parse_v2_write(raw(headers))
    assert parsed is not None
    assert len({id(row.labels) for row in parsed.rows}) == 10
    assert [row.labels for row in parsed.rows] == [{"n": str(i % 10)} for i in range(100)]


# --- the column pass (issue 15): big batches, shuffled, and names that only look regular -------


def _v1_batch(n: int, labels_cycle: int = 10) -> list[tuple[bytes, bytes]]:
    batch = Batch()
    for i in range(n):
        batch.add(10**15 + 7 * i, b"x" * (i % 3 + 1024), labels={"n": str(i % labels_cycle)})
    return raw(make_headers_v1(batch)[1])


def _v2_batch(n: int, entries: int = 1) -> list[tuple[bytes, bytes]]:
    batch = RecordBatch()
    for i in range(n):
        batch.add(f"e{i % entries}", 10**15 + 7 * i, b"x" * (i % 3 + 1024),
                  labels={"n": str(i % 10)})
    return raw(make_headers_v2(batch)[1])


@pytest.mark.parametrize("shuffle", [False, True])
def test_column_pass_equals_the_general_parsers_on_big_batches(shuffle: bool) -> None:
    import random

    v1, v2, v2_many = _v1_batch(1000), _v2_batch(1000), _v2_batch(600, entries=3)
    if shuffle:  # record headers in any order, the other headers among them
        for pairs in (v1, v2, v2_many):
            random.Random(7).shuffle(pairs)
    check_v1(v1, fast=True)
    check_v2(v2, fast=True)
    check_v2(v2_many, fast=True)


@pytest.mark.parametrize(
    "odd",
    [
        (b"x-reduct-time-5x-reduct-time-6", b"1,text/plain"),  # the prefix twice
        (b"x-reduct-time-", b"1,text/plain"),  # no timestamp
        (b"x-reduct-time-1 2", b"1,text/plain"),
        (b"x-reduct-time-12", b" 1 ,text/plain"),  # spaces around the length: the loop takes it
        (b"x-reduct-time-12", b"1"),  # no comma
        (b"x-reduct-time-12", b"-1,text/plain"),
        (b"x-reduct-time-12", b"1,text/plain,=bad"),
        (b"x-reduct-time-0", b"1,text/plain"),  # a duplicate of the first record
        (b"X-Reduct-Time-12", b"1,text/plain"),
        (b"x-reduct-time-12\n13", b"1,text/plain"),
    ],
)
def test_column_pass_v1_odd_record_among_many_equals_or_falls_back(odd: tuple[bytes, bytes]) -> None:
    pairs = raw({f"x-reduct-time-{i}": "1,text/plain" for i in range(0, 200, 2)})
    pairs.insert(50, odd)
    check_v1(pairs, fast=False)


@pytest.mark.parametrize(
    "odd",
    [
        # Dashes that add up across names: one with two, one with none.
        [(b"x-reduct-0-500-3", b"1,text/plain"), (b"x-reduct-0", b"1,text/plain")],
        [(b"x-reduct-0-501-x-reduct-0-502", b"1,text/plain")],  # the prefix twice
        [(b"x-reduct-0-", b"1,text/plain")],
        [(b"x-reduct-0-503", b" 1 ,text/plain")],
        [(b"x-reduct-0-504", b"x,text/plain")],
        [(b"x-reduct-0-5", b"1,text/plain")],  # a duplicate
        [(b"x-reduct-1-0", b"1,text/plain")],  # an entry index out of range
        [(b"x-reduct-0-505\n1", b"1,text/plain")],
        [(b"X-Reduct-0-506", b"1,text/plain")],
        [(b"x-reduct-0a-507", b"1,text/plain")],
        [(b"x-reduct-other", b"kept as a header")],
        [(b"x-reduct-0-508", b"1")],  # inherits content type and labels
    ],
)
def test_column_pass_v2_odd_records_among_many_equal_or_fall_back(
    odd: list[tuple[bytes, bytes]],
) -> None:
    headers = {"x-reduct-entries": "a", "x-reduct-start-ts": "5"}
    headers.update({f"x-reduct-0-{d}": "1,text/plain,k=v" for d in range(0, 200, 2)})
    pairs = raw(headers)
    for pair in odd:
        pairs.insert(40, pair)
    check_v2(pairs, fast=False)


def test_column_pass_keeps_the_last_of_repeated_other_headers() -> None:
    pairs = _v1_batch(50) + [(b"x-other", b"1"), (b"x-other", b"2")]
    parsed = parse_v1_write(pairs, "e")
    assert parsed is not None and parsed.others["x-other"] == "2"
