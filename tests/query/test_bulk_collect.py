"""A query of one entry read whole takes its records a run at a time (``Query._collect_plain``,
``Entry.iter_runs``), records decoded together share their content type and labels objects
(``codec._decode_records``), and batched-read headers are encoded straight to bytes
(``v1_lines``, ``v2_read_batch_raw``). Each must give exactly what the record-by-record
code gives: the same batches, the same records, the same header bytes."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.api.batch_codec import (
    encode_v1_record_header,
    header_pairs,
    v1_lines,
    v2_read_batch_headers,
    v2_read_batch_raw,
)
from appliance.engine import Storage
from appliance.engine.codec import (
    _DESC,
    _STATES,
    Descriptor,
    StoredRecord,
    _decode_records,
    decode_descriptor,
    encode_descriptor,
)
from appliance.engine.models import (
    BucketSettings,
    EngineOptions,
    NewRecord,
    RecordMeta,
    RecordState,
)
from appliance.query.handle import BatchLimits, Query, QuerySpec, header_cost
from appliance.query.registry import QueryRegistry


def _labels(rng: random.Random, i: int) -> dict[str, str]:
    """Runs of equal labels, changes of value at equal lengths, commas, none at all."""
    kind = (i // 7) % 5
    if kind == 0:
        return {"a": "1", "b": "x"}
    if kind == 1:
        return {"a": "2", "b": "y"}  # same shape and lengths as kind 0, other bytes
    if kind == 2:
        return {}
    if kind == 3:
        return {"a": "1", "b": "x", "c": "p,q"}
    return {"z": str(rng.randrange(10))}


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """Bucket ``b``, entry ``e``: 600 records in blocks of 64, varied labels and types;
    ts 10, 20, ... with some records removed (holes inside blocks)."""
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=64))
    rng = random.Random(7)
    records = [
        NewRecord(
            10 * i, bytes([i % 251]) * rng.randrange(0, 300),
            content_type="text/plain" if i % 11 == 0 else "application/octet-stream",
            labels=_labels(rng, i),
        )
        for i in range(1, 601)
    ]
    assert not bucket.write_batch("e", records)
    bucket.get_entry("e").remove_records([300, 310, 2000, 5990])
    yield storage
    storage.close()


# The limits both plain-query equivalence tests run under: records, body and headers each
# cutting a batch, a run of one block filled exactly, a record pending on the headers, and a
# batch whose first record alone is over the header limit.
LIMITS = [
    BatchLimits(),
    BatchLimits(max_records=1),
    BatchLimits(max_records=7),
    BatchLimits(max_records=30),
    BatchLimits(max_records=64),
    BatchLimits(max_records=65),
    BatchLimits(max_records=500, max_size=2_000),
    BatchLimits(max_records=500, max_metadata=700),  # cut by the headers: a record pends
    BatchLimits(max_records=10, max_metadata=150),
    BatchLimits(max_records=40, max_metadata=90),  # a batch's first record over the limit
]


def _limits_id(limits: BatchLimits) -> str:
    return f"{limits.max_records}-{limits.max_size}-{limits.max_metadata}"


def _batches(storage: Storage, limits: BatchLimits, **spec: Any) -> list[list[tuple[int, int]]]:
    """Every batch of a query of ``e``: (timestamp, payload length) per record."""
    registry = QueryRegistry()
    qid = registry.create(storage, "b", None, QuerySpec(entries=("e",), **spec))
    query = registry.get(qid, "b", None)
    out = []
    for _ in range(1000):
        batch = query.collect_batch(storage, limits, False, True)
        if not batch.records:
            assert batch.last
            return out
        payloads = batch.payloads or [None] * len(batch.records)
        out.append([
            (meta.timestamp, len(p) if p is not None else -1)
            for (_, meta), p in zip(batch.records, payloads, strict=True)
        ])
        if batch.last:
            return out
    raise AssertionError("the query did not end")


def _expected(storage: Storage, limits: BatchLimits) -> list[list[tuple[int, int]]]:
    """The batches the limits call for, worked out from the entry's records one by one."""
    entry = storage.get_bucket("b").get_entry("e")
    batches: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    body = metadata = 0
    for meta in entry.iter_records(0, 2**64 - 1):
        cost = header_cost(meta, "e")
        full = len(current) >= limits.max_records or body > limits.max_size
        if current and (full or metadata + cost > limits.max_metadata):
            batches.append(current)
            current, body, metadata = [], 0, 0
        current.append((meta.timestamp, meta.size))
        body += meta.size
        metadata += cost
    if current:
        batches.append(current)
    return batches


