"""Where a large record's CPU goes: per server thread, user and system time apart.

Usage::

    python tests/bench/bench_threads.py [--records 400] [--repeat 3] [--modes single,batched,read]

For each mode, ``python -m appliance`` (and, for the writes, the empty-handler ceiling
``empty_app.py``, which has one thread) is driven by the real reduct-py client with 1 MiB
records: ``single`` (one write request per record), ``batched`` (8 records per batch request),
``read`` (a query reading back what was written, batches of ReductStore's default limits).
After an untimed warm-up and a ballast file (``bench_big.ballast``), ``--records`` records are
timed, and the table shows, per record: each server thread's user and system CPU
(``/proc/<pid>/task/*/stat``; the event loop, and the other threads together) and voluntary
context switches (a thread hand-off or a wait),
the server's minor page faults, and the client's CPU (this process). For reads it also shows,
per batch request, the time to the response headers and the whole request-to-request cycle
(aiohttp trace hooks): what the server does before its first byte against what the client
spends reading the body.

Medians over ``--repeat`` runs; servers are started and stopped per run. Every loop is bounded
by its record count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
from reduct import Batch, Bucket, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.bench_big import ballast  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

MIB = 1024 * 1024
BATCH_RECORDS = 8
TICK = os.sysconf("SC_CLK_TCK")


def thread_stats(pid: int) -> dict[str, tuple[str, int, int, int]]:
    """(name, user ticks, system ticks, voluntary switches) of every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        switches = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        out[task.name] = (name, int(fields[11]), int(fields[12]), switches)
    return out


