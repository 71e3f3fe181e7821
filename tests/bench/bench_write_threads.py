"""Server CPU per 1 KiB record of batched writes (v1 and v2), split into the event loop's
thread and all the others (the engine's), for several code trees alternated.

Usage::

    python tests/bench/bench_write_threads.py [--seconds 4] [--rounds 4] [label=path ...]

Each ``label=path`` is a folder holding an ``appliance/`` package (e.g. a commit exported with
``git archive <commit> appliance | tar -x -C path``); the server of that tree is started with
``PYTHONPATH=path`` (run this from a folder without an ``appliance/`` of its own, as ``python -m``
puts the current folder first). Without one, the installed code is measured. Per round and
tree: a fresh server, reduct-py batches of 1,000 1 KiB records with labels cycling through ten
values (as ``bench_api.py`` writes them) for ``--seconds`` per protocol, and the CPU time of
each server thread (``/proc/<pid>/task/*/stat``) divided by the records. The trees take turns
first. Medians and ranges over the rounds; every loop is bounded by time. Not collected by
pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from reduct import Batch, Client, RecordBatch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[task.name] = (int(fields[11]) + int(fields[12])) / TICK
    return out


async def run_tree(tree: str | None, seconds: float) -> dict[str, tuple[float, float]]:
    """{protocol: (loop µs, other threads µs) per record} for one fresh server."""
    with tempfile.TemporaryDirectory(prefix="bench_write_threads.") as tmp:
        # The data in a subfolder, so the server's log (written beside it) goes too.
        server = ServerProcess(Path(tmp) / "data", env={"PYTHONPATH": tree} if tree else None)
        return await _drive(server.start(), seconds)


async def _drive(server: ServerProcess, seconds: float) -> dict[str, tuple[float, float]]:
    pid = str(server.proc.pid)
    result = {}
    try:
        async with Client(server.url, api_token=getattr(server, "token", None) or "") as client:
            bucket = await client.create_bucket("b", exist_ok=True)
            data = os.urandom(1024)
            ts = 10**9
            for protocol in ("v1", "v2"):
                before, count = thread_cpu(server.proc.pid), 0
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    if protocol == "v1":
                        batch = Batch()
                        for i in range(1000):
                            batch.add(ts + i, data, labels={"n": str(i % 10)})
                        await bucket.write_batch("e", batch)
                    else:
                        batch2 = RecordBatch()
                        for i in range(1000):
                            batch2.add("f", ts + i, data, labels={"n": str(i % 10)})
                        await bucket.write_record_batch(batch2)
                    ts += 1000
                    count += 1000
                after = thread_cpu(server.proc.pid)
                loop = after[pid] - before.get(pid, 0.0)
                other = sum(v - before.get(k, 0.0) for k, v in after.items() if k != pid)
                result[protocol] = (1e6 * loop / count, 1e6 * other / count)
    finally:
        server.stop()
    return result


async def main() -> None:
    """Alternate the trees for the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("trees", nargs="*", help="label=path of a folder with appliance/")
    args = parser.parse_args()
    trees = [tuple(t.split("=", 1)) for t in args.trees] or [("installed", None)]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for label, tree in trees if r % 2 == 0 else trees[::-1]:
            for protocol, pair in (await run_tree(tree, args.seconds)).items():
                samples.setdefault((label, protocol), []).append(pair)
    table = Table(title=f"batched 1 KiB writes, server CPU µs per record by thread, median of "
                        f"{args.rounds}")
    for column in ("tree", "protocol", "event loop", "other threads", "total", "range"):
        table.add_column(column, justify="left" if column in ("tree", "protocol") else "right")
    for (label, protocol), pairs in samples.items():
        totals = [a + b for a, b in pairs]
        table.add_row(
            label, protocol, f"{statistics.median(a for a, _ in pairs):.2f}",
            f"{statistics.median(b for _, b in pairs):.2f}", f"{statistics.median(totals):.2f}",
            f"{min(totals):.2f}–{max(totals):.2f}",
        )
    console = Console(width=120)
    console.print(table)
    after = os.getloadavg()
    console.print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, "
                  f"after {after[0]:.2f} {after[1]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