@pytest.mark.parametrize("limits", LIMITS, ids=_limits_id)
def test_plain_query_batches_are_the_limits_batches(storage: Storage, limits: BatchLimits) -> None:
    got = _batches(storage, limits)
    assert got == _expected(storage, limits)
    stamps = [ts for batch in got for ts, _ in batch]
    assert len(stamps) == 596 and 300 not in stamps and 5990 not in stamps


@pytest.mark.parametrize(
    "limits", [BatchLimits(max_records=30), BatchLimits(max_records=30, max_metadata=2_000)]
)
def test_plain_query_equals_the_record_by_record_path(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, limits: BatchLimits
) -> None:
    plain = _batches(storage, limits, start=1_005, stop=4_444)
    assert plain[0][0][0] == 1_010 and plain[-1][-1][0] == 4_440
    # Taken for a hidden (``$meta``) entry, ``e`` goes the record-by-record way (and, after
    # a pending record, the merge): what every query took before the plain path. Its records
    # have no ``remove`` label, so nothing is hidden.
    monkeypatch.setattr("appliance.query.handle.is_meta_entry", lambda name: True)
    monkeypatch.setattr(Query, "_collect_plain", None)
    assert _batches(storage, limits, start=1_005, stop=4_444) == plain


def test_plain_query_skips_an_unfinished_record_and_sees_it_later(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        bucket = storage.create_bucket("b")
        for ts in range(1, 11):
            bucket.write_record("e", ts, bytes([ts]), "x", {})
        writer = bucket.begin_write("e", 5_5, 4, "x", {})
        for ts in range(60, 70):
            bucket.write_record("e", ts, bytes([ts]), "x", {})
        got = [ts for b in _batches(storage, BatchLimits(max_records=4)) for ts, _ in b]
        assert got == [*range(1, 11), *range(60, 70)]
        writer.write(b"1234")
        writer.finish()
        got = [ts for b in _batches(storage, BatchLimits(max_records=4)) for ts, _ in b]
        assert got == [*range(1, 11), 55, *range(60, 70)]
    finally:
        storage.close()


def test_plain_query_of_a_removed_entry_ends(storage: Storage) -> None:
    registry = QueryRegistry()
    qid = registry.create(storage, "b", None, QuerySpec(entries=("e",)))
    query = registry.get(qid, "b", None)
    first = query.collect_batch(storage, BatchLimits(max_records=5), False, True)
    assert [m.timestamp for _, m in first.records] == [10, 20, 30, 40, 50]
    storage.get_bucket("b").remove_entry("e")
    rest = query.collect_batch(storage, BatchLimits(max_records=5), False, True)
    assert rest.records == [] and rest.last


def _stored(ts: int, ct: str, labels: dict[str, str]) -> StoredRecord:
    return StoredRecord(ts, 10, ct, labels, RecordState.FINISHED, "e", ts * 10, 123, 20)


def test_decoded_records_share_equal_tails_and_only_those() -> None:
    """Equal content types and labels are shared (adjacent or not); unequal ones never."""
    records = (
        _stored(1, "a/b", {"k": "v1"}),
        _stored(2, "a/b", {"k": "v1"}),
        _stored(3, "a/b", {"k": "v2"}),  # same shape and lengths, other bytes
        _stored(4, "a/c", {"k": "v2"}),
        _stored(5, "a/c", {"k": "v2", "l": ""}),
        _stored(6, "a/c", {"k": "v2", "l": ""}),
        _stored(7, "", {}),
        _stored(8, "", {}),
        _stored(9, "a/b", {"k": "v1"}),
    )
    descriptor = Descriptor(1, 0, records, 90, 0, 90, 1, 9)
    decoded = decode_descriptor(encode_descriptor(descriptor), "e").records
    assert decoded == records
    assert decoded[0].labels is decoded[1].labels
    assert decoded[1].labels is not decoded[2].labels
    assert decoded[2].content_type is not decoded[3].content_type
    assert decoded[4].labels is decoded[5].labels
    assert decoded[6].labels is decoded[7].labels == {}
    assert decoded[8].labels is decoded[0].labels  # not adjacent: the same bytes all the same
    assert decoded[3].labels is not decoded[2].labels  # another content type: other bytes


def _metas(rng: random.Random, entries: int, in_order: bool) -> list[RecordMeta]:
    shared = [{"a": "1"}, {"a": "1", "b": "q,r"}, {}, {"b": "2"}]
    types = ["application/octet-stream", "text/plain", ""]
    metas = []
    ts = 1_000
    for _ in range(rng.randrange(1, 60)):
        ts += rng.randrange(1, 5)
        labels = rng.choice(shared) if rng.random() < 0.8 else dict(rng.choice(shared))
        metas.append(RecordMeta(
            ts if in_order else rng.randrange(1_000, 1_300), rng.randrange(0, 5000),
            rng.choice(types[:1] * 5 + types), labels, RecordState.FINISHED,
            f"e{rng.randrange(entries)}",
        ))
    return metas


@pytest.mark.parametrize("seed", range(40))
def test_raw_headers_equal_the_encoded_str_headers(seed: int) -> None:
    rng = random.Random(seed)
    metas = _metas(rng, entries=1 if seed % 3 else 3, in_order=seed % 5 != 0)

    def encoded(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        return [(n.lower().encode(), v.encode()) for n, v in pairs]

    assert v2_read_batch_raw(metas) == encoded(v2_read_batch_headers(metas))
    assert header_pairs(v1_lines(metas)[0]) == encoded(
        [encode_v1_record_header(m) for m in metas]
    )


def test_raw_v2_headers_of_a_one_entry_run() -> None:
    labels = {"b": "1", "a": "x,y"}
    metas = [
        RecordMeta(100, 5, "text/plain", labels, RecordState.FINISHED, "e"),
        RecordMeta(101, 6, "text/plain", labels, RecordState.FINISHED, "e"),
        RecordMeta(103, 7, "text/plain", {"b": "2", "a": "x,y"}, RecordState.FINISHED, "e"),
        RecordMeta(104, 0, "", {}, RecordState.FINISHED, "e"),
    ]
    assert v2_read_batch_raw(metas) == [
        (b"x-reduct-entries", b"e"),
        (b"x-reduct-start-ts", b"100"),
        (b"x-reduct-0-0", b'5,text/plain,0="x,y",1=1'),
        (b"x-reduct-0-1", b"6"),
        (b"x-reduct-0-3", b"7,,1=2"),
        (b"x-reduct-0-4", b"0,application/octet-stream,0=,1="),
        (b"x-reduct-labels", b"a,b"),
    ]
    assert header_pairs(v1_lines(metas[:2])[0]) == [
        (b"x-reduct-time-100", b'5,text/plain,a="x,y",b=1'),
        (b"x-reduct-time-101", b'6,text/plain,a="x,y",b=1'),
    ]


_DESC_SIZE = _DESC.size


def _reference_decode(data: bytes, pos: int, count: int, end: int) -> list[StoredRecord]:
    """The record-by-record decoder ``_decode_records`` replaced (every record its own
    content type and labels): what the shared-objects decoder must equal, damage included."""
    out = []
    for _ in range(count):
        ts, offset, size, crc, meta_size, state, ct_len, label_count = struct.unpack_from(
            "<QQQIIBII", data, pos
        )
        pos += 41
        content_type = data[pos : pos + ct_len].decode()
        pos += ct_len
        labels = {}
        for _ in range(label_count):
            name_len, value_len = struct.unpack_from("<II", data, pos)
            pos += 8
            name = data[pos : pos + name_len].decode()
            pos += name_len
            labels[name] = data[pos : pos + value_len].decode()
            pos += value_len
        out.append(StoredRecord(ts, size, content_type, labels, _STATES[state], "e", offset, crc,
                                meta_size))
    if pos > end:
        raise IndexError("record runs past the end")
    return out


@pytest.mark.parametrize("seed", range(6))
def test_decoder_agrees_with_the_reference_on_damaged_bytes(seed: int) -> None:
    """Flipped and overwritten bytes in a descriptor's records: the decoder gives the same
    records as the plain one, or fails where it fails (struct, Unicode or index errors)."""
    rng = random.Random(seed)
    records = tuple(
        _stored(ts, rng.choice(["a/b", "a/c", ""]), rng.choice(
            [{"k": "v1"}, {"k": "v2"}, {}, {"k": "v1", "l": "x"}, {"é": "ü"}]
        ))
        for ts in range(1, 40)
    )
    encoded = encode_descriptor(Descriptor(1, 0, records, 390, 0, 390, 1, 39))
    body_start, end = _DESC_SIZE, len(encoded) - 4
    errors = (struct.error, UnicodeDecodeError, IndexError)
    agreed = failed = 0
    for _ in range(300):
        data = bytearray(encoded)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(body_start, end)
            data[at] = rng.choice([0, 1, 2, 0xFF, 0xC3, rng.randrange(256)])
        data = bytes(data)
        try:
            expected: Any = _reference_decode(data, body_start, len(records), end)
        except errors as exc:
            expected = type(exc)
        try:
            got: Any = _decode_records(data, body_start, len(records), end, "e")[0]
        except errors as exc:
            got = type(exc)
        if isinstance(expected, type):
            # Both fail; the kind may differ only where the lengths ran past the end.
            assert isinstance(got, type), (expected, got)
            failed += 1
        else:
            assert got == expected
            agreed += 1
    assert agreed > 50 and failed > 50  # both kinds of damage were exercised


@pytest.mark.parametrize("seed", range(4))
def test_decoder_guesses_cycling_labels_and_agrees_with_the_reference(seed: int) -> None:
    """Labels that cycle (``n=0..9``) with some records out of the cycle, including one whose
    variable part starts with another's whole variable part (``n=1`` against ``n=1, m=x``):
    the successor guess gives the reference's records, shared by equal bytes, and damage
    fails or agrees as the reference does."""
    rng = random.Random(seed)
    pool = [{"n": str(i)} for i in range(10)] + [{"n": "1", "m": "x"}, {}]
    records = tuple(
        _stored(ts, "a/b" if rng.random() < 0.95 else "c",
                pool[ts % 10 if rng.random() < 0.85 else rng.randrange(len(pool))])
        for ts in range(1, 400)
    )
    encoded = encode_descriptor(Descriptor(1, 0, records, 3990, 0, 3990, 1, 399))
    body_start, end = _DESC_SIZE, len(encoded) - 4
    decoded = _decode_records(encoded, body_start, len(records), end, "e")[0]
    assert decoded == list(records) == _reference_decode(encoded, body_start, len(records), end)
    by_value: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for record in decoded:
        first = by_value.setdefault((record.content_type, tuple(record.labels.items())), record)
        assert record.labels is first.labels  # equal bytes: the same object
    errors = (struct.error, UnicodeDecodeError, IndexError)
    for _ in range(150):
        data = bytearray(encoded)
        at = rng.randrange(body_start, end)
        data[at] = rng.choice([0, 1, 0xFF, rng.randrange(256)])
        try:
            expected: Any = _reference_decode(bytes(data), body_start, len(records), end)
        except errors:
            expected = None
        try:
            got: Any = _decode_records(bytes(data), body_start, len(records), end, "e")[0]
        except errors:
            got = None
        assert (got is None) == (expected is None)
        assert got == expected


@pytest.mark.parametrize("limits", LIMITS, ids=_limits_id)
@pytest.mark.parametrize("head", [False, True])
def test_runs_of_block_columns_give_the_batches_of_plain_lists(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, limits: BatchLimits, head: bool
) -> None:
    """Records of a block other than the last come as a ``Run`` of its columns and are
    taken by bisecting running sums (``Query._take_run``): the same batches, pending
    records and positions as the record-by-record loop over plain lists."""
    from appliance.engine.entry import Entry

    def batches() -> list[tuple[list[int], bool, Any]]:
        registry = QueryRegistry()
        qid = registry.create(storage, "b", None, QuerySpec(entries=("e",), start=15))
        query = registry.get(qid, "b", None)
        out = []
        for _ in range(1000):
            batch = query.collect_batch(storage, limits, head, True)
            out.append(([m.timestamp for _, m in batch.records], batch.last,
                         query.pending and query.pending[1].timestamp))
            if batch.last or not batch.records:
                return out
        raise AssertionError("the query did not end")

    taken: list[int] = []
    take_run = Query._take_run

    def counted(self: Query, *args: Any) -> Any:
        result = take_run(self, *args)
        taken.append(result[0])
        return result

    monkeypatch.setattr(Query, "_take_run", counted)
    batches()  # each block read once: the next read takes its columns from the start
    taken.clear()
    with_runs = batches()
    assert taken  # the bulk path ran; with room for a header or more, took most records
    assert limits.max_metadata < 200 or sum(taken) > 400
    iter_blocks = Entry._iter_blocks
    monkeypatch.setattr(Entry, "_iter_blocks",
                        lambda self, start, stop, size=None, runs=False:
                        iter_blocks(self, start, stop, size))
    taken.clear()
    assert batches() == with_runs
    assert not taken


def test_a_run_is_cut_where_the_body_crosses_the_limit(tmp_path: Path) -> None:
    """Records of 100 bytes, a body limit of 1,000: the record that starts at exactly the
    limit goes in (ReductStore includes the record crossing it), the next does not."""
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        bucket = storage.create_bucket("b", BucketSettings(max_block_records=64))
        assert not bucket.write_batch("e", [NewRecord(ts, b"x" * 100) for ts in range(1, 201)])
        got = _batches(storage, BatchLimits(max_records=500, max_size=1_000))
        assert [len(batch) for batch in got][:6] == [11] * 6
        assert [ts for batch in got for ts, _ in batch] == list(range(1, 201))
    finally:
        storage.close()


def test_a_record_removed_between_collecting_and_reading_a_run_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run collected from columns whose block then lost a record: the columns are no longer
    the block's, so the batch is read record by record and goes out without it."""
    from appliance.engine.entry import Entry

    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        bucket = storage.create_bucket("b", BucketSettings(max_block_records=64))
        assert not bucket.write_batch(
            "e", [NewRecord(10 * i, bytes([i]) * 100) for i in range(1, 201)]
        )
        limits = BatchLimits(max_records=30)
        everything = _batches(storage, limits)  # each block read once: columns from now on
        read_columns = Entry.read_columns
        removed: list[int] = []
        answered: list[bool] = []

        def remove_then_read(self: Entry, columns: Any, lo: int, hi: int) -> Any:
            if not removed:
                removed.append(columns.ts[lo + 1])
                self.remove_records(removed)
            body = read_columns(self, columns, lo, hi)
            answered.append(body is not None)
            return body

        monkeypatch.setattr(Entry, "read_columns", remove_then_read)
        got = [ts for batch in _batches(storage, limits) for ts, _ in batch]
        assert removed == [20]
        assert answered[0] is False and all(answered[1:])  # the others from their columns
        assert got == [ts for batch in everything for ts, _ in batch if ts != 20]
    finally:
        storage.close()


def test_a_batch_running_into_the_next_block_is_read_from_both_blocks_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 30 in blocks of 64: a batch crossing a block border is collected as two
    runs and read from both blocks' columns, its body the payloads in order; when the second
    block loses a record between collecting and reading, the batch is read record by record
    and goes out without it."""
    from appliance.engine.entry import Entry

    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        bucket = storage.create_bucket("b", BucketSettings(max_block_records=64))
        assert not bucket.write_batch(
            "e", [NewRecord(10 * i, bytes([i]) * (50 + i)) for i in range(1, 201)]
        )
        limits = BatchLimits(max_records=30)
        everything = _batches(storage, limits)  # each block read once: columns from now on
        registry = QueryRegistry()
        query = registry.get(registry.create(storage, "b", None, QuerySpec(entries=("e",))),
                             "b", None)
        batches = [query.collect_batch(storage, limits, False, True) for _ in range(3)]
        third = batches[2]  # records 61-90: 61-64 in the first block, 65-90 in the second
        assert [m.timestamp for _, m in third.records] == [10 * i for i in range(61, 91)]
        assert third.columns is not None and [(lo, hi) for _, lo, hi in third.columns] == [
            (60, 64), (0, 26)
        ]
        assert third.body == b"".join(bytes([i]) * (50 + i) for i in range(61, 91))

        read_columns = Entry.read_columns
        removed: list[int] = []

        def remove_then_read(self: Entry, columns: Any, lo: int, hi: int) -> Any:
            if not removed and columns.ts[0] == 650:  # the second block of the batch
                removed.append(columns.ts[lo + 1])
                self.remove_records(removed)
            return read_columns(self, columns, lo, hi)

        monkeypatch.setattr(Entry, "read_columns", remove_then_read)
        got = _batches(storage, limits)
        assert removed == [660]
        assert got[2] == [(10 * i, 50 + i) for i in range(61, 91) if i != 66]
        assert [r for batch in got for r in batch] == [
            r for batch in everything for r in batch if r[0] != 660
        ]
    finally:
        storage.close()
