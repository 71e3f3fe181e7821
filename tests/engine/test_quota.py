"""Quota: the admission checks of one bucket, driven without a bucket (fake entries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.engine.context import EngineContext
from appliance.engine.models import BucketSettings, EngineOptions, QuotaType
from appliance.engine.quota import Quota
from appliance.errors import BadRequest, InsufficientStorage, InternalError

GIB = 1024**3


class FakeEntry:
    """Blocks of ``size`` bytes, oldest first; the oldest record is the first block's."""

    def __init__(self, oldest_record: int, blocks: list[int]) -> None:
        self.oldest_record = oldest_record
        self.blocks = blocks

    def remove_oldest_block(self) -> bool:
        if not self.blocks:
            return False
        self.blocks.pop(0)
        return True


def quota(tmp_path: Path, entries: list[FakeEntry], **options: Any) -> Quota:
    ctx = EngineContext.create(EngineOptions(data_path=tmp_path, **options))
    return Quota(ctx, "q", lambda: sum(sum(e.blocks) for e in entries), lambda: entries)


def test_quota_guard_locks_only_when_a_quota_is_enforced(tmp_path: Path) -> None:
    q = quota(tmp_path, [])
    unlimited = q.guard(BucketSettings())
    assert unlimited is q.guard(BucketSettings())  # one shared no-op, nothing serialised
    hard = q.guard(BucketSettings(quota_type=QuotaType.HARD, quota_size=1))
    assert hard is q.guard(BucketSettings(quota_type=QuotaType.FIFO, quota_size=1))
    assert hard is not unlimited


def test_quota_hard_refuses_and_fifo_evicts_oldest_first(tmp_path: Path) -> None:
    old, new = FakeEntry(1, [40, 40]), FakeEntry(5, [40])
    q = quota(tmp_path, [new, old])
    with pytest.raises(BadRequest, match="Quota of 'q' exceeded"):
        q.admit(BucketSettings(quota_type=QuotaType.HARD, quota_size=130), 20, 0, GIB)
    fifo = BucketSettings(quota_type=QuotaType.FIFO, quota_size=130)
    q.admit(fifo, 20, 0, GIB)
    assert (old.blocks, new.blocks) == ([40], [40])  # one block of the oldest entry went
    with pytest.raises(InternalError, match="Failed to keep quota of 'q'"):
        q.admit(fifo, 200, 0, GIB)


def test_quota_free_disk_and_storage_limit(tmp_path: Path) -> None:
    q = quota(tmp_path, [], min_free_space=100, max_storage_size=50)
    with pytest.raises(InsufficientStorage):
        q.admit(BucketSettings(), 10, 0, 105)
    q.check_storage_limit(50, 0)
    with pytest.raises(InternalError, match="storage limit exceeded"):
        q.check_storage_limit(40, 11)
