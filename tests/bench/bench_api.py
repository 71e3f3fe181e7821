"""HTTP API benchmark with the real reduct-py client over loopback.

Usage: ``python tests/bench/bench_api.py [--seconds 3] [--quick]``

Measures, for 1 KiB, 100 KiB and 1 MiB records: single writes, batched writes and batched reads
(records/s and MB/s) against ``python -m appliance``, beside two ceilings measured in the same
run: the same reduct-py single writes against a Quart+Hypercorn app whose handlers do nothing
(``empty_app.py``), and raw sequential disk writes in the same folder, measured before and again
after the cases (on a VM the first touch of page-cache memory can cost far more than a rewrite
of memory the guest used before, so the two may differ a lot). Every loop is bounded by a record
count and a time budget. Client and server share this machine's cores. Both servers run on the
event loop ``appliance.server.run`` picks (uvloop when installed; ``APPLIANCE_EVENT_LOOP=asyncio``
forces the standard loop for both).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reduct import Batch, Bucket, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
SIZES = {"1 KiB": KIB, "100 KiB": 100 * KIB, "1 MiB": MIB}
BATCH_BYTES = 8_000_000
BATCH_RECORDS_MAX = 1000


def raw_disk_mb_per_s(folder: Path, total: int = 256 * MIB) -> float:
    """Sequential 1 MiB writes of ``total`` bytes to one file (no fsync, like the server)."""
    chunk = os.urandom(MIB)
    path = folder / "raw.bin"
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(total // MIB):
            f.write(chunk)
    elapsed = time.perf_counter() - start
    path.unlink()
    return total / elapsed / 1e6


async def single_writes(
    bucket: Bucket, entry: str, size: int, seconds: float, limit: int
) -> tuple[int, float]:
    """Sequential single-record writes until the time or count budget runs out."""
    data = os.urandom(size)
    ts = 1_000_000
    count = 0
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        await bucket.write(entry, data, timestamp=ts + count, labels={"n": str(count % 10)})
        count += 1
    return count, time.perf_counter() - start


async def batched_writes(
    bucket: Bucket, entry: str, size: int, seconds: float, limit: int
) -> tuple[int, float]:
    """Batches of up to 8 MB / 1000 records until the time or count budget runs out."""
    data = os.urandom(size)
    per_batch = max(1, min(BATCH_RECORDS_MAX, BATCH_BYTES // size))
    ts = 1_000_000
    count = 0
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        batch = Batch()
        for i in range(per_batch):
            batch.add(ts + count + i, data, labels={"n": str(i % 10)})
        errors = await bucket.write_batch(entry, batch)
        assert not errors, errors
        count += per_batch
    return count, time.perf_counter() - start


async def batched_reads(bucket: Bucket, entry: str, limit: int) -> tuple[int, float]:
    """Read back every record of ``entry`` through a query (batched reads)."""
    count = 0
    start = time.perf_counter()
    async for record in bucket.query(entry):
        await record.read_all()
        count += 1
        if count >= limit:
            break
    return count, time.perf_counter() - start


def row(name: str, size: int, count: int, elapsed: float) -> tuple[str, str, str, str]:
    """A table row: case, records, records/s, MB/s."""
    rate = count / elapsed if elapsed else 0.0
    return name, str(count), f"{rate:,.0f}", f"{rate * size / 1e6:,.1f}"


async def run(
    args: argparse.Namespace, url: str, ceiling_url: str
) -> list[tuple[str, str, str, str]]:
    """Every case against the appliance, then the empty-handler ceiling."""
    rows = []
    limit = 2_000 if args.quick else 200_000
    async with Client(url, timeout=60) as client:
        for label, size in SIZES.items():
            bucket = await client.create_bucket(f"bench{size}", exist_ok=True)
            n, t = await single_writes(bucket, "single", size, args.seconds, limit)
            rows.append(row(f"{label} single writes", size, n, t))
            n, t = await batched_writes(bucket, "batched", size, args.seconds, limit)
            rows.append(row(f"{label} batched writes", size, n, t))
            n, t = await batched_reads(bucket, "batched", limit)
            rows.append(row(f"{label} batched reads", size, n, t))
    async with Client(ceiling_url, timeout=60) as client:
        for label, size in SIZES.items():
            bucket = Bucket("b", client._http)  # the empty app needs no bucket
            n, t = await single_writes(bucket, "e", size, args.seconds, limit)
            rows.append(row(f"ceiling: {label} single writes, empty handler", size, n, t))
    return rows


def main() -> None:
    """Start both servers, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per case")
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        folder = Path(tmp)
        disk = raw_disk_mb_per_s(folder)
        server = ServerProcess(folder / "data").start()
        port = free_port()
        empty = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("empty_app.py")), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ceiling = ServerProcess(folder / "unused", port=port)
            ceiling.proc = empty
            ceiling.wait_ready(path="/api/v1/alive")
            rows = asyncio.run(run(args, server.url, ceiling.url))
            disk_after = raw_disk_mb_per_s(folder)
        finally:
            empty.terminate()
            empty.wait(timeout=10)
            server.stop()
    table = Table(title=f"HTTP API benchmark (reduct-py, loopback, {os.cpu_count()} cores)")
    for column in ("case", "records", "records/s", "MB/s"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for r in rows:
        table.add_row(*r)
    table.add_row("ceiling: raw sequential disk writes (1 MiB chunks)", "-", "-", f"{disk:,.1f}")
    table.add_row("  the same, measured again after all cases", "-", "-", f"{disk_after:,.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
