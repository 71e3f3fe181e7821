"""Large-record and concurrency benchmark with the real reduct-py client over loopback.

Usage::

    python tests/bench/bench_big.py [--reps 5] [--ceiling-parser h11] [--quick]  # 1 MiB writes
        [--records 96] [--env NAME=VALUE ...]  # a setting for the appliance only
        [--tree PATH]  # the appliance from another checkout (``git worktree add``)
    python tests/bench/bench_big.py --mode concurrent [--seconds 3]       # 1..8 clients

``large`` (default): 1 MiB single writes (one request per record) and 1 MiB batched writes (one
8 MiB batch request at a time) against ``python -m appliance``, beside their ceilings measured
in the same run: the very same reduct-py calls against a Quart+Hypercorn app whose handler reads
and drops the body (``empty_app.py``; with ``--ceiling-parser h11`` on h11's and Hypercorn's
own code instead of ``appliance.http1``), and raw sequential 1 MiB ``write`` calls to a file in the
same folder. The three systems are interleaved and their order rotated on every repetition;
the table shows medians. Before every timed sample an untimed 256 MiB ballast file is written
and deleted in the same folder (on this VM writing into page cache a just-deleted file freed
is several times faster than growing it, so every sample starts from the same state). Server
CPU per record is the server process's user+system time over the sample.

``concurrent``: 1, 2, 4 and 8 clients (one connection each) doing 1 KiB single writes to their
own entries for ``--seconds``, total records/s and server CPU (100 % = one core saturated);
then 8 such clients again while another process streams one 1 GiB record (bounded: the record
ends by itself), with the latency percentiles of the small writes with and without the stream.

Every loop is bounded by a record count and a time budget; both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from reduct import Batch, Bucket, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.http1 import PARSER_ENV  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BALLAST_BYTES = 256 * MIB
BATCH_RECORDS = 8  # 8 x 1 MiB per batch request
TIMESTAMPS = itertools.count(1_000_000)  # unique over every small write of a run


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ballast(folder: Path) -> None:
    """Write and delete an untimed file, so every write sample meets the same page cache."""
    path = folder / "ballast.bin"
    chunk = b"\0" * MIB
    with path.open("wb") as f:
        for _ in range(BALLAST_BYTES // MIB):
            f.write(chunk)
    path.unlink()


def env_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a dict (a parser error for anything else): variables
    for the appliance alone, since the benchmark servers drop the caller's ``RS_*`` ones."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env takes NAME=VALUE, not {item!r}")
        env[name] = value
    return env


def checkout(parser: argparse.ArgumentParser, tree: Path | None) -> Path | None:
    """``--tree PATH`` as an absolute checkout holding the appliance (a parser error if it
    does not): the benchmark starts ``python -m appliance`` there instead of in this one."""
    if tree is None:
        return None
    tree = tree.resolve()
    if not (tree / "appliance" / "__main__.py").is_file():
        parser.error(f"--tree {tree}: no appliance package there")
    return tree


def raw_disk(folder: Path, records: int) -> float:
    """Seconds to write ``records`` MiB sequentially to a new file (no fsync, like the server)."""
    chunk = os.urandom(MIB)
    path = folder / "raw.bin"
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(records):
            f.write(chunk)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


async def single_writes(bucket: Bucket, entry: str, records: int, ts0: int) -> float:
    """Seconds for ``records`` sequential 1 MiB single writes."""
    data = os.urandom(MIB)
    start = time.perf_counter()
    for i in range(records):
        await bucket.write(entry, data, timestamp=ts0 + i, labels={"n": str(i % 10)})
    return time.perf_counter() - start


async def batched_writes(bucket: Bucket, entry: str, records: int, ts0: int) -> float:
    """Seconds for ``records`` 1 MiB records sent as sequential 8-record batches."""
    data = os.urandom(MIB)
    start = time.perf_counter()
    for first in range(0, records, BATCH_RECORDS):
        batch = Batch()
        for i in range(first, min(records, first + BATCH_RECORDS)):
            batch.add(ts0 + i, data, labels={"n": str(i % 10)})
        errors = await bucket.write_batch(entry, batch)
        assert not errors, errors
    return time.perf_counter() - start


class Systems:
    """The appliance and the empty-handler app, each with its own client and bucket."""

    def __init__(
        self, folder: Path, ceiling_parser: str | None = None, env: dict[str, str] | None = None,
        tree: Path | None = None,
    ) -> None:
        self.folder = folder
        self.ceiling_parser = ceiling_parser
        self.ours = ServerProcess(folder / "data", env=env, cwd=tree)
        self.empty_port = free_port()
        self.empty: subprocess.Popen[bytes] | None = None
        self.ts = 1_000_000

    def start(self) -> None:
        """Start both servers and wait until they answer."""
        self.ours.start()
        self.empty = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("empty_app.py")), str(self.empty_port)],
            env={**os.environ, PARSER_ENV: self.ceiling_parser} if self.ceiling_parser else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = ServerProcess(self.folder / "unused", port=self.empty_port)
        probe.proc = self.empty
        probe.wait_ready(path="/api/v1/alive")

    def stop(self) -> None:
        """Stop both servers (always called)."""
        if self.empty is not None:
            self.empty.terminate()
            self.empty.wait(timeout=10)
        if self.ours.proc is not None:
            self.ours.stop()

    def next_ts(self, n: int) -> int:
        """A fresh timestamp range of ``n`` records."""
        ts = self.ts
        self.ts += n + 1
        return ts


async def timed(pid: int, run: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(seconds, server CPU seconds) of one sample."""
    cpu0 = cpu_seconds(pid)
    seconds = await run()
    return seconds, cpu_seconds(pid) - cpu0


