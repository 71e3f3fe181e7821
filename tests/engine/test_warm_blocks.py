"""Decoding the next block ahead of a read (``Entry.warm_next_block``): a step at a time into
the block cache, the same records as a plain load, finished by the read that needs it first,
dropped when the block changes meanwhile, and never an error of its own on damage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.entry import WARM_STEP_RECORDS
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord
from appliance.errors import CorruptionError

PER_BLOCK = 3 * WARM_STEP_RECORDS + 10  # a block takes four steps


def reopen(path: Path) -> Storage:
    return Storage.open(EngineOptions(data_path=path))


@pytest.fixture
def cold(tmp_path: Path) -> Iterator[Storage]:
    """Entry ``b/e`` of three full blocks and a fourth, every block on disk and none in
    memory (the storage reopened); labels cycle."""
    path = tmp_path / "data"
    storage = reopen(path)
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=PER_BLOCK))
    total = 3 * PER_BLOCK + 5
    records = [NewRecord(ts, b"x%d" % ts, labels={"n": str(ts % 7)}) for ts in range(1, total + 1)]
    assert not bucket.write_batch("e", records)
    storage.close()
    storage = reopen(path)
    yield storage
    storage.close()


def _entry(storage: Storage):  # type: ignore[no-untyped-def]
    return storage.get_bucket("b").get_entry("e")


def _cached(storage: Storage, entry, block_id: int) -> bool:  # type: ignore[no-untyped-def]
    blocks = entry._blocks  # noqa: SLF001
    return (blocks.uid, block_id) in blocks.ctx.blocks


def _ids(entry) -> list[int]:  # type: ignore[no-untyped-def]
    return list(entry._blocks.ids)  # noqa: SLF001


def _query_of_e(storage: Storage):  # type: ignore[no-untyped-def]
    """A query reading entry ``b/e`` whole."""
    from appliance.query.handle import QuerySpec
    from appliance.query.registry import QueryRegistry

    registry = QueryRegistry()
    return registry.get(registry.create(storage, "b", None, QuerySpec(entries=("e",))), "b", None)


def _read_rest(  # type: ignore[no-untyped-def]
    storage: Storage, query, limits, v2: bool, seen: list[int]
) -> list[int]:
    """``seen`` and the timestamps of the query's batches read on to its end."""
    for _ in range(100):
        batch = query.collect_batch(storage, limits, False, v2)
        if not batch.records:
            break
        seen += [m.timestamp for _, m in batch.records]
    return seen


def test_the_next_block_is_decoded_a_step_at_a_time(cold: Storage) -> None:
    entry = _entry(cold)
    ids = _ids(entry)
    assert len(ids) == 4
    for step in range(4):
        assert not _cached(cold, entry, ids[1])
        entry.warm_next_block(ids[0], deadline=0.0)  # past: one step each call
        if step < 3:
            assert entry._blocks.warming is not None  # noqa: SLF001
    assert _cached(cold, entry, ids[1]) and entry._blocks.warming is None  # noqa: SLF001
    warmed = entry._blocks.ctx.blocks.get((entry._blocks.uid, ids[1]))  # noqa: SLF001
    fresh = entry._blocks.files.load_descriptor(ids[1], "e")[0]  # noqa: SLF001
    assert warmed is not None
    assert [warmed.records[t] for t in warmed.order] == list(fresh.records)
    # Nothing to do once it is in memory, nor after the last block.
    entry.warm_next_block(ids[0], deadline=0.0)
    assert entry._blocks.warming is None  # noqa: SLF001
    entry.warm_next_block(ids[-1], deadline=0.0)
    assert entry._blocks.warming is None  # noqa: SLF001


def test_a_deadline_ahead_decodes_the_whole_block(cold: Storage) -> None:
    entry = _entry(cold)
    entry.warm_next_block(1, deadline=time.perf_counter() + 10)
    assert _cached(cold, entry, _ids(entry)[1])


def test_the_read_that_needs_the_block_finishes_the_decode(cold: Storage) -> None:
    entry = _entry(cold)
    ids = _ids(entry)
    entry.warm_next_block(ids[0], deadline=0.0)
    entry.warm_next_block(ids[0], deadline=0.0)
    assert entry._blocks.warming is not None  # noqa: SLF001 - half decoded
    got = [m.timestamp for m in entry.iter_records(ids[1], ids[2])]
    assert got == list(range(ids[1], ids[2]))
    assert entry._blocks.warming is None  # noqa: SLF001 - finished by the read, not redone
    assert _cached(cold, entry, ids[1])


