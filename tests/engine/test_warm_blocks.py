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
    """``Query.collect_ahead`` decodes ahead for the budget (at least one step); what the
    query reads is what it reads without."""
    from appliance.query import handle
    from appliance.query.handle import BatchLimits, QuerySpec
    from appliance.query.registry import QueryRegistry

    monkeypatch.setattr(handle, "WARM_SECONDS", budget)
    registry = QueryRegistry()
    query = registry.get(registry.create(cold, "b", None, QuerySpec(entries=("e",))), "b", None)
    entry = _entry(cold)
    ids = _ids(entry)
    limits = BatchLimits(max_records=50)
    seen = [m.timestamp for _, m in query.collect_batch(cold, limits, False, True).records]
    ahead = query.collect_ahead(cold, limits, False, True)
    assert ahead is not None and ahead.batch.more
    blocks = entry._blocks  # noqa: SLF001
    if budget:
        assert _cached(cold, entry, ids[1])
    else:
        assert blocks.warming is not None and blocks.warming.header.block_id == ids[1]
    seen += [m.timestamp for _, m in ahead.batch.records]
    for _ in range(100):
        batch = query.collect_batch(cold, limits, False, True)
        if not batch.records:
            break
        seen += [m.timestamp for _, m in batch.records]
    assert seen == list(range(1, 3 * PER_BLOCK + 6))