async def large_mode(args: argparse.Namespace, systems: Systems) -> Table:
    """Interleaved, rotated samples of 1 MiB single/batched writes against both servers and
    the raw disk; medians per case."""
    records = 16 if args.quick else args.records
    folder = systems.folder
    assert systems.empty is not None and systems.ours.proc is not None
    results: dict[str, list[tuple[float, float]]] = {}
    async with (
        Client(systems.ours.url, timeout=120) as ours_client,
        Client(f"http://127.0.0.1:{systems.empty_port}", timeout=120) as empty_client,
    ):
        ours = await ours_client.create_bucket("big", exist_ok=True)
        empty = Bucket("b", empty_client._http)  # the empty app needs no bucket
        ours_pid, empty_pid = systems.ours.proc.pid, systems.empty.pid

        def case(name: str, bucket: Bucket, pid: int, fn: Callable[..., Awaitable[float]]):
            async def sample() -> None:
                ballast(folder)
                ts = systems.next_ts(records)
                results.setdefault(name, []).append(
                    await timed(pid, lambda: fn(bucket, name.split(":")[0], records, ts))
                )

            return sample

        async def disk() -> None:
            ballast(folder)
            results.setdefault("disk", []).append((raw_disk(folder, records), 0.0))

        order = [
            disk,
            case("single:ours", ours, ours_pid, single_writes),
            case("single:empty", empty, empty_pid, single_writes),
            case("batched:ours", ours, ours_pid, batched_writes),
            case("batched:empty", empty, empty_pid, batched_writes),
        ]
        for rep in range(args.reps):
            k = rep % len(order)
            for sample in order[k:] + order[:k]:
                await sample()
            # keep the data folder from growing over the repetitions
            b = await ours_client.get_bucket("big")
            await b.remove()
            await ours_client.create_bucket("big", exist_ok=True)

    def mbps(name: str) -> float:
        return statistics.median(records * MIB / s / 1e6 for s, _ in results[name])

    def cpu_us(name: str) -> float:
        return statistics.median(c / records * 1e6 for _, c in results[name])

    disk_mbps = mbps("disk")
    table = Table(
        title=f"1 MiB writes, reduct-py, loopback, {os.cpu_count()} cores, "
        f"median of {args.reps} x {records} records"
    )
    for column in ("case", "MB/s", "records/s", "server CPU µs/record", "vs min(disk, empty)"):
        table.add_column(column, justify="left" if column == "case" else "right")
    table.add_row("raw disk (1 MiB writes)", f"{disk_mbps:,.1f}", "", "", "")
    for kind in ("single", "batched"):
        ceiling = min(disk_mbps, mbps(f"{kind}:empty"))
        for who in ("ours", "empty"):
            name = f"{kind}:{who}"
            label = f"{kind} 1 MiB writes, " + ("appliance" if who == "ours" else "empty handler")
            table.add_row(
                label, f"{mbps(name):,.1f}", f"{mbps(name) * 1e6 / MIB:,.0f}",
                f"{cpu_us(name):,.0f}", f"{mbps(name) / ceiling:.0%}" if who == "ours" else "",
            )
    return table


async def small_writer(
    bucket: Bucket, entry: str, deadline: float, limit: int, latencies: list[float]
) -> None:
    """1 KiB single writes until the deadline or ``limit``; each latency appended."""
    data = os.urandom(KIB)
    i = 0
    while i < limit and time.perf_counter() < deadline:
        start = time.perf_counter()
        await bucket.write(entry, data, timestamp=next(TIMESTAMPS))
        latencies.append(time.perf_counter() - start)
        i += 1