def minor_faults(pid: int) -> int:
    """Minor page faults of the process so far."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


COLUMNS = (
    "records/s", "loop user", "loop sys", "loop switches", "threads user", "threads sys",
    "threads switches", "server faults", "client CPU", "to headers ms", "cycle ms",
)


def thread_role(tid: str, pid: int) -> str:
    """The event loop (the main thread) or the other threads together (the engine's workers;
    the logging thread, mostly idle)."""
    return "loop" if tid == str(pid) else "threads"


async def write_records(bucket: Bucket, mode: str, data: bytes, ts: int, count: int) -> None:
    """``count`` 1 MiB records, one request each or 8 per batch."""
    if mode == "single":
        for i in range(count):
            await bucket.write("e", data, timestamp=ts + i)
        return
    for first in range(0, count, BATCH_RECORDS):
        batch = Batch()
        for i in range(first, min(count, first + BATCH_RECORDS)):
            batch.add(ts + i, data)
        errors = await bucket.write_batch("e", batch)
        assert not errors, errors


async def read_records(bucket: Bucket, count: int) -> None:
    """``count`` records read back through queries (one query per pass over the entry)."""
    done = 0
    while done < count:
        async for record in bucket.query("e"):
            await record.read_all()
            done += 1
            if done >= count:
                return


def start_server(system: str, folder: Path) -> tuple[ServerProcess, subprocess.Popen[bytes] | None]:
    """The appliance, or the empty-handler app (then also returned as its process)."""
    if system != "empty":
        return ServerProcess(folder / "data").start(), None
    port = free_port()
    empty = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("empty_app.py")), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = ServerProcess(folder / "unused", port=port)
    server.proc = empty
    server.wait_ready(path="/api/v1/alive")
    return server, empty


def one_run(mode: str, system: str, records: int, folder: Path) -> dict[str, float]:
    """Start the server, measure, stop it."""
    server, empty = start_server(system, folder)
    try:
        return asyncio.run(measure(mode, server, empty is not None, records, folder))
    finally:
        if empty is not None:
            empty.terminate()
            empty.wait(timeout=10)
        else:
            server.stop()


async def measure(
    mode: str, server: ServerProcess, empty: bool, records: int, folder: Path
) -> dict[str, float]:
    """Warm up, time ``records`` records; figures per record."""
    assert server.proc is not None
    pid = server.proc.pid
    marks: list[tuple[str, float]] = []
    trace = aiohttp.TraceConfig()

    async def on_start(_s: object, _c: object, params: aiohttp.TraceRequestStartParams) -> None:
        if "/read" in str(params.url):
            marks.append(("start", time.perf_counter()))

    async def on_headers(_s: object, _c: object, params: aiohttp.TraceRequestEndParams) -> None:
        if "/read" in str(params.url):
            marks.append(("headers", time.perf_counter()))

    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_headers)
    async with Client(server.url, timeout=120) as client:
        await client._http._session.close()  # the same session, with the trace hooks
        client._http._session = aiohttp.ClientSession(
            timeout=client._http._timeout, trace_configs=[trace]
        )
        bucket = (
            Bucket("b", client._http) if empty else await client.create_bucket("b")
        )
        data = os.urandom(MIB)
        if mode == "read":
            await write_records(bucket, "batched", data, 1, max(records // 2, 64))
            await read_records(bucket, 64)  # warm-up
        else:
            await write_records(bucket, mode, data, 10**9, 32)  # warm-up
        ballast(folder)
        marks.clear()
        before, faults0 = thread_stats(pid), minor_faults(pid)
        client0, start = time.process_time(), time.perf_counter()
        if mode == "read":
            await read_records(bucket, records)
        else:
            await write_records(bucket, mode, data, 2 * 10**9, records)
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - client0
        after, faults1 = thread_stats(pid), minor_faults(pid)
    row: dict[str, float] = defaultdict(float)
    row["records/s"] = records / seconds
    for tid, (_name, user, system_, switches) in after.items():
        if tid not in before:
            continue
        role = thread_role(tid, pid)
        row[f"{role} user"] += (user - before[tid][1]) / TICK / records * 1e6
        row[f"{role} sys"] += (system_ - before[tid][2]) / TICK / records * 1e6
        row[f"{role} switches"] += (switches - before[tid][3]) / records
    row["server faults"] = (faults1 - faults0) / records
    row["client CPU"] = client_cpu / records * 1e6
    starts = [t for kind, t in marks if kind == "start"]
    heads = [t for kind, t in marks if kind == "headers"]
    if len(starts) > 1 and len(heads) >= len(starts) - 1:
        waits = [h - s for s, h in zip(starts, heads, strict=False)]
        cycles = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        row["to headers ms"] = statistics.median(waits) * 1e3
        row["cycle ms"] = statistics.median(cycles) * 1e3
    return row


def main() -> None:
    """Run every mode ``--repeat`` times on each system and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400, help="1 MiB records per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode and system")
    parser.add_argument("--modes", default="single,batched,read",
                        help="comma-separated: single, batched, read")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("single", "batched", "read")]
    if bad:
        parser.error(f"unknown mode(s) {', '.join(bad)}: single, batched or read")
    load0 = os.getloadavg()
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for rep in range(args.repeat):
            for mode in modes:
                systems = ["appliance"] if mode == "read" else ["appliance", "empty"]
                if rep % 2:
                    systems.reverse()
                for system in systems:
                    folder = Path(tmp) / f"{mode}-{system}-{rep}"
                    folder.mkdir()
                    results[(mode, system)].append(one_run(mode, system, args.records, folder))
    load1 = os.getloadavg()
    seen = {k for rows in results.values() for row in rows for k in row}
    columns = [c for c in COLUMNS if c in seen]
    table = Table(title=f"1 MiB records, per record (median of {args.repeat} x {args.records}): "
                        "CPU µs, switches, faults")
    table.add_column("mode / system")
    for column in columns:
        table.add_column(column, justify="right")
    for (mode, system), rows in results.items():
        cells = []
        for column in columns:
            values = [row[column] for row in rows if column in row]
            if not values:
                cells.append("")
                continue
            value = statistics.median(values)
            cells.append(f"{value:,.1f}" if value < 100 else f"{value:,.0f}")
        table.add_row(f"{mode} / {system}", *cells)
    console = Console(width=240)
    console.print(table)
    console.print(f"load average {' '.join(f'{x:.2f}' for x in load0)} before, "
                  f"{' '.join(f'{x:.2f}' for x in load1)} after")


if __name__ == "__main__":
    main()
