"""Where a record's CPU goes: per server thread, user and system time apart.

Usage::

    python tests/bench/bench_threads.py [--records 400] [--repeat 3] [--modes single,batched,read]
        [--size 1MiB] [--written N] [--env NAME=VALUE ...] [--tree PATH]

For each mode, ``python -m appliance`` (and, for the writes, the empty-handler ceiling
``empty_app.py``, which has one thread) is driven by the real reduct-py client with records of
``--size`` (1 MiB by default; records of 64 KiB and less carry a label that cycles through ten
values): ``single`` (one write request per record), ``batched`` (8 records per batch request,
1,000 for the small ones), ``read`` (queries reading back what was written, ``--written`` records,
half of ``--records`` by default, read over and over; batches of ReductStore's default
limits). The small-record read of the README's *Batched reads* is
``--modes read --size 1KiB --written 40000 --records 600000``.

``--env`` sets a variable for the appliance (a knob such as ``APPLIANCE_PROTOCOL_LANE=off``);
``--tree`` runs the appliance from another checkout of it (started in that folder): to
compare two commits, ``git worktree add /tmp/old <commit>`` and run with and without
``--tree /tmp/old`` in turn.

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
from tests.bench.bench_big import ballast, checkout, env_settings  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

MIB = 1024 * 1024
SIZES = {"1KiB": 1024, "100KiB": 100 * 1024, "1MiB": MIB}
SMALL_BYTES = 64 * 1024  # records up to this size are written 1,000 to a batch, others 8
LABELS = [{"n": str(i)} for i in range(10)]  # one object per value, as decoded blocks share
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
    """``count`` records, one request each or batched: 8 large or 1,000 small ones a batch,
    small ones with a label cycling through ten values."""
    small = len(data) <= SMALL_BYTES
    labels = LABELS if small else [None] * 10
    if mode == "single":
        for i in range(count):
            await bucket.write("e", data, timestamp=ts + i, labels=labels[i % 10])
        return
    per_batch = 1000 if small else 8
    for first in range(0, count, per_batch):
        batch = Batch()
        for i in range(first, min(count, first + per_batch)):
            batch.add(ts + i, data, labels=labels[i % 10])
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


def start_server(
    system: str, folder: Path, env: dict[str, str] | None = None, tree: Path | None = None
) -> tuple[ServerProcess, subprocess.Popen[bytes] | None]:
    """The appliance (with ``env``, from the checkout ``tree`` if given), or the empty-handler
    app (then also returned as its process)."""
    if system != "empty":
        return ServerProcess(folder / "data", env=env, cwd=tree).start(), None
    port = free_port()
    empty = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("empty_app.py")), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = ServerProcess(folder / "unused", port=port)
    server.proc = empty
    server.wait_ready(path="/api/v1/alive")
    return server, empty


def one_run(mode: str, system: str, folder: Path, options: argparse.Namespace) -> dict[str, float]:
    """Start the server, measure, stop it."""
    server, empty = start_server(system, folder, options.server_env, options.tree)
    try:
        return asyncio.run(measure(mode, server, empty is not None, folder, options))
    finally:
        if empty is not None:
            empty.terminate()
            empty.wait(timeout=10)
        else:
            server.stop()


async def trace_reads(client: Client) -> list[tuple[str, float]]:
    """Give ``client`` a session whose trace hooks mark, for each batched read, its start and
    its response headers (``("start" | "headers", time.perf_counter())``); the list of marks."""
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
    await client._http._session.close()  # the same session, with the trace hooks
    client._http._session = aiohttp.ClientSession(
        timeout=client._http._timeout, trace_configs=[trace]
    )
    return marks


async def measure(
    mode: str, server: ServerProcess, empty: bool, folder: Path, options: argparse.Namespace
) -> dict[str, float]:
    """Warm up, time ``options.records`` records; figures per record."""
    records = options.records
    assert server.proc is not None
    pid = server.proc.pid
    async with Client(server.url, timeout=120) as client:
        marks = await trace_reads(client)
        bucket = (
            Bucket("b", client._http) if empty else await client.create_bucket("b")
        )
        data = os.urandom(options.size)
        if mode == "read":
            written = options.written or max(records // 2, 64)
            await write_records(bucket, "batched", data, 1, written)
            # Warm-up: a pass over small records (their blocks decoded and cached), 64 large.
            await read_records(bucket, written if options.size <= SMALL_BYTES else 64)
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
    for tid, (name, user, system_, switches) in after.items():
        # A thread started meanwhile (the pool adds engine workers as it needs them) counts
        # from zero; skipping it, as this did, left out up to a third of a small read's CPU.
        start = before.get(tid, (name, 0, 0, 0))
        role = thread_role(tid, pid)
        row[f"{role} user"] += (user - start[1]) / TICK / records * 1e6
        row[f"{role} sys"] += (system_ - start[2]) / TICK / records * 1e6
        row[f"{role} switches"] += (switches - start[3]) / records
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
    parser.add_argument("--records", type=int, default=400, help="records timed per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode and system")
    parser.add_argument("--modes", default="single,batched,read",
                        help="comma-separated: single, batched, read")
    parser.add_argument("--size", default="1MiB", choices=sorted(SIZES), help="record size")
    parser.add_argument("--written", type=int, default=0,
                        help="records written for the read mode (default: half of --records)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for the appliance (repeatable)")
    parser.add_argument("--tree", type=Path, help="run the appliance from this checkout")
    args = parser.parse_args()
    label = args.size
    args.size = SIZES[label]
    args.server_env = env_settings(parser, args.env)
    args.tree = checkout(parser, args.tree)
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
                    results[(mode, system)].append(one_run(mode, system, folder, args))
    load1 = os.getloadavg()
    seen = {k for rows in results.values() for row in rows for k in row}
    columns = [c for c in COLUMNS if c in seen]
    extra = ", ".join([*args.env, *([f"tree {args.tree}"] if args.tree else [])])
    table = Table(title=f"{label} records, per record (median of {args.repeat} x {args.records}"
                        f"{'; ' + extra if extra else ''}): CPU µs, switches, faults")
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
