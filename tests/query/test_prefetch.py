"""A query batch collected ahead of its request (``Query.collect_ahead``): served only while
no entry it read lost or relabelled a record, otherwise undone so the request collects
exactly what it would have without the prefetch; and the budget that bounds its memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.engine import Storage
from appliance.engine.models import EngineOptions, NewRecord
from appliance.query.handle import BatchLimits, QuerySpec
from appliance.query.registry import PrefetchBudget, QueryRegistry

LIMITS = BatchLimits(max_records=10)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """An engine with bucket ``b``, entry ``e``: 50 records, ts 1..50, label n = ts % 3."""
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    bucket = storage.create_bucket("b")
    records = [NewRecord(ts, b"x%d" % ts, labels={"n": str(ts % 3)}) for ts in range(1, 51)]
    assert not bucket.write_batch("e", records)
    yield storage
    storage.close()


def _query(storage: Storage, **spec: Any) -> Any:
    registry = QueryRegistry()
    qid = registry.create(storage, "b", None, QuerySpec(entries=("e",), **spec))
    return registry.get(qid, "b", None)


def _stamps(batch: Any) -> list[int]:
    return [meta.timestamp for _, meta in batch.records]


def _read_all(storage: Storage, query: Any) -> list[int]:
    seen: list[int] = []
    while True:
        batch = query.collect_batch(storage, LIMITS, False, True)
        seen += _stamps(batch)
        if not batch.records:
            return seen


def test_unchanged_ahead_is_the_next_batch(storage: Storage) -> None:
    query = _query(storage)
    first = query.collect_batch(storage, LIMITS, False, True)
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    assert _stamps(first) == list(range(1, 11))
    assert ahead.unchanged()
    assert _stamps(ahead.batch) == list(range(11, 21))
    assert ahead.batch.payloads[0] == b"x11"
    assert ahead.batch.more and not ahead.batch.last
    # Records written meanwhile (after the entry's end) do not invalidate it.
    storage.get_bucket("b").write_batch("e", [NewRecord(99, b"late")])
    assert ahead.unchanged()
    assert _read_all(storage, query) == list(range(21, 51))


def test_removal_meanwhile_undoes_the_ahead_batch(storage: Storage) -> None:
    query = _query(storage)
    query.collect_batch(storage, LIMITS, False, True)
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    storage.get_bucket("b").get_entry("e").remove_records([12, 13])
    assert not ahead.unchanged()
    batch = query.collect_batch(storage, LIMITS, False, True, undo=ahead)
    # What a batch collected now holds: the removed records gone, the next ones in.
    assert _stamps(batch) == [11, *range(14, 23)]
    assert batch.payloads[1] == b"x14"
    assert _read_all(storage, query) == list(range(23, 51))


def test_label_update_meanwhile_is_seen(storage: Storage) -> None:
    query = _query(storage, when={"&n": {"$eq": 1}})
    first = query.collect_batch(storage, LIMITS, False, True)
    assert _stamps(first) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    assert _stamps(ahead.batch)[0] == 31
    storage.get_bucket("b").get_entry("e").update_labels(30, {"n": "1"}, [])
    storage.get_bucket("b").get_entry("e").update_labels(31, {"n": "2"}, [])
    assert not ahead.unchanged()
    batch = query.collect_batch(storage, LIMITS, False, True, undo=ahead)
    assert _stamps(batch) == [30, 34, 37, 40, 43, 46, 49]
    assert dict(batch.records[0][1].labels) == {"n": "1"}


def test_undo_restores_condition_counters(storage: Storage) -> None:
    """``$limit`` counts records it let through: an undone batch must not count."""
    query = _query(storage, when={"$limit": 15})
    assert len(query.collect_batch(storage, LIMITS, False, True).records) == 10
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    assert _stamps(ahead.batch) == list(range(11, 16))
    storage.get_bucket("b").get_entry("e").remove_records([11])
    batch = query.collect_batch(storage, LIMITS, False, True, undo=ahead)
    assert _stamps(batch) == list(range(12, 17))  # five more, not zero
    assert batch.last


def test_removed_entry_undoes(storage: Storage) -> None:
    query = _query(storage)
    query.collect_batch(storage, LIMITS, False, True)
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    storage.get_bucket("b").remove_entry("e")
    assert not ahead.unchanged()


def test_fifo_block_removal_counts_as_a_change(storage: Storage) -> None:
    query = _query(storage)
    ahead = query.collect_ahead(storage, LIMITS, False, True)
    assert storage.get_bucket("b").get_entry("e").remove_oldest_block() > 0
    assert not ahead.unchanged()


def test_budget_is_given_back_when_the_holder_goes() -> None:
    budget = PrefetchBudget(100)
    held = budget.hold(60)
    assert held is not None and budget.used == 60
    assert budget.hold(50) is None  # would pass the limit
    del held
    assert budget.used == 0
    assert budget.hold(100) is not None


def test_ahead_names_where_to_warm_and_how(storage: Storage) -> None:
    """A batch collected ahead names where its entry reads on; only a query that reads the
    entry whole (in runs of columns) has its next blocks' columns built ahead."""
    plain = _query(storage)
    plain.collect_batch(storage, LIMITS, False, True)
    ahead = plain.collect_ahead(storage, LIMITS, False, True)
    entry = storage.get_bucket("b").get_entry("e")
    assert ahead.warm_from == [(entry, 21)] and ahead.batch.plain
    filtered = _query(storage, when={"&n": {"$eq": 1}})
    five = BatchLimits(max_records=5)
    filtered.collect_batch(storage, five, False, True)
    ahead = filtered.collect_ahead(storage, five, False, True)
    assert ahead.batch.more and ahead.warm_from and not ahead.batch.plain
    # The last batch leaves nothing to warm.
    last = _query(storage, start=41)
    ahead = last.collect_ahead(storage, BatchLimits(max_records=100), False, True)
    assert not ahead.batch.more and ahead.warm_from == []