def test_a_block_changed_meanwhile_is_not_taken(cold: Storage) -> None:
    """A step runs outside the entry lock: a removal may rewrite the block meanwhile. The
    bytes decoded before it must serve no read, whether they come back to be kept (the end
    of a step) or are found by the read (``BlockSet.get``)."""
    entry = _entry(cold)
    ids = _ids(entry)
    blocks = entry._blocks  # noqa: SLF001
    entry.warm_next_block(ids[0], deadline=0.0)
    with entry._lock:  # noqa: SLF001 - as a step in progress holds it
        stepping = blocks.take_warming(ids[1])
    assert stepping is not None
    removed = ids[1] + 5
    assert not entry.remove_records([removed])
    assert ids[1] not in blocks.live  # written back, then (as the LRU may do) evicted
    blocks.ctx.blocks.pop((blocks.uid, ids[1]))
    while not stepping.step(WARM_STEP_RECORDS):
        pass
    with entry._lock:  # noqa: SLF001
        blocks.keep_warming(stepping)  # the end of that step: whole, but of the old bytes
    assert not _cached(cold, entry, ids[1])
    blocks.warming = stepping  # a decoder of the old bytes, left for the read to find
    got = [m.timestamp for m in entry.iter_records(ids[1], ids[2])]
    assert removed not in got and len(got) == PER_BLOCK - 1


def test_damage_is_left_to_the_read(cold: Storage) -> None:
    entry = _entry(cold)
    ids = _ids(entry)
    path = entry._blocks.files.meta_path(ids[1])  # noqa: SLF001
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    entry.warm_next_block(ids[0], deadline=time.perf_counter() + 10)  # no error here
    assert not _cached(cold, entry, ids[1])
    with pytest.raises(CorruptionError):
        list(entry.iter_records(ids[1], ids[2]))


@pytest.mark.parametrize("budget", [0.0, 10.0])
def test_a_batch_collected_ahead_warms_the_next_block(
    cold: Storage, monkeypatch: pytest.MonkeyPatch, budget: float
) -> None:
    """A batch collected ahead names where each entry reads on (``Ahead.warm_from``), and
    ``handle.warm`` decodes ahead from there for the budget (at least one step); what the
    query reads is what it reads without."""
    from appliance.query import handle
    from appliance.query.handle import BatchLimits

    monkeypatch.setattr(handle, "WARM_SECONDS", budget)
    query = _query_of_e(cold)
    entry = _entry(cold)
    ids = _ids(entry)
    limits = BatchLimits(max_records=50)
    seen = [m.timestamp for _, m in query.collect_batch(cold, limits, False, True).records]
    ahead = query.collect_ahead(cold, limits, False, True)
    assert ahead is not None and ahead.batch.more
    assert ahead.warm_from == [(entry, seen[-1] + len(ahead.batch.records) + 1)]
    assert ahead.batch.plain  # one entry read whole: its next blocks get their columns too
    blocks = entry._blocks  # noqa: SLF001
    # Nothing decoded yet: the batch is handed over first, the decode follows it.
    assert not _cached(cold, entry, ids[1]) and blocks.warming is None
    handle.warm(ahead.warm_from, ahead.batch.plain)
    if budget:
        assert _cached(cold, entry, ids[1])
    else:
        assert blocks.warming is not None and blocks.warming.header.block_id == ids[1]
    seen += [m.timestamp for _, m in ahead.batch.records]
    assert _read_rest(cold, query, limits, True, seen) == list(range(1, 3 * PER_BLOCK + 6))


def _run_or_list(entry, start: int):  # type: ignore[no-untyped-def]
    """The first piece a query reading in runs gets from ``start`` on."""
    return next(entry._iter_blocks(start, 2**64 - 1, 85, runs=True))  # noqa: SLF001


