"""The sender's batching: a full batch goes at once, a short tail after a linger; a batch is
read with one bulk lookup, or record by record when that fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.engine import Entry, Storage
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord
from appliance.errors import InternalError
from appliance.replication.models import ReplicationSettings
from appliance.replication.task import LINGER_SECONDS, ReplicationTask, TaskOptions
from appliance.replication.txlog import WRITE


async def _run(fn, *args):  # noqa: ANN001, ANN202 - the task's runner, inline
    return fn(*args)


def make_task(tmp_path: Path) -> ReplicationTask:
    settings = ReplicationSettings.from_json(
        {"src_bucket": "a", "dst_bucket": "b", "dst_host": "http://127.0.0.1:8383"}
    )
    return ReplicationTask("t", settings, TaskOptions(data_path=tmp_path),
                           storage=lambda: None, run=_run)


def test_full_batches_go_at_once_a_short_tail_after_the_linger(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    assert not task._due("e", 0, 85, 8_000_000)  # noqa: SLF001 - nothing pending
    assert task._linger is None  # noqa: SLF001
    assert task._due("e", 85, 85, 8_000_000)  # noqa: SLF001 - full by records
    started = time.monotonic()
    assert not task._due("e", 10, 85, 8_000_000)  # noqa: SLF001 - a short tail waits
    assert task._linger is not None and 0 < task._linger <= LINGER_SECONDS + 1e-6  # noqa: SLF001
    assert not task._due("e", 30, 85, 8_000_000)  # noqa: SLF001 - still within the linger
    time.sleep(LINGER_SECONDS - (time.monotonic() - started) + 0.005)
    assert task._due("e", 30, 85, 8_000_000)  # noqa: SLF001 - waited long enough: goes alone
    # With big records a batch is full by bytes long before 85 of them.
    task._record_size["big"] = 1_000_000  # noqa: SLF001
    assert task._due("big", 8, 85, 8_000_000)  # noqa: SLF001
    assert not task._due("big", 7, 85, 8_000_000)  # noqa: SLF001


def test_prepare_reads_a_batch_and_counts_absent_records_also_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        bucket = storage.create_bucket("a", BucketSettings())
        bucket.write_batch("e", [NewRecord(ts, bytes([ts]) * 10, "text/plain", {"n": str(ts)})
                                 for ts in range(1, 6)])
        settings = ReplicationSettings.from_json(
            {"src_bucket": "a", "dst_bucket": "b", "dst_host": "http://127.0.0.1:8383"}
        )
        task = ReplicationTask("t", settings, TaskOptions(data_path=tmp_path),
                               storage=lambda: storage, run=_run)
        task.notify("e", [(WRITE, ts, {}) for ts in (1, 2, 99, 3, 4, 5)])  # 99: never written
        txlog = task._logs["e"]  # noqa: SLF001

        def check() -> None:
            batch = task._prepare(txlog, "e", [], 0, 85, 8_000_000)  # noqa: SLF001
            assert batch.consumed == 6
            assert [m.timestamp for m in batch.writes] == [1, 2, 3, 4, 5]
            assert batch.payloads == {ts: bytes([ts]) * 10 for ts in range(1, 6)}
            assert batch.size == 50
            assert [code for code, _ in batch.failures] == [404]

        check()  # the bulk lookup

        def unreadable(self: object, timestamps: object) -> None:
            raise InternalError("a block cannot be read")

        monkeypatch.setattr(Entry, "records_at", unreadable)
        check()  # the same batch from single lookups
        task.remove_logs()
    finally:
        storage.close()
