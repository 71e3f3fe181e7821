"""``appliance.remote.restore_mirror``: retries with back-off while S3 is unreachable at
startup, one log line per distinct failure, no botocore text in what it records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.engine.mirror import Mirror
from appliance.remote import MAX_RETRY_SECONDS, restore_mirror
from backends.errors import BackendUnavailable
from backends.memory import MemoryBackend


class DownFor(MemoryBackend):
    """``init`` fails the first ``failures`` times (S3 unreachable), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def init(self) -> None:
        """Fail while failures are left."""
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailable("check bucket failed: connection refused", backend="s3://b/")
        super().init()


def test_restore_backs_off_logs_once_and_then_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = Mirror(DownFor(8), tmp_path, cache_size=10**6, sync_interval=60)
    sleeps: list[float] = []
    with caplog.at_level(logging.ERROR, logger="appliance.remote"):
        assert restore_mirror(mirror, lambda: False, sleeps.append) is True
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_RETRY_SECONDS, MAX_RETRY_SECONDS,
                      MAX_RETRY_SECONDS]
    lines = [r.getMessage() for r in caplog.records if "unreachable at startup" in r.getMessage()]
    assert len(lines) == 1 and "connection refused" in lines[0]
    assert mirror.last_error == "startup: BackendUnavailable"
    mirror.close()


def test_restore_gives_up_when_the_service_stops(tmp_path: Path) -> None:
    mirror = Mirror(DownFor(10**6), tmp_path, cache_size=10**6, sync_interval=60)
    sleeps: list[float] = []
    assert restore_mirror(mirror, lambda: len(sleeps) >= 3, sleeps.append) is False
    assert len(sleeps) == 3