def test_a_cached_next_block_gets_its_columns_ready(tmp_path: Path) -> None:
    """Once the next block is cached, the next call builds its columns (with the running
    checksums of its small records) and hands them to ``prepare``, once; the query's first
    batch from it is then a run of them (a block read the first time otherwise goes record
    by record), with the same records. Not for the last block."""
    from appliance.engine.block import Run

    storage = _cold_storage(tmp_path, size=16)
    try:
        entry = _entry(storage)
        ids = _ids(entry)
        assert not isinstance(_run_or_list(entry, ids[2]), Run)  # read the first time
        entry.warm_next_block(ids[0], deadline=time.perf_counter() + 10)
        assert _cached(storage, entry, ids[1])
        block = entry._blocks.ctx.blocks.peek((entry._blocks.uid, ids[1]))  # noqa: SLF001
        assert block is not None and block.built_columns() is None
        prepared: list[object] = []
        entry.warm_next_block(ids[0], deadline=0.0, prepare=prepared.append)
        assert not prepared and block.built_columns() is None  # not a reader of runs
        entry.warm_next_block(ids[0], deadline=0.0, runs=True, prepare=prepared.append)
        columns = block.built_columns()
        assert columns is not None and prepared == [columns]
        assert columns._chain is not None  # noqa: SLF001 - small records: chained ahead
        entry.warm_next_block(ids[0], deadline=0.0, runs=True, prepare=prepared.append)
        assert prepared == [columns]  # ready already: nothing more to do
        first = _run_or_list(entry, ids[1])
        assert isinstance(first, Run) and first.columns is columns
        assert [r.timestamp for r in first] == block.order[: len(first)]
        # The last block (writers keep changing it) gets no columns ahead.
        entry.warm_next_block(ids[-2], deadline=time.perf_counter() + 10)
        assert _cached(storage, entry, ids[-1])
        entry.warm_next_block(ids[-2], deadline=0.0, runs=True, prepare=prepared.append)
        last = entry._blocks.ctx.blocks.peek((entry._blocks.uid, ids[-1]))  # noqa: SLF001
        assert prepared == [columns] and last is not None and last.built_columns() is None
    finally:
        storage.close()


def test_large_records_get_columns_but_no_chain(tmp_path: Path) -> None:
    """Records of 4 KiB and more are checked one by one: no running checksums ahead."""
    storage = _cold_storage(tmp_path, size=5000)
    try:
        entry = _entry(storage)
        ids = _ids(entry)
        entry.warm_next_block(ids[0], deadline=time.perf_counter() + 10)
        prepared: list[object] = []
        entry.warm_next_block(ids[0], deadline=0.0, runs=True, prepare=prepared.append)
        assert len(prepared) == 1 and prepared[0]._chain is None  # type: ignore[attr-defined]
    finally:
        storage.close()


def _cold_storage(tmp_path: Path, size: int) -> Storage:
    """Entry ``b/e`` of four blocks of 8 records of ``size`` bytes, none in memory."""
    path = tmp_path / "data"
    storage = reopen(path)
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=8))
    records = [NewRecord(ts, bytes([ts % 251]) * size) for ts in range(1, 33)]
    assert not bucket.write_batch("e", records)
    storage.close()
    return reopen(path)


@pytest.mark.parametrize("v2", [True, False])
def test_the_next_block_is_made_ready_for_the_encoder(cold: Storage, v2: bool) -> None:
    """What the server runs after handing over a batch collected ahead
    (``queries.collect_ahead``'s second part) leaves the next block cached with its columns
    and what the batch encoder and the metadata limit derive once per block; the batches
    read afterwards are those of a query that never warmed."""
    from appliance.api.queries import collect_ahead
    from appliance.query.handle import BatchLimits

    query = _query_of_e(cold)
    entry = _entry(cold)
    ids = _ids(entry)
    limits = BatchLimits(max_records=50)
    seen = [m.timestamp for _, m in query.collect_batch(cold, limits, False, v2).records]
    ahead, then = collect_ahead(query, cold, limits, False, v2, None)
    assert ahead is not None and ahead.batch.encoded is not None and then is not None
    seen += [m.timestamp for _, m in ahead.batch.records]
    for _ in range(10):  # a step a call, past the deadline of a slow machine
        then()
    block = entry._blocks.ctx.blocks.peek((entry._blocks.uid, ids[1]))  # noqa: SLF001
    assert block is not None
    columns = block.built_columns()
    assert columns is not None
    assert set(columns.memo) == {"header_costs", "v2" if v2 else "v1"}
    assert _read_rest(cold, query, limits, v2, seen) == list(range(1, 3 * PER_BLOCK + 6))
