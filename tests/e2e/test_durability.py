"""Real process: SIGKILL under write load loses no acknowledged record; SIGTERM drains; big records stream."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration

GIB = 1024**3
MIB = 1024**2


def payload(ts: int) -> bytes:
    """Deterministic payload for a timestamp (sizes from 0 B to ~200 KiB)."""
    size = (ts * 7919) % (200 * 1024) if ts % 5 else 0
    return hashlib.sha256(str(ts).encode()).digest() * (size // 32) + b"x" * (size % 32)


def write_until_stopped(url: str, start_ts: int, acked: list[int], stop: threading.Event) -> None:
    """Write records one by one, remembering each timestamp the server acknowledged with 200."""
    ts = start_ts
    with httpx.Client(base_url=url, timeout=5) as http:
        while not stop.is_set() and ts < start_ts + 100_000:
            try:
                r = http.post(f"/api/v1/b/crash/e?ts={ts}", content=payload(ts), headers={"x-reduct-label-n": str(ts)})
            except httpx.HTTPError:
                return  # the server died mid-request: that record was never acknowledged
            if r.status_code == 200:
                acked.append(ts)
            ts += 1


def test_sigkill_under_write_load_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(1234)
    data = tmp_path / "data"
    acked: list[int] = []
    server = ServerProcess(data, env={"RS_ENGINE_COMPACTION_INTERVAL": "200ms"}).start()
    httpx.post(server.url + "/api/v1/b/crash").raise_for_status()
    for round_no in range(5):
        stop = threading.Event()
        writer = threading.Thread(target=write_until_stopped, args=(server.url, 1 + round_no * 100_000, acked, stop))
        writer.start()
        time.sleep(rng.uniform(0.3, 1.0))
        server.kill()
        stop.set()
        writer.join(timeout=10)
        server = ServerProcess(data, env={"RS_ENGINE_COMPACTION_INTERVAL": "200ms"}, port=server.port).start()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for ts in acked:
                r = http.get(f"/api/v1/b/crash/e?ts={ts}")
                assert r.status_code == 200, (round_no, ts, r.status_code, r.headers.get("x-reduct-error"))
                assert r.content == payload(ts)
                assert r.headers["x-reduct-label-n"] == str(ts)
    assert len(acked) > 50, "the writer barely wrote anything: the test proved nothing"
    server.stop()


def test_sigterm_drains_and_restart_serves_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/term").raise_for_status()
        for ts in range(1, 101):
            http.post(f"/api/v1/b/term/e?ts={ts}", content=payload(ts)).raise_for_status()
    assert server.stop() == 0
    assert "stopped" in server.logs()
    server = ServerProcess(data, port=server.port).start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for ts in range(1, 101):
            assert http.get(f"/api/v1/b/term/e?ts={ts}").content == payload(ts)
    server.stop()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_one_gib_record_streams_through_with_small_server_memory(server: ServerProcess) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def body():  # type: ignore[no-untyped-def]
        for _ in range(GIB // MIB):
            digest.update(chunk)
            yield chunk

    with httpx.Client(base_url=server.url, timeout=120) as http:
        http.post("/api/v1/b/big").raise_for_status()
        r = http.post("/api/v1/b/big/e?ts=1", content=body(), headers={"content-length": str(GIB)})
        assert r.status_code == 200, r.headers.get("x-reduct-error")
        readback = hashlib.sha256()
        size = 0
        with http.stream("GET", "/api/v1/b/big/e?ts=1") as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == GIB
            for part in response.iter_bytes(MIB):
                readback.update(part)
                size += len(part)
    assert size == GIB
    assert readback.hexdigest() == digest.hexdigest()
    assert server.proc is not None
    peak = peak_rss_bytes(server.proc.pid)
    assert peak < 200 * MIB, f"server peak RSS {peak / MIB:.0f} MiB"


@pytest.mark.slow
def test_batch_with_a_huge_record_streams_through_with_small_server_memory(
    server: ServerProcess,
) -> None:
    """A batch body far above the in-memory limit: its 512 MiB record is written through the
    pipeline while it arrives, never held whole."""
    size = 512 * MIB
    chunk = bytes(range(256)) * 4096  # 1 MiB
    tail = b"tail"

    def body():  # type: ignore[no-untyped-def]
        for _ in range(size // MIB):
            yield chunk
        yield tail

    headers = {
        "x-reduct-time-1": f"{size},application/octet-stream",
        "x-reduct-time-2": f"{len(tail)},text/plain",
        "content-length": str(size + len(tail)),
    }
    with httpx.Client(base_url=server.url, timeout=120) as http:
        http.post("/api/v1/b/bigbatch").raise_for_status()
        r = http.post("/api/v1/b/bigbatch/e/batch", content=body(), headers=headers)
        assert r.status_code == 200, r.headers.get("x-reduct-error")
        assert not [k for k in r.headers if k.startswith("x-reduct-error-")], r.headers
        head = http.head("/api/v1/b/bigbatch/e?ts=1")
        assert head.status_code == 200 and int(head.headers["content-length"]) == size
        readback = hashlib.sha256()
        with http.stream("GET", "/api/v1/b/bigbatch/e?ts=1") as response:
            assert response.status_code == 200
            for part in response.iter_bytes(MIB):
                readback.update(part)
        expected = hashlib.sha256()
        for _ in range(size // MIB):
            expected.update(chunk)
        assert readback.hexdigest() == expected.hexdigest()
        assert http.get("/api/v1/b/bigbatch/e?ts=2").content == tail
    assert server.proc is not None
    peak = peak_rss_bytes(server.proc.pid)
    assert peak < 200 * MIB, f"server peak RSS {peak / MIB:.0f} MiB"
