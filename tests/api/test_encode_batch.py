"""A batched read's response parts (``queries.encode_batch``): a v1 batch, and a v2 batch of one
entry in time order, is written straight as header lines (``v1_lines``, ``v2_one_entry_lines``)
and checked by its distinct values; any other batch is built as pairs and checked pair by pair
(``http1.prepared``). Both must give the bytes the reference encoders
(``encode_v1_record_header``, ``v2_read_batch_headers``) give, and a batch with a value h11
would not send must not be marked checked."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from appliance.api.batch_codec import (
    encode_v1_record_header,
    header_pairs,
    v1_lines,
    v1_run_lines,
    v2_one_entry_lines,
    v2_read_batch_headers,
    v2_read_batch_raw,
    v2_run_lines,
)
from appliance.api.queries import EncodedBatch, encode_batch
from appliance.engine.block import Block, Columns
from appliance.engine.codec import StoredRecord
from appliance.engine.models import RecordMeta, RecordState
from appliance.http1.headers import values_are_clean
from appliance.http1.prepared import prepare, prepared_block
from appliance.query.handle import ReadBatch

Pair = tuple[bytes, bytes]
_OWN = [(b"x-reduct-last", b"false"), (b"content-type", b"application/octet-stream")]


def _meta(ts: int, size: int, content_type: str, labels: dict[str, str],
          entry: str = "e") -> RecordMeta:
    return RecordMeta(ts, size, content_type, labels, RecordState.FINISHED, entry)


def _records(rng: random.Random, shared: list[dict[str, str]], most: int, smallest: int,
             share: float) -> list[RecordMeta]:
    """One entry in time order: up to ``most`` records of ``smallest`` bytes or more, their
    labels one of ``shared`` (the object itself with probability ``share``, else a copy),
    default and other content types."""
    types = ["application/octet-stream", "text/plain", ""]
    metas = []
    ts = 1_000 + rng.randrange(1_000)
    for _ in range(rng.randrange(1, most)):
        ts += rng.randrange(1, 5)
        labels = rng.choice(shared) if rng.random() < share else dict(rng.choice(shared))
        metas.append(_meta(ts, rng.randrange(smallest, 5000),
                           rng.choice(types[:1] * 5 + types), labels))
    return metas


def _run(rng: random.Random) -> list[RecordMeta]:
    """One entry in time order, with shared and unshared label objects, quoted values,
    removed labels, default and other content types."""
    shared = [{"a": "1"}, {"a": "1", "b": "q,r"}, {}, {"b": "2"}, {"c": "x", "a": "1"}]
    return _records(rng, shared, 90, 0, 0.8)


def _reference(metas: list[RecordMeta]) -> list[Pair]:
    return [(n.lower().encode(), v.encode()) for n, v in v2_read_batch_headers(metas)]


def _lines(pairs: list[Pair]) -> bytes:
    return b"".join([b"%s: %s\r\n" % pair for pair in pairs])


@pytest.mark.parametrize("seed", range(60))
def test_one_entry_lines_are_the_reference_headers(seed: int) -> None:
    metas = _run(random.Random(seed))
    built = v2_one_entry_lines(metas)
    assert built is not None
    lines, checked = built
    reference = _reference(metas)
    assert lines == _lines(reference)
    assert header_pairs(lines) == reference
    assert v2_read_batch_raw(metas) == reference
    # Every value that is not plain digits is in ``checked`` (a record's with its size as 0).
    for name, value in reference:
        if not value.isdigit():
            size, _, tail = value.partition(b",")
            assert value in checked or (size.isdigit() and b"0," + tail in checked), name


@pytest.mark.parametrize(
    "metas",
    [
        [],
        [_meta(1, 1, "", {}, "a"), _meta(2, 1, "", {}, "b")],  # two entries
        [_meta(2, 1, "", {}), _meta(1, 1, "", {})],  # out of time order
    ],
    ids=["empty", "two entries", "out of order"],
)
def test_other_batches_have_no_one_entry_lines(metas: list[RecordMeta]) -> None:
    assert v2_one_entry_lines(metas) is None
    assert v2_read_batch_raw(metas) == _reference(metas)


def _encoded(metas: list[RecordMeta], v2: bool = True) -> EncodedBatch:
    batch = ReadBatch(records=[(m.entry, m) for m in metas],
                      payloads=[b"x" * m.size for m in metas])
    encode_batch(batch, v2, False, False)
    assert isinstance(batch.encoded, EncodedBatch)
    return batch.encoded


@pytest.mark.parametrize("seed", range(20))
def test_a_one_entry_batch_is_encoded_as_checked_lines(seed: int) -> None:
    metas = _run(random.Random(seed))
    encoded = _encoded(metas)
    pairs = _reference(metas) + _OWN
    assert encoded.raw is None  # no pairs built in the worker thread
    assert encoded.lines == _lines(pairs)
    size = sum(m.size for m in metas)
    assert encoded.length == b"%d" % size
    assert encoded.body == b"x" * size
    headers = encoded.headers()
    assert headers == [*pairs, (b"content-length", b"%d" % size)]
    block = prepared_block(headers)  # the ASGI path sees it checked, as prepare() marks it
    assert block is not None and block.lines == encoded.lines
    assert encoded.headers() is headers  # made once


@pytest.mark.parametrize(
    ("labels", "content_type"),
    [
        ({"a": "x\x00y"}, ""),  # a NUL: h11 refuses it
        ({"a": "x\ty "}, ""),  # whitespace at the value's end: h11 refuses it
        ({"a": "1"}, "text/\x0bplain"),  # a vertical tab: h11 refuses it
    ],
    ids=["nul", "trailing whitespace", "vertical tab in the type"],
)
def test_a_value_h11_would_not_send_leaves_the_batch_unchecked(
    labels: dict[str, str], content_type: str
) -> None:
    metas = [_meta(10, 3, "", {"a": "1"}), _meta(11, 4, content_type, labels)]
    encoded = _encoded(metas)
    assert encoded.lines is None  # so the protocol lane declines it, and h11 checks it
    headers = encoded.headers()
    assert headers == [*_reference(metas), *_OWN, (b"content-length", b"7")]
    assert prepared_block(headers) is None


def _v1_reference(metas: list[RecordMeta]) -> list[Pair]:
    return [(n.lower().encode(), v.encode()) for n, v in map(encode_v1_record_header, metas)]


@pytest.mark.parametrize("seed", range(20))
def test_a_v1_batch_is_encoded_as_checked_lines(seed: int) -> None:
    metas = _run(random.Random(seed))
    lines, checked = v1_lines(metas)
    assert header_pairs(lines) == _v1_reference(metas)
    assert all(v in checked for v in {b"0," + v.partition(b",")[2]
                                      for _, v in _v1_reference(metas)})
    encoded = _encoded(metas, v2=False)
    pairs = [*_v1_reference(metas), *_OWN]
    assert encoded.raw is None
    assert encoded.lines == _lines(pairs)
    assert encoded.headers() == [*pairs, (b"content-length", encoded.length)]
    assert prepared_block(encoded.headers()) is not None


def test_a_v1_value_h11_would_not_send_leaves_the_batch_unchecked() -> None:
    metas = [_meta(10, 3, "", {"a": "1"}), _meta(11, 4, "", {"a": "x\x00"})]
    encoded = _encoded(metas, v2=False)
    assert encoded.lines is None
    assert encoded.headers() == [*_v1_reference(metas), *_OWN, (b"content-length", b"7")]
    assert prepared_block(encoded.headers()) is None


def test_a_v2_batch_of_several_entries_is_checked_pair_by_pair() -> None:
    two = [_meta(10, 3, "", {}, "a"), _meta(11, 4, "", {}, "b")]
    raw = [*_reference(two), *_OWN]
    assert prepare(list(raw))
    encoded = _encoded(two)
    assert encoded.raw == [*raw, (b"content-length", b"7")]  # built in the worker thread
    assert encoded.lines == _lines(raw)
    assert prepared_block(encoded.headers()) is not None


def _block_columns(metas: list[RecordMeta]) -> Columns:
    """The columns of a block holding ``metas`` back to back."""
    block = Block(metas[0].timestamp)
    offset = 0
    for meta in metas:
        block.put(StoredRecord(meta.timestamp, meta.size, meta.content_type, meta.labels,
                               meta.state, meta.entry, offset, 0, 10))
        offset += meta.size
    return block.columns()


def _uniform_block(rng: random.Random) -> list[RecordMeta]:
    """One block's records whose labels all have the names ``a`` and ``b``: shared and
    unshared objects, equal and changed values, quoted ones, several content types."""
    shared = [{"a": "1", "b": "2"}, {"b": "q,r", "a": "1"}, {"a": "", "b": "2"},
              {"a": "x y", "b": "z"}]
    return _records(rng, shared, 200, 1, 0.7)


@pytest.mark.parametrize("seed", range(60))
def test_run_lines_of_a_block_are_the_reference_headers(seed: int) -> None:
    """Any run of a block, wherever it starts, gets the lines ``v2_one_entry_lines`` gives
    it (and so the reference headers), from values derived once for the block."""
    rng = random.Random(seed)
    columns = _block_columns(_uniform_block(rng))
    records = columns.records
    for _ in range(5):
        at = rng.randrange(len(records))
        run = records[at : at + rng.randrange(1, 90)]
        built = v2_run_lines([(columns, at, at + len(run))])
        assert built is not None
        assert built[0] == v2_one_entry_lines(run)[0]
        assert header_pairs(built[0]) == _reference(run)
        assert columns.memo["v2"] is not False  # derived once, for every run


def test_run_lines_leave_a_block_of_mixed_label_names_to_the_per_record_lines() -> None:
    columns = _block_columns([_meta(1, 3, "", {"a": "1"}), _meta(2, 3, "", {"b": "1"}),
                              _meta(3, 3, "", {"a": "1"})])
    assert v2_run_lines([(columns, 1, 3)]) is None
    assert columns.memo["v2"] is False


def test_run_lines_leave_a_value_h11_would_not_send_to_the_per_record_lines() -> None:
    columns = _block_columns([_meta(1, 3, "", {"a": "1"}), _meta(2, 3, "", {"a": "x\x00"}),
                              _meta(3, 3, "", {"a": "1"})])
    assert v2_run_lines([(columns, 0, 2)]) is None


def _following_blocks(
    rng: random.Random, count: int,
    make: Callable[[random.Random], list[RecordMeta]] = _uniform_block,
) -> list[Columns]:
    """The columns of ``count`` blocks of one entry, each after the one before, their
    records made by ``make`` (by default all labels named ``a`` and ``b``)."""
    blocks: list[Columns] = []
    after = 0
    for _ in range(count):
        metas = make(rng)
        shift = after - metas[0].timestamp + rng.randrange(1, 50)
        metas = [_meta(m.timestamp + shift, m.size, m.content_type, m.labels) for m in metas]
        blocks.append(_block_columns(metas))
        after = metas[-1].timestamp
    return blocks


def _random_spans(
    rng: random.Random, blocks: list[Columns], fewest: int
) -> tuple[list[tuple[Columns, int, int]], list[RecordMeta]]:
    """Spans (columns, lo, hi) of a batch over ``fewest`` or more of ``blocks`` in turn (from
    anywhere in the first to anywhere in the last), and the batch's records."""
    first = rng.randrange(len(blocks) - fewest + 1)
    count = rng.randint(fewest, len(blocks) - first)
    spans = []
    for k, columns in enumerate(blocks[first : first + count]):
        size = len(columns.records)
        lo = rng.randrange(size) if k == 0 else 0
        hi = rng.randrange(lo + 1, size + 1) if k == count - 1 else size
        spans.append((columns, lo, hi))
    return spans, [m for columns, lo, hi in spans for m in columns.records[lo:hi]]


@pytest.mark.parametrize("seed", range(40))
def test_run_lines_of_runs_of_following_blocks_are_the_reference_headers(seed: int) -> None:
    """A batch running from one block into the next (and the next) gets the lines
    ``v2_one_entry_lines`` gives it: each block's first record here is written against the
    last block's last record, the others from their block's derived values."""
    rng = random.Random(seed)
    blocks = _following_blocks(rng, 3)
    for _ in range(5):
        spans, batch = _random_spans(rng, blocks, 2)
        built = v2_run_lines(spans)
        assert built is not None
        assert built[0] == v2_one_entry_lines(batch)[0]
        assert header_pairs(built[0]) == _reference(batch)


def test_run_lines_leave_blocks_of_other_label_names_to_the_per_record_lines() -> None:
    """Two blocks, each uniform, but with different label names: indexes as they come."""
    one = _block_columns([_meta(1, 3, "", {"a": "1"}), _meta(2, 3, "", {"a": "2"})])
    two = _block_columns([_meta(5, 3, "", {"b": "1"}), _meta(6, 3, "", {"b": "2"})])
    assert v2_run_lines([(one, 0, 2)]) is not None
    assert v2_run_lines([(one, 1, 2), (two, 0, 1)]) is None


def test_a_block_s_first_record_h11_would_not_send_falls_back() -> None:
    """The value of a block's first record after another block's is checked too."""
    one = _block_columns([_meta(1, 3, "", {"a": "1"}), _meta(2, 3, "", {"a": "1"})])
    two = _block_columns([_meta(5, 3, "", {"a": "x\x00"}), _meta(6, 3, "", {"a": "x\x00"})])
    built = v2_run_lines([(one, 0, 2), (two, 0, 2)])
    assert built is not None
    assert not values_are_clean(built[1])
    batch = ReadBatch(records=[("e", m) for m in [*one.records, *two.records]],
                      payloads=[b"xyz"] * 4)
    batch.columns = [(one, 0, 2), (two, 0, 2)]
    encode_batch(batch, v2=True, head=False, only_metadata=False)
    assert batch.encoded.lines is None  # not marked checked: h11 has its word


