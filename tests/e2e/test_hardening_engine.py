"""Real process, issue 8 (engine side): bounded open files, atomic removal across SIGKILL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.e2e.test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPEN_FILES = 1024
BATCH_RECORDS = 1_000
BATCHES = 10


def _alive_within_one_second(url: str, stop: threading.Event, slow: list[float]) -> None:
    """Poll /alive while the batches run; remember every answer slower than 1 s (or none)."""
    with httpx.Client(base_url=url, timeout=5) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = http.get("/api/v1/alive").status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.monotonic() - started
            if not ok or took > 1.0:
                slow.append(took)
            time.sleep(0.05)


def test_tiny_blocks_batch_with_1024_open_files_stores_everything(tmp_path: Path) -> None:
    """10,000 one-byte records into 10,000 one-record blocks under ``ulimit -n 1024``: each
    batch answers the truth per record, the server stays alive, and ``check`` is clean."""
    server = ServerProcess(tmp_path / "data", open_files=OPEN_FILES).start()
    stop = threading.Event()
    slow: list[float] = []
    try:
        http = httpx.Client(base_url=server.url, timeout=60)
        r = http.post("/api/v1/b/tiny", json={"max_block_records": 1})
        assert r.status_code == 200, r.headers
        poller = threading.Thread(target=_alive_within_one_second, args=(server.url, stop, slow))
        poller.start()
        reported_failed: set[int] = set()
        for batch in range(BATCHES):
            first = 1 + batch * BATCH_RECORDS
            stamps = range(first, first + BATCH_RECORDS)
            headers = {f"x-reduct-time-{ts}": "1,application/octet-stream" for ts in stamps}
            r = http.post("/api/v1/b/tiny/e/batch", content=b"x" * BATCH_RECORDS, headers=headers)
            assert r.status_code == 200, (r.status_code, r.headers.get("x-reduct-error"))
            reported_failed |= {
                int(name.removeprefix("x-reduct-error-"))
                for name in r.headers
                if name.startswith("x-reduct-error-")
            }
        stop.set()
        poller.join(timeout=10)
        assert http.get("/api/v1/alive").status_code == 200
        assert reported_failed == set(), "with a bounded fd cache no record should fail"
        info = http.get("/api/v1/b/tiny").json()
        assert info["entries"][0]["record_count"] == BATCH_RECORDS * BATCHES
        assert not slow, f"/alive was slow or down: {slow}"
        http.close()
    finally:
        stop.set()
        server.stop()
    result = run_cli("check", "--data", str(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr
