"""Batched reads against the floors of the HTTP stack, with the real reduct-py client.

Usage: ``python tests/bench/bench_reads_floor.py [--seconds 3] [--repeat 3] [--sizes 1KiB]``

For each record size it fills one entry of ``python -m appliance``, captures the batched-read
responses of a query of it (as ``bench_api.py`` does) and reads through a query, one request
at a time, from five servers:

- the appliance;
- ``replay_asgi.py quart``: the captured responses from a Quart route on Hypercorn;
- ``replay_asgi.py asgi``: the same from a bare ASGI callable on Hypercorn (pre-encoded header
  pairs, as the appliance's ``RawResponse``): the floor of Hypercorn + h11 alone;
- ``replay_asgi.py asgi-tuned``: that callable with the appliance process's own tuning (the
  one-pass headers of ``appliance.http1`` and the rest ``server.serve`` sets): the floor of the
  stack the appliance runs on;
- ``replay_server.py``: the same bytes from a bare asyncio protocol (one ``write`` per
  response), the ceiling ``bench_api.py`` uses: what reduct-py itself can parse.

Every repetition runs all five, the order rotated. The table shows median records/s (range),
server and client CPU per record, and each row as a share of the bare replay and of the
Hypercorn floor. Every loop is bounded by a record count and a time budget; the load average
is printed.
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
from tests.bench.bench_api import (  # noqa: E402
    SIZES,
    batched_reads,
    batched_writes,
    capture_reads,
    loadavg,
    process_cpu,
)
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

HERE = Path(__file__).parent
SYSTEMS = ("appliance", "Quart on Hypercorn", "ASGI on Hypercorn", "ASGI, tuned Hypercorn",
           "bare replay")
FILL_SECONDS = 4.0
LIMIT = 500_000


def spawn(folder: Path, *args: str) -> ServerProcess:
    """A replay server (script and arguments under ``tests/bench``) on a free port, ready."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / args[0]), str(port), *args[1:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = ServerProcess(folder / "unused", port=port)
    server.proc = proc
    server.wait_ready(path="/api/v1/alive")
    return server


async def run_size(folder: Path, ours: ServerProcess, label: str, size: int,
                   args: argparse.Namespace) -> dict[str, list[tuple[float, float, float]]]:
    """(records/s, server µs/rec, client µs/rec) per system and repetition for one size."""
    bucket_name = f"floor{size}"
    async with Client(ours.url, timeout=60) as client:
        bucket = await client.create_bucket(bucket_name, exist_ok=True)
        await batched_writes(bucket, "reads", size, FILL_SECONDS, LIMIT, False)
    capture = folder / f"capture-{size}.pickle"
    capture.write_bytes(pickle.dumps(capture_reads(ours.url, bucket_name, "reads")))
    servers = {
        "appliance": ours,
        "Quart on Hypercorn": spawn(folder, "replay_asgi.py", str(capture), "quart"),
        "ASGI on Hypercorn": spawn(folder, "replay_asgi.py", str(capture), "asgi"),
        "ASGI, tuned Hypercorn": spawn(folder, "replay_asgi.py", str(capture), "asgi-tuned"),
        "bare replay": spawn(folder, "replay_server.py", str(capture)),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SYSTEMS}
    try:
        for rep in range(args.repeat):
            turn = rep % len(SYSTEMS)
            order = SYSTEMS[turn:] + SYSTEMS[:turn]
            for name in order:
                server = servers[name]
                assert server.proc is not None
                async with Client(server.url, timeout=60) as client:
                    await client._http.request_all("HEAD", "/alive")  # learns the API version
                    pid = server.proc.pid
                    cpu0, client0 = process_cpu(pid), time.process_time()
                    count, elapsed = await batched_reads(
                        Bucket(bucket_name, client._http), "reads", args.seconds, LIMIT
                    )
                    server_cpu = process_cpu(pid) - cpu0
                    client_cpu = time.process_time() - client0
                results[name].append(
                    (count / elapsed, server_cpu / count * 1e6, client_cpu / count * 1e6)
                )
            print(f"{label}: repetition {rep + 1}/{args.repeat}, load average {loadavg()}",
                  file=sys.stderr)
    finally:
        for name, server in servers.items():
            if name != "appliance" and server.proc is not None:
                server.proc.terminate()
                server.proc.wait(timeout=10)
    return results


def table(all_results: dict[str, dict[str, list[tuple[float, float, float]]]],
          args: argparse.Namespace, load_before: str) -> Table:
    """One row per size and system; shares are medians of per-repetition ratios."""
    t = Table(
        title=f"batched reads vs the HTTP stack's floors (reduct-py, loopback, "
        f"{os.cpu_count()} cores, median of {args.repeat}, {args.seconds:g} s each)",
        caption=f"load average before {load_before}, after {loadavg()}",
    )
    for column in ("case", "records/s", "range", "server CPU µs/rec", "client CPU µs/rec",
                   "of bare replay", "of ASGI on Hypercorn"):
        t.add_column(column, justify="left" if column == "case" else "right")
    for label, results in all_results.items():
        bare = [r[0] for r in results["bare replay"]]
        floor = [r[0] for r in results["ASGI on Hypercorn"]]
        for name in SYSTEMS:
            rates = [r[0] for r in results[name]]
            share = statistics.median(a / b for a, b in zip(rates, bare, strict=True))
            of_floor = statistics.median(a / b for a, b in zip(rates, floor, strict=True))
            t.add_row(
                f"{label} {name}", f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f}–{max(rates):,.0f}",
                f"{statistics.median(r[1] for r in results[name]):,.1f}",
                f"{statistics.median(r[2] for r in results[name]):,.1f}",
                f"{share:.0%}", f"{of_floor:.0%}",
                end_section=name == SYSTEMS[-1],
            )
    return t


def main() -> None:
    """Start the appliance, run every size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per sample")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians are shown)")
    parser.add_argument("--sizes", default="1KiB", help="record sizes: " + ",".join(SIZES))
    args = parser.parse_args()
    load_before = loadavg()
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        folder = Path(tmp)
        ours = ServerProcess(folder / "data").start()
        try:
            for label in args.sizes.replace(" ", "").split(","):
                all_results[label] = asyncio.run(run_size(folder, ours, label, SIZES[label], args))
        finally:
            ours.stop()
    Console(width=160).print(table(all_results, args, load_before))


if __name__ == "__main__":
    main()
