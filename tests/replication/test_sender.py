"""The sender's batching decision: a full batch goes at once, a short tail after a linger."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.replication.models import ReplicationSettings
from appliance.replication.task import LINGER_SECONDS, ReplicationTask, TaskOptions


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
