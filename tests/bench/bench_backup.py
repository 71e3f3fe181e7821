"""Backup benchmark: the write pause, backup and restore time, incremental cost.

Usage: ``python tests/bench/bench_backup.py [--gib 1] [--records 100000]``

Two data sets in a real ``python -m appliance`` process, filled with reduct-py batches: ``--gib``
GiB of 1 MiB records, and ``--records`` records of 1 KiB (many blocks and files). For each, a
reduct-py writer writes 1 KiB records back to back while ``POST /api/v1/backups`` runs; the
table shows the pause the server measured (gate closed → links made → gate open), the longest
write latency the concurrent writer saw during the backup (what a client experiences), the
median one (for comparison), the backup's wall time, the second backup's cost after a known
delta, the time of an offline restore of the first backup (the RTO of a snapshot restore, before
the server starts), and of a point-in-time restore to an instant after a further 16.8 MB of
journaled writes (newest backup + archived journal). Continuous archiving is on
(``RS_BACKUP_ARCHIVE_INTERVAL=1s``), so every write is also journaled. Every loop is bounded by
count and time; the temp folder is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from reduct import Batch, BucketSettings, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.backup import pitr, restore  # noqa: E402
from appliance.backup.targets import FolderTarget  # noqa: E402
from tests.e2e.server import ServerProcess  # noqa: E402

KIB = 1024
MIB = 1024 * KIB


async def fill(url: str, bucket: str, size: int, count: int) -> None:
    """``count`` records of ``size`` bytes in batches of at most 8 MB / 1000 records."""
    payload = os.urandom(size)
    per_batch = max(1, min(1000, 8_000_000 // size))
    async with Client(url, timeout=300) as client:
        b = await client.create_bucket(bucket, BucketSettings(), exist_ok=True)
        ts = 1
        while ts <= count:
            batch = Batch()
            for _ in range(min(per_batch, count - ts + 1)):
                batch.add(ts, payload)
                ts += 1
            await b.write_batch("data", batch)


async def writer(url: str, stop: asyncio.Event, window: list[float], marks: dict[str, float]) -> None:
    """1 KiB writes back to back; latencies of writes that overlap the backup go to ``window``."""
    async with Client(url) as client:
        b = await client.create_bucket("live", exist_ok=True)
        ts = 1
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            await b.write("w", os.urandom(KIB), timestamp=ts)
            ended = time.perf_counter()
            if "start" in marks and (ended >= marks["start"]) and started <= marks.get("end", 1e18):
                window.append(ended - started)
            ts += 1


async def measure(url: str, target: Path) -> tuple[dict[str, object], float, float, float]:
    """One backup under write load: (answer, wall seconds, max and median writer latency)."""
    stop = asyncio.Event()
    window: list[float] = []
    marks: dict[str, float] = {}
    task = asyncio.create_task(writer(url, stop, window, marks))
    await asyncio.sleep(1.0)
    marks["start"] = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(f"{url}/api/v1/backups", json={"target": str(target)})
    marks["end"] = time.perf_counter()
    await asyncio.sleep(0.3)
    stop.set()
    await task
    r.raise_for_status()
    return r.json(), marks["end"] - marks["start"], max(window), statistics.median(window)


async def case(root: Path, label: str, size: int, count: int, table: Table) -> None:
    """Fill, back up twice (with a delta between), restore; one table row."""
    data = root / f"data-{label}"
    target = root / f"backups-{label}"
    env = {"RS_BACKUP_TARGET": str(target), "RS_BACKUP_ARCHIVE_INTERVAL": "1s"}
    server = ServerProcess(data, env=env).start()
    try:
        started = time.perf_counter()
        await fill(server.url, "bench", size, count)
        fill_s = time.perf_counter() - started
        first, wall, worst, median = await measure(server.url, target)
        delta = 16 * MIB
        await fill_delta(server.url, delta)
        second = httpx.post(f"{server.url}/api/v1/backups", json={"target": str(target)}, timeout=600).json()
        await fill_delta(server.url, delta, start=2 * 10**15)
        at_us = time.time_ns() // 1000
        await asyncio.sleep(2.5)  # > the archive interval: the journal is shipped
    finally:
        server.stop()
    restored = root / f"restored-{label}"
    started = time.perf_counter()
    restore.restore(target, first["id"], restored)
    restore_s = time.perf_counter() - started
    shutil.rmtree(restored)
    started = time.perf_counter()
    result = pitr.restore_to_time(FolderTarget(target), at_us, restored)
    pitr_s = time.perf_counter() - started
    table.add_row(
        label,
        f"{first['bytes'] / 1e6:.0f} MB / {first['files']}",
        f"{fill_s:.1f}",
        f"{first['pause_ms']:.1f}",
        f"{worst * 1000:.1f} (median {median * 1000:.1f})",
        f"{wall:.2f}",
        f"{delta / 1e6:.1f} MB → {second['new_bytes'] / 1e6:.1f} MB",
        f"{restore_s:.2f}",
        f"{pitr_s:.2f} ({result.applied} changes)",
    )
    for folder in (data, target, restored):
        shutil.rmtree(folder, ignore_errors=True)


async def fill_delta(url: str, total: int, start: int = 10**15) -> None:
    """``total`` bytes of new 256 KiB records in a fresh entry."""
    payload = os.urandom(256 * KIB)
    async with Client(url, timeout=300) as client:
        b = await client.get_bucket("bench")
        ts = start
        for _ in range(total // len(payload)):
            await b.write("delta", payload, timestamp=ts)
            ts += 1


async def main() -> None:
    """Run both cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    table = Table(title="online backup (folder target, same file system)")
    for column in (
        "data set", "backup size / files", "fill s", "pause ms (server)",
        "longest write ms during backup", "backup s", "2nd backup: delta → new", "restore s",
        "PITR restore s (2nd backup + 16.8 MB journal)",
    ):
        table.add_column(column)
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        await case(root, f"{args.gib:g} GiB of 1 MiB records", MIB, int(args.gib * 1024), table)
        await case(root, f"{args.records} records of 1 KiB", KIB, args.records, table)
    Console(width=200).print(table)


if __name__ == "__main__":
    asyncio.run(main())