async def gib_stream(total: int) -> AsyncIterator[bytes]:
    """``total`` bytes in 1 MiB chunks (the body of the big record)."""
    chunk = os.urandom(MIB)
    for _ in range(total // MIB):
        yield chunk


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def concurrent_mode(args: argparse.Namespace, systems: Systems) -> list[Table]:
    """Scaling of 1 KiB single writes with 1..8 clients; small-write latency under a 1 GiB
    stream."""
    assert systems.ours.proc is not None
    pid = systems.ours.proc.pid
    seconds = 0.5 if args.quick else args.seconds
    limit = 200 if args.quick else 100_000
    scaling = Table(title=f"1 KiB single writes, N clients, {os.cpu_count()} cores")
    for column in ("clients", "records/s", "server CPU (1.0 = one core)", "p50 ms", "p99 ms"):
        scaling.add_column(column, justify="right")
    clients = [Client(systems.ours.url, timeout=120) for _ in range(8)]
    try:
        for c in clients:
            await c.__aenter__()
        bucket0 = await clients[0].create_bucket("conc", exist_ok=True)
        buckets = [Bucket(bucket0.name, c._http) for c in clients]
        for n in (1, 2, 4, 8):
            lat: list[float] = []
            cpu0 = cpu_seconds(pid)
            start = time.perf_counter()
            deadline = start + seconds
            await asyncio.gather(
                *(small_writer(buckets[i], f"n{n}-{i}", deadline, limit, lat) for i in range(n))
            )
            wall = time.perf_counter() - start
            cpu = cpu_seconds(pid) - cpu0
            scaling.add_row(
                str(n), f"{len(lat) / wall:,.0f}", f"{cpu / wall:.2f}",
                f"{pct(lat, 0.5):.2f}", f"{pct(lat, 0.99):.2f}",
            )

        big = (64 * MIB) if args.quick else GIB
        latency = Table(title=f"8 clients of 1 KiB single writes, with and without a "
                        f"{big // MIB} MiB record streaming in")
        for column in ("case", "writes", "p50 ms", "p99 ms", "max ms", "big record MB/s"):
            latency.add_column(column, justify="left" if column == "case" else "right")
        for with_stream in (False, True):
            lat = []
            stream_mbps = ""
            if with_stream:
                ballast(systems.folder)
                # The big record comes from another process (another client), so its sending
                # does not queue behind the small writers in this one's event loop.
                start = time.perf_counter()
                sender = subprocess.Popen(
                    [sys.executable, __file__, "--mode", "stream", "--url", systems.ours.url,
                     "--bytes", str(big)]
                )
                try:
                    while sender.poll() is None:  # bounded: the record ends by itself
                        deadline = time.perf_counter() + 0.5
                        await asyncio.gather(
                            *(small_writer(buckets[i], f"lat-{i}", deadline, limit, lat)
                              for i in range(8))
                        )
                    assert sender.wait(timeout=600) == 0, "the big record failed"
                finally:
                    if sender.poll() is None:
                        sender.kill()
                        sender.wait()
                stream_mbps = f"{big / (time.perf_counter() - start) / 1e6:,.1f}"
            else:
                deadline = time.perf_counter() + seconds
                await asyncio.gather(
                    *(small_writer(buckets[i], f"base-{i}", deadline, limit, lat)
                      for i in range(8))
                )
            latency.add_row(
                "during the big record" if with_stream else "alone", str(len(lat)),
                f"{pct(lat, 0.5):.2f}", f"{pct(lat, 0.99):.2f}", f"{max(lat) * 1000:.2f}",
                stream_mbps,
            )
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    return [scaling, latency]


async def stream_only(url: str, total: int) -> None:
    """``--mode stream``: write one record of ``total`` bytes (the concurrent mode's sender)."""
    async with Client(url, timeout=600) as client:
        bucket = await client.get_bucket("conc")
        await bucket.write("big", gib_stream(total), timestamp=1, content_length=total)


def main() -> None:
    """Start the servers, run the chosen mode, print the tables and the load average."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("large", "concurrent", "stream"), default="large")
    parser.add_argument("--url", help="stream mode: the server (used by concurrent mode)")
    parser.add_argument("--bytes", type=int, default=GIB, help="stream mode: record size")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (large mode)")
    parser.add_argument("--records", type=int, default=96, help="1 MiB records per sample")
    parser.add_argument("--seconds", type=float, default=3.0, help="per case (concurrent)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the script")
    parser.add_argument(
        "--ceiling-parser", choices=("h11",), default=None,
        help="run the empty handler with h11's and Hypercorn's own code (APPLIANCE_HTTP_PARSER)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the appliance only, e.g. RS_ENGINE_SYNC_WRITES=true")
    parser.add_argument("--tree", type=Path,
                        help="run the appliance from this checkout (to compare two commits)")
    args = parser.parse_args()
    server_env = env_settings(parser, args.env)
    tree = checkout(parser, args.tree)
    if args.mode == "stream":
        asyncio.run(stream_only(args.url, args.bytes))
        return
    need = (GIB if args.mode == "concurrent" else args.records * MIB * args.reps) + 2 * GIB
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        free = shutil.disk_usage(tmp).free
        if free < need:
            sys.exit(f"need {need / GIB:.1f} GiB free in {tmp}, have {free / GIB:.1f}")
        load0 = os.getloadavg()[0]
        systems = Systems(Path(tmp), args.ceiling_parser, server_env, tree)
        try:
            systems.start()
            if args.mode == "large":
                tables = [asyncio.run(large_mode(args, systems))]
            else:
                tables = asyncio.run(concurrent_mode(args, systems))
        finally:
            systems.stop()
        load1 = os.getloadavg()[0]
    console = Console(width=120)
    for table in tables:
        console.print(table)
    console.print(f"load average {load0:.2f} before, {load1:.2f} after")


if __name__ == "__main__":
    main()