@pytest.mark.parametrize("seed", range(30))
def test_v1_run_lines_of_runs_of_blocks_are_the_reference_headers(seed: int) -> None:
    """v1 lines of a batch of one block's records, or running into the next blocks, from
    values worked out once per block: those of ``v1_lines`` and the reference encoder,
    whatever the label names (a v1 value depends on its record alone)."""
    rng = random.Random(seed)
    blocks = _following_blocks(rng, 3, _run)
    for _ in range(5):
        spans, batch = _random_spans(rng, blocks, 1)
        built = v1_run_lines(spans)
        assert built is not None and built[1] == []  # checked once per block
        assert built[0] == v1_lines(batch)[0]
        assert header_pairs(built[0]) == _v1_reference(batch)


def test_v1_run_lines_leave_a_block_with_a_value_h11_would_not_send() -> None:
    columns = _block_columns([_meta(1, 3, "", {"a": "1"}), _meta(2, 3, "", {"a": "x\x00"}),
                              _meta(3, 3, "", {"a": "1"})])
    assert v1_run_lines([(columns, 0, 1)]) is None  # the block's values are checked as one
    assert columns.memo["v1"] is False
    batch = ReadBatch(records=[("e", m) for m in columns.records], payloads=[b"xyz"] * 3)
    batch.columns = [(columns, 0, 3)]
    encode_batch(batch, v2=False, head=False, only_metadata=False)
    assert batch.encoded.lines is None  # not marked checked: h11 has its word
    assert batch.encoded.headers()[:3] == _v1_reference(columns.records)


@pytest.mark.parametrize("seed", range(10))
def test_a_run_of_a_block_is_encoded_as_the_same_checked_lines(seed: int) -> None:
    rng = random.Random(seed)
    columns = _block_columns(_uniform_block(rng))
    at = rng.randrange(len(columns.records))
    run = columns.records[at : at + 85]
    plain = _encoded(list(run))
    batch = ReadBatch(records=[("e", m) for m in run], payloads=[b"x" * m.size for m in run])
    batch.columns = [(columns, at, at + len(run))]
    encode_batch(batch, v2=True, head=False, only_metadata=False)
    assert batch.encoded.lines is not None
    assert batch.encoded.lines == plain.lines
    assert batch.encoded.headers() == plain.headers()
