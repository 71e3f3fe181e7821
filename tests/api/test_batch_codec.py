"""Batch protocol v1/v2 header codec: exact parsing rules, every 422, and round trips through
reduct-py's own encoders and decoders (the strongest compatibility evidence we have)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from reduct.batch.batch_v1 import (
    Batch,
    make_headers_v1,
    parse_batched_records_v1,
    parse_errors_from_headers_v1,
)
from reduct.batch.batch_v2 import (
    RecordBatch,
    _parse_batched_headers,
    make_headers_v2,
    parse_batched_records_v2,
    parse_errors_from_headers_v2,
)
from reduct.error import ReductError

from appliance.api.batch_codec import (
    LabelUpdate,
    V1Record,
    decode_name,
    encode_name,
    encode_v1_error,
    encode_v1_record_header,
    encode_v2_echo,
    encode_v2_error,
    encode_v2_read_batch,
    parse_v1_headers,
    parse_v1_timestamps,
    parse_v2_remove,
    parse_v2_request,
    parse_v2_update,
    v2_body_order,
)
from appliance.engine.models import RecordMeta, RecordState
from appliance.errors import Conflict, NotFound, UnprocessableEntity

OCTET = "application/octet-stream"


def meta(entry: str, ts: int, size: int, ct: str = OCTET, **labels: str) -> RecordMeta:
    return RecordMeta(ts, size, ct, labels, RecordState.FINISHED, entry)


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# -- fake aiohttp response, so the client's real async parsers consume our headers -------------


class _Stream:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self.body) if n < 0 else self.pos + n
        chunk = self.body[self.pos : end]
        self.pos += len(chunk)
        return chunk

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        while self.pos < len(self.body):
            yield await self.read(n)


class FakeResponse:
    def __init__(self, headers: list[tuple[str, str]], body: bytes, method: str = "GET") -> None:
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.content = _Stream(body)
        self.method = method

    async def read(self) -> bytes:
        return await self.content.read()


async def client_read(parser: object, response: FakeResponse) -> list[tuple]:
    out = []
    async for record in parser(response):  # type: ignore[operator]
        data = await record.read_all()
        out.append(
            (record.entry, record.timestamp, record.size, record.content_type, record.labels, data)
        )
    return out


def payload(entry: str, ts: int, size: int) -> bytes:
    return (f"{entry}@{ts}:".encode() * size)[:size]


# -- percent encoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("ro/topic/1", "ro%2Ftopic%2F1"),
        ("entry-1_foo~bar", "entry-1_foo~bar"),
        ("a/$meta", "a%2F$meta"),
        ("x y,z", "x%20y%2Cz"),
        ("é", "%C3%A9"),
        ("!#$&'*+-.^_`|~", "!#$&'*+-.^_`|~"),
    ],
)
def test_name_encoding_matches_tchar_rule(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


def test_name_encoding_keeps_percent_like_reductstore() -> None:
    # '%' is a tchar, so it is not escaped (ReductStore's quirk); names never contain it.
    assert encode_name("50%") == "50%"


def test_name_decoding_accepts_raw_slash_and_lowercase_hex() -> None:
    assert decode_name("a/b%2fc") == "a/b/c"


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("foo%ZZ", "Invalid entry encoding in header name: 'foo%ZZ'"),
        ("foo%2", "Invalid entry encoding in header name: 'foo%2'"),
        ("%FF", "Entry name is not valid UTF-8 in header '%FF'"),
    ],
)
def test_name_decoding_errors(encoded: str, message: str) -> None:
    with pytest.raises(UnprocessableEntity, match=f"^{message}$"):
        decode_name(encoded)


# -- v1 parsing --------------------------------------------------------------------------------

V1_VALUES = [
    ("123, text/plain, label1=value1, label2=value2", 123, "text/plain",
     {"label1": "value1", "label2": "value2"}),
    ('123, text/plain, label1="[1, 2, 3]", label2="value2"', 123, "text/plain",
     {"label1": "[1, 2, 3]", "label2": "value2"}),
    ("123, text/plain", 123, "text/plain", {}),
    ("10,", 10, OCTET, {}),
    ("10,,a=1", 10, OCTET, {"a": "1"}),
    ('10,text/plain,x="[a,b]"', 10, "text/plain", {"x": "[a,b]"}),
    ("0,application/octet-stream,a=,b=2", 0, OCTET, {"a": "", "b": "2"}),
    ("5,text/plain;charset=utf-8", 5, "text/plain;charset=utf-8", {}),
    ("5,text/plain,k=a=b", 5, "text/plain", {"k": "a=b"}),
    ("+5,x", 5, "x", {}),
]


@pytest.mark.parametrize(("value", "length", "ct", "labels"), V1_VALUES)
def test_v1_value_parsing(value: str, length: int, ct: str, labels: dict[str, str]) -> None:
    (record,) = parse_v1_headers({"x-reduct-time-7": value})
    assert record == V1Record(7, length, ct, labels)


def test_v1_records_are_sorted_by_timestamp_and_other_headers_ignored() -> None:
    headers = {
        "x-reduct-time-30": "1,a",
        "x-reduct-time-10": "2,b",
        "content-type": OCTET,
        "x-reduct-time": "ignored",
        "X-Reduct-Time-20": "3,c",
    }
    assert [r.timestamp for r in parse_v1_headers(headers)] == [10, 20, 30]
    assert parse_v1_timestamps({"x-reduct-time-5": "", "x-reduct-time-1": ""}) == [1, 5]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-reduct-time-1": "10"}, "Invalid batched header"),
        ({"x-reduct-time-1": ""}, "Invalid batched header"),
        ({"x-reduct-time-1": "xxx"}, "Invalid batched header"),
        ({"x-reduct-time-1": "ten,text/plain"}, "Invalid content length"),
        ({"x-reduct-time-1": "-1,text/plain"}, "Invalid content length"),
        ({"x-reduct-time-1": '1,t,a="open'}, "Invalid batched header"),
        ({"x-reduct-time-1": "1,t,@a=1"},
         "Label names must not start with '@': reserved for computed labels"),
        ({"x-reduct-time-abc": "1,t"},
         "Invalid header 'x-reduct-time-abc': must be an unix timestamp in microseconds"),
        ({"x-reduct-time--5": "1,t"},
         "Invalid header 'x-reduct-time--5': must be an unix timestamp in microseconds"),
        ({"x-reduct-time-18446744073709551616": "1,t"},
         "Invalid header 'x-reduct-time-18446744073709551616': must be an unix timestamp in "
         "microseconds"),
    ],
)
def test_v1_errors(headers: dict[str, str], message: str) -> None:
    with pytest.raises(UnprocessableEntity) as info:
        parse_v1_headers(headers)
    assert info.value.message == message


def test_v1_timestamps_reject_bad_suffix_even_for_delete() -> None:
    with pytest.raises(UnprocessableEntity, match="must be an unix timestamp"):
        parse_v1_timestamps({"x-reduct-time-x": ""})


def test_v1_label_update_splits_set_and_remove() -> None:
    (record,) = parse_v1_headers({"x-reduct-time-1": "0,,keep=1,drop="})
    assert record.label_update() == LabelUpdate({"keep": "1"}, frozenset({"drop"}))


# -- v1 encoding -------------------------------------------------------------------------------


def test_v1_record_header_sorts_labels_and_quotes_commas() -> None:
    name, value = encode_v1_record_header(
        meta("e", 1000, 10, "text/plain", x="[a,b]", b="2", a="1")
    )
    assert name == "x-reduct-time-1000"
    assert value == '10,text/plain,a=1,b=2,x="[a,b]"'
    assert encode_v1_record_header(meta("e", 5, 0, ""))[1] == f"0,{OCTET}"


def test_v1_error_header() -> None:
    err = Conflict("A record with timestamp 1000 already exists")
    assert encode_v1_error(1000, err) == (
        "x-reduct-error-1000",
        "409,A record with timestamp 1000 already exists",
    )


def test_v1_own_headers_parse_back() -> None:
    records = [meta("e", 1, 3, "text/plain", a="x,y", b="2"), meta("e", 2, 0)]
    headers = dict(encode_v1_record_header(r) for r in records)
    parsed = parse_v1_headers(headers)
    assert [(p.timestamp, p.content_length, p.content_type, dict(p.labels)) for p in parsed] == [
        (1, 3, "text/plain", {"a": "x,y", "b": "2"}),
        (2, 0, OCTET, {}),
    ]


# -- v1 against reduct-py ----------------------------------------------------------------------


def test_v1_client_write_batch_parses() -> None:
    batch = Batch()
    batch.add(3000, b"ccc", content_type="text/csv", labels={"k": "v", "n": "1"})
    batch.add(1000, b"a")
    batch.add(2000, b"bb", labels={"only": "x"})
    length, headers = make_headers_v1(batch)
    parsed = parse_v1_headers(lower(headers))
    assert [(r.timestamp, r.content_length, r.content_type, dict(r.labels)) for r in parsed] == [
        (1000, 1, OCTET, {}),
        (2000, 2, OCTET, {"only": "x"}),
        (3000, 3, "text/csv", {"k": "v", "n": "1"}),
    ]
    assert sum(r.content_length for r in parsed) == length


def test_v1_client_update_batch_parses_removals() -> None:
    batch = Batch()
    batch.add(1000, labels={"a": "1", "b": ""})
    _, headers = make_headers_v1(batch)
    (record,) = parse_v1_headers(lower(headers))
    assert record.label_update() == LabelUpdate({"a": "1"}, frozenset({"b"}))


async def test_v1_client_reads_our_batch() -> None:
    records = [
        meta("e", 1000, 3, "text/plain", a="1", b="two"),
        meta("e", 2000, 0),
        meta("e", 3000, 5, "image/png", flag="true"),
    ]
    headers = [encode_v1_record_header(r) for r in records]
    headers.append(("x-reduct-last", "true"))
    body = b"".join(payload("e", r.timestamp, r.size) for r in records)
    got = await client_read(
        lambda resp: parse_batched_records_v1(resp, "e"), FakeResponse(headers, body)
    )
    assert got == [
        ("e", r.timestamp, r.size, r.content_type, dict(r.labels), data)
        for r in records
        for data in [payload("e", r.timestamp, r.size)]
    ]


def test_v1_client_parses_our_errors() -> None:
    headers = dict([encode_v1_error(5, NotFound("Record 5 not found in entry b/e"))])
    assert parse_errors_from_headers_v1(headers) == {
        5: ReductError(404, "Record 5 not found in entry b/e")
    }


# -- v2 parsing --------------------------------------------------------------------------------


def v2(records: dict[str, str], entries: str = "entry,ro%2Ftopic", start: str = "1000",
       labels: str | None = None) -> dict[str, str]:
    headers = {"x-reduct-entries": entries, "x-reduct-start-ts": start, **records}
    if labels is not None:
        headers["x-reduct-labels"] = labels
    return headers


def summary(request_records: list) -> list[tuple]:
    return [
        (r.entry, r.timestamp, r.content_length, r.content_type, dict(r.labels))
        for r in request_records
    ]


def test_v2_parse_orders_by_entry_then_delta_and_decodes_names() -> None:
    request = parse_v2_request(v2({
        "x-reduct-1-15": "3,text/plain,0=z",
        "x-reduct-0-10": "5,text/csv,label=value",
        "x-reduct-0-2": "1,text/plain",
    }, labels="label"))
    assert request.entries == ["entry", "ro/topic"]
    assert request.start_ts == 1000
    assert request.label_names == ["label"]
    assert [(r.entry_index, r.delta) for r in request.records] == [(0, 2), (0, 10), (1, 15)]
    assert summary(request.records) == [
        ("entry", 1002, 1, "text/plain", {}),
        ("entry", 1010, 5, "text/csv", {"label": "value"}),
        ("ro/topic", 1015, 3, "text/plain", {"label": "z"}),
    ]
    assert request.content_length == 9


def test_v2_inheritance_per_entry() -> None:
    request = parse_v2_request(v2({
        "x-reduct-0-0": "10,text/plain,0=y,b=1",
        "x-reduct-0-5": "2",             # reuse type and labels
        "x-reduct-0-10": "3,,0=z",       # reuse type, change one label
        "x-reduct-0-20": "4,image/png",  # new type, keep labels
        "x-reduct-0-30": "5,,b=",        # delete a label
        "x-reduct-1-0": "6,,a=1",        # first record of an entry: empty type -> default
    }, labels="x"))
    assert summary(request.records) == [
        ("entry", 1000, 10, "text/plain", {"x": "y", "b": "1"}),
        ("entry", 1005, 2, "text/plain", {"x": "y", "b": "1"}),
        ("entry", 1010, 3, "text/plain", {"x": "z", "b": "1"}),
        ("entry", 1020, 4, "image/png", {"x": "z", "b": "1"}),
        ("entry", 1030, 5, "image/png", {"x": "z"}),
        ("ro/topic", 1000, 6, OCTET, {"a": "1"}),
    ]


def test_v2_quoted_values_and_literal_names_without_dictionary() -> None:
    request = parse_v2_request(v2({"x-reduct-0-0": '1,t,0=a,c="3,4", d = 5 '}))
    assert dict(request.records[0].labels) == {"0": "a", "c": "3,4", "d": "5"}


def test_v2_missing_entries_header_is_an_empty_list() -> None:
    request = parse_v2_request({"x-reduct-start-ts": "0"})
    assert request.entries == [] and request.records == []
    assert encode_v2_echo(request) == {"x-reduct-entries": "", "x-reduct-start-ts": "0"}


def test_v2_non_record_headers_are_ignored() -> None:
    request = parse_v2_request(v2({
        "x-reduct-query-id": "5", "x-reduct-content-length": "10", "content-length": "1",
        "x-reduct-0-1": "1,t",
    }))
    assert len(request.records) == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-reduct-start-ts": "0", "x-reduct-entries": "  "},
         "x-reduct-entries header is required"),
        ({"x-reduct-entries": "a"}, "x-reduct-start-ts header is required"),
        ({"x-reduct-entries": "a", "x-reduct-start-ts": "x"}, "Invalid x-reduct-start-ts header"),
        ({"x-reduct-entries": "a", "x-reduct-start-ts": "-1"}, "Invalid x-reduct-start-ts header"),
        ({"x-reduct-entries": "a", "x-reduct-start-ts": ""}, "Invalid x-reduct-start-ts header"),
        ({"x-reduct-entries": "a%ZZ", "x-reduct-start-ts": "0"},
         "Invalid entry encoding in header name: 'a%ZZ'"),
        (v2({}, labels=" "), "x-reduct-labels header is empty"),
        (v2({}, labels="ok,b%Z1"), "Invalid label encoding in header value: 'b%Z1'"),
        (v2({"x-reduct-2-0": "1,t"}), "Invalid header 'x-reduct-2-0': entry index out of range"),
        (v2({"x-reduct-a-0": "1,t"}),
         "Invalid header 'x-reduct-a-0': entry index must be a number"),
        (v2({"x-reduct-time-5": "1,t"}),
         "Invalid header 'x-reduct-time-5': entry index must be a number"),
        (v2({"x-reduct-0-": "1,t"}),
         "Invalid header 'x-reduct-0-': must be an unix timestamp in microseconds"),
        (v2({"x-reduct-7": "1,t"}), "Invalid batched header 'x-reduct-7'"),
        (v2({"x-reduct-0-0": "1"}),
         "Content-type and labels must be provided for the first record of an entry"),
        (v2({"x-reduct-0-0": "x,t"}), "Invalid batched header"),
        (v2({"x-reduct-0-0": ""}), "Invalid batched header"),
        (v2({"x-reduct-0-0": "1,t,novalue"}), "Invalid batched header"),
        (v2({"x-reduct-0-0": '1,t,a="open'}), "Invalid batched header"),
        (v2({"x-reduct-0-0": "1,t,1=x"}, labels="a"), "Label index '1' is out of range"),
        (v2({"x-reduct-0-0": "1,t,@cpu=1"}),
         "Label names must not start with '@': reserved for computed labels"),
    ],
)
def test_v2_errors(headers: dict[str, str], message: str) -> None:
    with pytest.raises(UnprocessableEntity) as info:
        parse_v2_request(headers)
    assert info.value.message == message


def test_v2_update_folds_label_operations_per_entry() -> None:
    request = parse_v2_update(v2({
        "x-reduct-0-0": "0,,0=one,1=,c=3",
        "x-reduct-0-5": "0",           # no new ops: inherits the folded state
        "x-reduct-0-9": "0,,c=",       # c removed from here on
        "x-reduct-1-0": "0,application/octet-stream,0=x",
    }, labels="a,b"))
    updates = [(r.entry, r.timestamp, r.update) for r in request.records]
    assert updates == [
        ("entry", 1000, LabelUpdate({"a": "one", "c": "3"}, frozenset({"b"}))),
        ("entry", 1005, LabelUpdate({"a": "one", "c": "3"}, frozenset({"b"}))),
        ("entry", 1009, LabelUpdate({"a": "one"}, frozenset({"b", "c"}))),
        ("ro/topic", 1000, LabelUpdate({"a": "x"}, frozenset())),
    ]


def test_v2_update_ignores_lengths_but_not_label_errors() -> None:
    request = parse_v2_update(v2({"x-reduct-0-0": "garbage"}))
    assert request.records[0].update == LabelUpdate()
    with pytest.raises(UnprocessableEntity, match="out of range"):
        parse_v2_update(v2({"x-reduct-0-0": "0,,5=x"}, labels="a"))


def test_v2_remove_ignores_values() -> None:
    request = parse_v2_remove(v2({"x-reduct-1-2": "", "x-reduct-0-0": "whatever"}))
    stamps = [(r.entry, r.timestamp) for r in request.records]
    assert stamps == [("entry", 1000), ("ro/topic", 1002)]


# -- v2 encoding -------------------------------------------------------------------------------


def test_v2_read_batch_exact_headers() -> None:
    records = [
        meta("b", 1000, 5, "text/plain", x="1", y="a,b"),
        meta("b", 1001, 6, "text/plain", x="1", y="a,b"),
        meta("b", 1002, 7, "text/csv", x="2"),
        meta("a/c", 1003, 1, OCTET, z="q"),
        meta("a/c", 1004, 2, OCTET),
    ]
    assert encode_v2_read_batch(records) == {
        "x-reduct-entries": "b,a%2Fc",
        "x-reduct-start-ts": "1000",
        "x-reduct-labels": "x,y,z",
        "x-reduct-0-0": '5,text/plain,0=1,1="a,b"',
        "x-reduct-0-1": "6",
        "x-reduct-0-2": "7,text/csv,0=2,1=",
        "x-reduct-1-3": f"1,{OCTET},2=q",
        "x-reduct-1-4": "2,,2=",
    }


def test_v2_read_batch_orders_entries_by_first_timestamp_then_name() -> None:
    records = [meta("zz", 10, 1), meta("aa", 10, 1), meta("mm", 5, 1)]
    headers = encode_v2_read_batch(records)
    assert headers["x-reduct-entries"] == "mm,aa,zz"
    assert headers["x-reduct-start-ts"] == "5"
    assert "x-reduct-labels" not in headers
    assert [(r.entry, r.timestamp) for r in v2_body_order(records)] == [
        ("mm", 5), ("aa", 10), ("zz", 10)
    ]


def test_v2_empty_read_batch() -> None:
    assert encode_v2_read_batch([]) == {"x-reduct-entries": "", "x-reduct-start-ts": "0"}


def test_v2_read_batch_parses_back_with_our_parser() -> None:
    records = [meta("e/1", 7, 3, "text/plain", a="1,2"), meta("e/1", 9, 1, "", a="1,2", b="x")]
    request = parse_v2_request(encode_v2_read_batch(records))
    assert summary(request.records) == [
        ("e/1", 7, 3, "text/plain", {"a": "1,2"}),
        ("e/1", 9, 1, OCTET, {"a": "1,2", "b": "x"}),
    ]


def test_v2_echo_and_error_headers() -> None:
    request = parse_v2_request(v2({"x-reduct-1-2": "1,t"}, entries="x,a/$meta"))
    assert encode_v2_echo(request) == {
        "x-reduct-entries": "x,a%2F$meta",
        "x-reduct-start-ts": "1000",
    }
    err = NotFound("Record 1002 not found in entry b/x-1")
    assert encode_v2_error(1, 2, err) == (
        "x-reduct-error-1-2",
        "404,Record 1002 not found in entry b/x-1",
    )


# -- v2 against reduct-py ----------------------------------------------------------------------


def client_batch() -> RecordBatch:
    batch = RecordBatch()
    batch.add("sensor/a", 1_000_005, b"12345", content_type="text/plain",
              labels={"n": "1", "kind": "x"})
    batch.add("sensor/a", 1_000_009, b"6", content_type="text/plain",
              labels={"n": "2", "kind": "x"})
    batch.add("sensor/a", 1_000_010, b"", labels={"q": "a,b"})
    batch.add("zeta", 1_000_000, b"zz")
    batch.add("zeta", 1_000_001, b"zzz", labels={"w": "1"})
    batch.add("$meta-ish/x", 1_000_003, b"m", content_type="application/json",
              labels={"key": "k"})
    return batch


def test_v2_client_write_batch_parses() -> None:
    batch = client_batch()
    length, headers = make_headers_v2(batch)
    request = parse_v2_request(lower(headers))
    expected = sorted(
        (entry, ts, rec.size, rec.content_type, rec.labels) for (entry, ts), rec in batch.items()
    )
    assert sorted(summary(request.records)) == expected
    assert request.content_length == length
    # The body order is (entry_index, delta): the order the client concatenates payloads in.
    assert [(r.entry_index, r.delta) for r in request.records] == sorted(
        (r.entry_index, r.delta) for r in request.records
    )


def test_v2_client_empty_batch_is_rejected_like_reductstore() -> None:
    _, headers = make_headers_v2(RecordBatch())
    with pytest.raises(UnprocessableEntity, match="x-reduct-entries header is required"):
        parse_v2_request(lower(headers))


def test_v2_client_update_batch_parses() -> None:
    batch = RecordBatch()
    batch.add("e", 10, labels={"a": "1", "b": ""})
    batch.add("e", 20, labels={"a": "2"})
    batch.add("f", 15, labels={"remove": "true", "key": "k1"})
    _, headers = make_headers_v2(batch)
    updates = {(r.entry, r.timestamp): r.update for r in parse_v2_update(lower(headers)).records}
    assert updates == {
        ("e", 10): LabelUpdate({"a": "1"}, frozenset({"b"})),
        ("e", 20): LabelUpdate({"a": "2"}, frozenset({"b"})),
        ("f", 15): LabelUpdate({"remove": "true", "key": "k1"}, frozenset()),
    }


def test_v2_client_remove_batch_parses() -> None:
    batch = RecordBatch()
    batch.add("a", 5)
    batch.add("b/c", 7)
    _, headers = make_headers_v2(batch)
    request = parse_v2_remove(lower(headers))
    assert [(r.entry, r.timestamp) for r in request.records] == [("a", 5), ("b/c", 7)]


def test_v2_client_parses_our_echo_and_errors() -> None:
    _, headers = make_headers_v2(client_batch())
    request = parse_v2_request(lower(headers))
    response = encode_v2_echo(request)
    target = request.records[-1]
    name, value = encode_v2_error(target.entry_index, target.delta, Conflict("dup"))
    response[name] = value
    assert parse_errors_from_headers_v2(response) == {
        target.entry: {target.timestamp: ReductError(409, "dup")}
    }


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_v2_client_reads_our_batch(method: str) -> None:
    records = [
        meta("sensor/a", 1000, 3, "text/plain", a="1", b="x,y"),
        meta("sensor/a", 1001, 2, "text/plain", a="1", b="x,y"),
        meta("sensor/a", 1002, 0, "text/plain", a="2"),
        meta("a/$meta", 1003, 4, "application/json", key="k", remove="true"),
        meta("b", 1003, 1, ""),
        meta("b", 1005, 6, "image/png", computed="no", a="1"),
    ]
    headers = list(encode_v2_read_batch(records).items())
    headers += [("content-type", OCTET), ("x-reduct-last", "true")]
    ordered = v2_body_order(records)
    body = b"" if method == "HEAD" else b"".join(
        payload(r.entry, r.timestamp, r.size) for r in ordered
    )
    got = await client_read(parse_batched_records_v2, FakeResponse(headers, body, method))
    expected = [
        (r.entry, r.timestamp, r.size, r.content_type or OCTET, dict(r.labels),
         b"" if method == "HEAD" else payload(r.entry, r.timestamp, r.size))
        for r in ordered
    ]
    assert got == expected


async def test_v2_client_reads_many_entries_in_time_order() -> None:
    # Entries interleave in time: the client reads bodies in (delta, entry_index) order.
    records = [meta(f"e{i % 3}", 5000 + i, i % 4, n=str(i // 2)) for i in range(30)]
    headers = list(encode_v2_read_batch(records).items()) + [("x-reduct-last", "false")]
    body = b"".join(payload(r.entry, r.timestamp, r.size) for r in v2_body_order(records))
    got = await client_read(parse_batched_records_v2, FakeResponse(headers, body))
    assert [(g[0], g[1], g[4], g[5]) for g in got] == [
        (r.entry, r.timestamp, dict(r.labels), payload(r.entry, r.timestamp, r.size))
        for r in sorted(records, key=lambda r: r.timestamp)
    ]


# -- property: any batch survives both directions through reduct-py ---------------------------

_NAME_CHARS = "ab/_-$ é."
_VALUE_CHARS = "xyz019 ,=:;[]{}'é"
label_values = st.text(_VALUE_CHARS, min_size=1, max_size=8).map(str.strip).filter(bool)
label_maps = st.dictionaries(st.text("kKé_-.0 ", min_size=1, max_size=4).map(str.strip)
                             .filter(bool), label_values, max_size=4)
content_types = st.sampled_from(["text/plain", OCTET, "image/png", "a;b=c"])
record_metas = st.lists(
    st.builds(
        meta,
        entry=st.text(_NAME_CHARS, min_size=1, max_size=6),
        ts=st.integers(0, 50),
        size=st.integers(0, 5),
        ct=content_types,
    ).flatmap(lambda m: label_maps.map(lambda labels: RecordMeta(
        m.timestamp, m.size, m.content_type, labels, m.state, m.entry))),
    max_size=12,
    unique_by=lambda m: (m.entry, m.timestamp),
)


def _expected(records: list[RecordMeta]) -> list[tuple]:
    return sorted((r.entry, r.timestamp, r.size, r.content_type, dict(r.labels)) for r in records)


@settings(max_examples=150, deadline=None)
@given(record_metas)
def test_v2_any_read_batch_is_parsed_identically_by_reduct_py(records: list[RecordMeta]) -> None:
    parsed = _parse_batched_headers(encode_v2_read_batch(records)) if records else []
    got = [(p.entry, p.timestamp, p.header.content_length, p.header.content_type,
            p.header.labels) for p in parsed]
    # The client's header order is the body order we promise with v2_body_order.
    assert [(g[0], g[1]) for g in got] == [(r.entry, r.timestamp) for r in v2_body_order(records)]
    assert sorted(got) == _expected(records)


@settings(max_examples=150, deadline=None)
@given(record_metas.filter(bool))
def test_v2_any_client_write_batch_is_parsed_identically(records: list[RecordMeta]) -> None:
    batch = RecordBatch()
    for r in records:
        batch.add(r.entry, r.timestamp, b"x" * r.size, content_type=r.content_type,
                  labels=dict(r.labels))
    length, headers = make_headers_v2(batch)
    request = parse_v2_request(lower(headers))
    assert sorted(summary(request.records)) == _expected(records)
    assert request.content_length == length


@settings(max_examples=100, deadline=None)
@given(record_metas)
def test_v1_any_client_write_batch_parses(records: list[RecordMeta]) -> None:
    # reduct-py's v1 writer never quotes values, so only comma-free values survive v1 at all.
    records = [r for r in records if not any("," in v for v in r.labels.values())]
    batch = Batch()
    for r in {r.timestamp: r for r in records}.values():
        batch.add(r.timestamp, b"x" * r.size, content_type=r.content_type, labels=dict(r.labels))
    _, headers = make_headers_v1(batch)
    parsed = parse_v1_headers(lower(headers))
    assert [(p.timestamp, p.content_length, p.content_type, dict(p.labels)) for p in parsed] == [
        (ts, rec.size, rec.content_type, rec.labels) for (_, ts), rec in batch.items()
    ]
