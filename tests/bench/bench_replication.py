"""Replication benchmark: two real processes on loopback, driven by reduct-py.

Usage: ``python tests/bench/bench_replication.py [--seconds 5] [--quick]``

For each case the source's own batched write rate (records/s, measured by the writer) is printed
beside the end-to-end replicated rate (records at the destination per second, from the first
write until the task has nothing pending) and the largest backlog seen while writing:

- ``no task``: the source alone, the baseline;
- ``dead destination``: a task whose destination port has nobody listening (the writer must not
  notice: the records only go into the task's log);
- ``1 KiB`` and ``1 MiB``: a task to a live destination.

The writer writes batches as fast as it can for ``--seconds`` (bounded by a record count too), so
"replicated rate ≥ write rate with a flat backlog" means replication keeps up. Client, source and
destination share this machine's cores.
"""

from __future__ import annotations

import argparse
import re
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from reduct import Batch, Client, ReplicationSettings
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
BATCH = 200  # 1 KiB records per batched write


async def write_for(client: Client, bucket: str, size: int, per_batch: int, seconds: float,
                    limit: int, task: str | None) -> tuple[int, float, int]:
    """Batched writes for ``seconds`` (at most ``limit`` records); (count, seconds, max backlog)."""
    b = await client.get_bucket(bucket)
    data = os.urandom(size)
    ts, count, backlog = 1, 0, 0
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        batch = Batch()
        for _ in range(per_batch):
            batch.add(ts, data, labels={"n": str(ts % 7)})
            ts += 1
        await b.write_batch("e", batch)
        count += per_batch
        if task is not None and count % (per_batch * 10) == 0:
            detail = await client.get_replication_detail(task)
            backlog = max(backlog, detail.info.pending_records)
    return count, time.perf_counter() - start, backlog


async def wait_drained(client: Client, task: str, timeout: float) -> float:
    """Seconds until ``task`` has nothing pending (bounded by ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if (await client.get_replication_detail(task)).info.pending_records == 0:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{task} still has records pending after {timeout} s")


async def case(src: str, dst: str | None, name: str, size: int, per_batch: int,
               seconds: float, limit: int) -> tuple[str, ...]:
    """One row: write, then wait for the destination, and measure both."""
    async with Client(src) as client:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{name}-{size}")
        bucket = f"b-{slug}"
        await client.create_bucket(bucket)
        task = None
        if dst is not None:
            task = f"t-{slug}"
            await client.create_replication(task, ReplicationSettings(
                src_bucket=bucket, dst_bucket=bucket, dst_host=dst))
        count, elapsed, backlog = await write_for(
            client, bucket, size, per_batch, seconds, limit, task)
        write_rate = count / elapsed
        replicated = "-"
        pending = "-"
        if task is not None:
            detail = await client.get_replication_detail(task)
            pending = str(detail.info.pending_records)
            if "dead" not in name:
                drain = await wait_drained(client, task, 120)
                replicated = f"{count / (elapsed + drain):,.0f}"
            await client.delete_replication(task)
        return (name, f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB", f"{count:,}",
                f"{write_rate:,.0f}", f"{write_rate * size / 1e6:,.1f}", replicated,
                str(backlog) if task else "-", pending)


async def run(seconds: float, quick: bool, batch_records: int | None) -> None:
    """Start a source and a destination, run the cases, print the table."""
    with tempfile.TemporaryDirectory(prefix="bench-repl-") as tmp:
        root = Path(tmp)
        env = {"RS_LOG_LEVEL": "WARNING", "RS_REPLICATION_TIMEOUT": "1"}
        if batch_records:
            env["RS_IO_BATCH_MAX_RECORDS"] = str(batch_records)
        src = ServerProcess(root / "src", env=env).start()
        dst = ServerProcess(root / "dst", env=env).start()
        dead = f"http://127.0.0.1:{free_port()}"
        limit_small = 50_000 if quick else 300_000
        try:
            rows = []
            # Alternated, twice: on a shared machine the load drifts between cases.
            for run_no in (1, 2):
                rows.append(await case(src.url, None, f"no task, run {run_no}", KIB, BATCH, seconds,
                                       limit_small))
                rows.append(await case(src.url, dead, f"dead destination, run {run_no}", KIB, BATCH,
                                       seconds, limit_small))
            rows.append(await case(src.url, dst.url, "live", KIB, BATCH, seconds, limit_small))
            rows.append(await case(src.url, dst.url, "live", MIB, 4, seconds,
                                   200 if quick else 600))
        finally:
            src.stop()
            dst.stop()
    limit = batch_records or 85
    table = Table(title=f"Replication, batched writes for {seconds:g} s per case, "
                  f"RS_IO_BATCH_MAX_RECORDS={limit}")
    for column in ("case", "record", "records", "source write rec/s", "source MB/s",
                   "replicated rec/s (end to end)", "max backlog while writing",
                   "pending at end of writing"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    print(f"load average: {os.getloadavg()}")


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-records", type=int, default=None,
                        help="RS_IO_BATCH_MAX_RECORDS of both instances (default: theirs, 85)")
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.quick, args.batch_records))


if __name__ == "__main__":
    main()
