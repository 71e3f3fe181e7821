"""Replication benchmark: two real processes on loopback, driven by reduct-py.

Usage: ``python tests/bench/bench_replication.py [--seconds 5] [--quick]``

For each case the source's own batched write rate (records/s, measured by the writer) is printed
beside the end-to-end replicated rate (records at the destination per second, from the first
write until the task has nothing pending) and the largest backlog seen while writing:

- ``no task``: the source alone, the baseline;
- ``dead destination``: a task whose destination port has nobody listening (the writer must not
  notice: the records only go into the task's log);
- ``live``, ``1 KiB`` and ``1 MiB``: a task to a live destination, the writer as fast as it can;
- ``live, paced``: the writer held to ``--rate`` records/s (default 10,000: the target), which is
  the question "does replication keep up with a source writing that fast".
- ``backlog only``: records logged while the task is paused, then sent with no writer running:
  the drain rate, and the CPU per record of the sender alone (source) and of the destination.

The writer writes batches for ``--seconds`` (bounded by a record count too). The backlog is
sampled every 10 batches: the table shows it after 1 s of writing and when the writer stops,
and the rate delivered while writing (records written minus the backlog at the end, per second of
writing). "Delivered while writing ≥ write rate, backlog at the end no bigger than after 1 s"
means replication keeps up. Client, source and destination share this machine's cores, which
other work shares too, so the rates drift with the load; the last three columns do not: the CPU
time the source and the destination processes (and the writing client, this process) spent per
record, from the first write until the destination had everything.
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

from reduct import Batch, Client, ReplicationMode, ReplicationSettings
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
BATCH = 200  # 1 KiB records per batched write


async def write_for(client: Client, bucket: str, size: int, per_batch: int, seconds: float,
                    limit: int, task: str | None,
                    rate: float | None = None) -> tuple[int, float, int, int | None]:
    """Batched writes for ``seconds`` (at most ``limit`` records, at most ``rate`` records/s);
    (count, seconds, max backlog, backlog after 1 s)."""
    b = await client.get_bucket(bucket)
    data = os.urandom(size)
    ts, count, backlog = 1, 0, 0
    at_one: int | None = None
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        batch = Batch()
        for _ in range(per_batch):
            batch.add(ts, data, labels={"n": str(ts % 7)})
            ts += 1
        await b.write_batch("e", batch)
        count += per_batch
        if task is not None and count % (per_batch * 10) == 0:
            pending = (await client.get_replication_detail(task)).info.pending_records
            backlog = max(backlog, pending)
            if at_one is None and time.perf_counter() - start >= 1.0:
                at_one = pending
        if rate is not None:
            ahead = start + count / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return count, time.perf_counter() - start, backlog, at_one


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_drained(client: Client, task: str, timeout: float) -> float:
    """Seconds until ``task`` has nothing pending (bounded by ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if (await client.get_replication_detail(task)).info.pending_records == 0:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{task} still has records pending after {timeout} s")


async def case(src: str, dst: str | None, name: str, size: int, per_batch: int,
               seconds: float, limit: int, rate: float | None = None,
               pids: tuple[int, int] = (0, 0)) -> tuple[str, ...]:
    """One row: write, then wait for the destination, and measure both (and the CPU time the
    source and destination processes, ``pids``, spent per record, from the first write until
    the destination has everything: the figure the shared machine's load does not skew)."""
    async with Client(src) as client:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{name}-{size}")
        bucket = f"b-{slug}"
        await client.create_bucket(bucket)
        task = None
        if dst is not None:
            task = f"t-{slug}"
            await client.create_replication(task, ReplicationSettings(
                src_bucket=bucket, dst_bucket=bucket, dst_host=dst))
        cpu_before = [cpu_seconds(pid) for pid in (*pids, os.getpid())]
        count, elapsed, backlog, at_one = await write_for(
            client, bucket, size, per_batch, seconds, limit, task, rate)
        write_rate = count / elapsed
        replicated = during = "-"
        pending = "-"
        if task is not None:
            detail = await client.get_replication_detail(task)
            pending = str(detail.info.pending_records)
            if "dead" not in name:
                during = f"{(count - detail.info.pending_records) / elapsed:,.0f}"
                drain = await wait_drained(client, task, 120)
                replicated = f"{count / (elapsed + drain):,.0f}"
        cpu = [(cpu_seconds(pid) - before) * 1e6 / count
               for pid, before in zip((*pids, os.getpid()), cpu_before)]
        if task is not None:
            await client.delete_replication(task)
        return (name, f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB", f"{count:,}",
                f"{write_rate:,.0f}", f"{write_rate * size / 1e6:,.1f}", during, replicated,
                str(backlog) if task else "-", "-" if at_one is None else str(at_one), pending,
                f"{cpu[0]:,.0f}",
                f"{cpu[1]:,.0f}" if dst is not None and "dead" not in name else "-",
                f"{cpu[2]:,.0f}")


async def drain_case(src: str, dst: str, count: int, pids: tuple[int, int]) -> tuple[str, ...]:
    """``backlog only``: ``count`` 1 KiB records logged while the task is paused, then the task
    enabled: the drain rate and the CPU per record of the sender and of the destination alone."""
    async with Client(src) as client:
        bucket = task = "drain"
        await client.create_bucket(bucket)
        await client.create_replication(task, ReplicationSettings(
            src_bucket=bucket, dst_bucket=bucket, dst_host=dst, mode=ReplicationMode.PAUSED))
        written, _, _, _ = await write_for(client, bucket, KIB, BATCH, 120, count, None)
        cpu_before = [cpu_seconds(pid) for pid in pids]
        start = time.perf_counter()
        await client.set_replication_mode(task, ReplicationMode.ENABLED)
        await wait_drained(client, task, 120)
        elapsed = time.perf_counter() - start
        cpu = [(cpu_seconds(pid) - before) * 1e6 / written for pid, before in zip(pids, cpu_before)]
        await client.delete_replication(task)
        return ("backlog only", "1 KiB", f"{written:,}", "-", "-", "-", f"{written / elapsed:,.0f}",
                "-", "-", str(written), f"{cpu[0]:,.0f}", f"{cpu[1]:,.0f}", "-")


async def run(seconds: float, quick: bool, batch_records: int | None, rate: float) -> None:
    """Start a source and a destination, run the cases, print the table."""
    with tempfile.TemporaryDirectory(prefix="bench-repl-") as tmp:
        root = Path(tmp)
        env = {"RS_LOG_LEVEL": "WARNING", "RS_REPLICATION_TIMEOUT": "1"}
        if batch_records:
            env["RS_IO_BATCH_MAX_RECORDS"] = str(batch_records)
        src = ServerProcess(root / "src", env=env).start()
        dst = ServerProcess(root / "dst", env=env).start()
        dead = f"http://127.0.0.1:{free_port()}"
        assert src.proc is not None and dst.proc is not None
        pids = (src.proc.pid, dst.proc.pid)
        limit_small = 50_000 if quick else 300_000
        try:
            rows = []
            # Alternated, twice: on a shared machine the load drifts between cases.
            for run_no in (1, 2):
                rows.append(await case(src.url, None, f"no task, run {run_no}", KIB, BATCH, seconds,
                                       limit_small, pids=pids))
                rows.append(await case(src.url, dead, f"dead destination, run {run_no}", KIB, BATCH,
                                       seconds, limit_small, pids=pids))
            rows.append(await case(src.url, dst.url, "live", KIB, BATCH, seconds, limit_small,
                                   pids=pids))
            for run_no in (1, 2):
                rows.append(await case(src.url, dst.url, f"live, paced {rate:,.0f}/s, run {run_no}",
                                       KIB, BATCH, seconds, limit_small, rate, pids=pids))
            rows.append(await drain_case(src.url, dst.url, 20_000 if quick else 60_000, pids))
            rows.append(await case(src.url, dst.url, "live", MIB, 4, seconds,
                                   200 if quick else 600, pids=pids))
        finally:
            src.stop()
            dst.stop()
    limit = batch_records or 85
    table = Table(title=f"Replication, batched writes for {seconds:g} s per case, "
                  f"RS_IO_BATCH_MAX_RECORDS={limit}")
    for column in ("case", "record", "records", "source write rec/s", "source MB/s",
                   "delivered rec/s while writing", "replicated rec/s (end to end)",
                   "max backlog while writing", "backlog after 1 s", "pending at end of writing",
                   "source CPU µs/rec", "destination CPU µs/rec", "client CPU µs/rec"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=210).print(table)
    print(f"load average: {os.getloadavg()}")


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-records", type=int, default=None,
                        help="RS_IO_BATCH_MAX_RECORDS of both instances (default: theirs, 85)")
    parser.add_argument("--rate", type=float, default=10_000.0,
                        help="records/s of the paced live case (default: the 10,000 target)")
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.quick, args.batch_records, args.rate))


if __name__ == "__main__":
    main()
