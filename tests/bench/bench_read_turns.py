"""Batched 1 KiB reads in turns: this checkout, another one, and the replay ceiling.

Usage: ``python tests/bench/bench_read_turns.py [--tree PATH] [--written 123000]
[--records 200000] [--reps 6]``

Two appliances (this checkout and, with ``--tree``, another one, e.g. ``git worktree add
/tmp/old <commit>``), each with its own data folder holding the same entry of ``--written``
records of 1 KiB with a label that cycles through ten values, and the replay server of
``bench_api.py`` (``replay_server.py``) on the batched-read responses captured from this
checkout. Each repetition reads ``--records`` records from each of them through reduct-py
(queries over the entry, again from its start when one ends), their order rotated every
repetition. More than 65,536 records are more blocks than the block cache holds: every pass
decodes them again, as when reading history.

Per system, medians over the repetitions: records/s, the ratio to the replay of the same
repetition (median, range), server and client CPU per record, and per batch request the time
from the request to its response headers (aiohttp trace hooks) at the median, p90 and p99: what
the client waits for the server, where the ratio alone hides the tail. Every loop is bounded by
its record count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reduct import Bucket, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.bench_api import capture_reads, loadavg, process_cpu  # noqa: E402
from tests.bench.bench_big import checkout  # noqa: E402
from tests.bench.bench_threads import read_records, trace_reads, write_records  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

HERE = Path(__file__).resolve().parents[2]
REPLAY = Path(__file__).with_name("replay_server.py")


async def read(url: str, records: int, pid: int) -> dict[str, float]:
    """Read ``records`` records from ``url``; rate, CPU per record, time-to-headers quantiles."""
    async with Client(url, timeout=60) as client:
        marks = await trace_reads(client)
        await client._http.request_all("HEAD", "/alive")  # learns the API version
        bucket = Bucket("b", client._http)
        start, client0, server0 = time.perf_counter(), time.process_time(), process_cpu(pid)
        await read_records(bucket, records)
        seconds = time.perf_counter() - start
        client_cpu, server_cpu = time.process_time() - client0, process_cpu(pid) - server0
    starts = [t for kind, t in marks if kind == "start"]
    heads = [t for kind, t in marks if kind == "headers"]
    waits = sorted(h - s for s, h in zip(starts, heads, strict=False))

    def quantile(q: float) -> float:
        return waits[int(q * (len(waits) - 1))] * 1e3 if waits else float("nan")

    return {
        "rate": records / seconds, "server": server_cpu / records * 1e6,
        "client": client_cpu / records * 1e6,
        "h50": quantile(0.5), "h90": quantile(0.9), "h99": quantile(0.99),
    }


async def fill(url: str, written: int) -> None:
    """Entry ``b/e``: ``written`` records of 1 KiB, label ``n`` cycling 0..9, 1,000 a batch."""
    async with Client(url, timeout=60) as client:
        bucket = await client.create_bucket("b", exist_ok=True)
        await write_records(bucket, "batched", os.urandom(1024), 1, written)


async def run(args: argparse.Namespace, folder: Path) -> dict[str, list[dict[str, float]]]:
    """Start the systems, fill them, read in turns; the samples by system."""
    trees = [("this", HERE)] + ([("other", args.tree)] if args.tree else [])
    servers = []
    for name, tree in trees:
        (folder / name).mkdir()
        servers.append((name, ServerProcess(folder / name / "data", cwd=tree).start()))
    replay = None
    try:
        for _, server in servers:
            await fill(server.url, args.written)
        capture = folder / "capture.pickle"
        capture.write_bytes(pickle.dumps(capture_reads(servers[0][1].url, "b", "e")))
        port = free_port()
        replay = subprocess.Popen(
            [sys.executable, str(REPLAY), str(port), str(capture)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        replay_server = ServerProcess(folder / "unused", port=port)
        replay_server.proc = replay
        replay_server.wait_ready(path="/api/v1/alive")
        systems = [(name, s.url, s.proc.pid) for name, s in servers if s.proc is not None]
        systems.append(("replay", replay_server.url, replay.pid))
        for _, url, pid in systems[:-1]:  # warm-up: a first pass decodes and caches
            await read(url, min(args.written, 30_000), pid)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in systems}
        for rep in range(args.reps):
            turn = rep % len(systems)
            for name, url, pid in systems[turn:] + systems[:turn]:
                samples[name].append(await read(url, args.records, pid))
            print(f"repetition {rep + 1}/{args.reps} done, load average {loadavg()}",
                  file=sys.stderr)
        return samples
    finally:
        if replay is not None:
            replay.terminate()
            replay.wait(timeout=10)
        for _, server in servers:
            server.stop()


def main() -> None:
    """Run the turns and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="another checkout to read from in turn")
    parser.add_argument("--written", type=int, default=123_000, help="records in the entry")
    parser.add_argument("--records", type=int, default=200_000, help="records read a sample")
    parser.add_argument("--reps", type=int, default=6, help="repetitions (medians are shown)")
    args = parser.parse_args()
    args.tree = checkout(parser, args.tree)
    before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp:
        samples = asyncio.run(run(args, Path(tmp)))
    replayed = samples["replay"]
    table = Table(
        title=f"batched 1 KiB reads in turns (reduct-py, {args.written:,} records in the "
        f"entry, {args.records:,} a sample, medians of {args.reps})",
        caption=f"this: {HERE}; other: {args.tree}; load average before {before}, "
        f"after {loadavg()}",
    )
    for column in ("system", "records/s", "of replay", "range", "server CPU µs/rec",
                   "client CPU µs/rec", "to headers ms p50", "p90", "p99"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, rows in samples.items():
        ratios = [a["rate"] / b["rate"] for a, b in zip(rows, replayed, strict=True)]

        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(row[key] for row in rows)

        table.add_row(
            name, f"{med('rate'):,.0f}", f"{statistics.median(ratios):.0%}",
            f"{min(ratios):.0%}–{max(ratios):.0%}", f"{med('server'):.1f}",
            f"{med('client'):.1f}", f"{med('h50'):.2f}", f"{med('h90'):.2f}",
            f"{med('h99'):.2f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
