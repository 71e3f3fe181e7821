"""In-process cost of the engine's batch write per record (no HTTP): ``Bucket.write_batch``.

Usage: ``python tests/bench/bench_write_batch.py [--batches 200] [--records 1000] [--size 1024]
[--repeat 3] [--profile]``

Writes ``--batches`` batches of ``--records`` records of ``--size`` bytes into one entry of a
fresh folder (default bucket settings, so full blocks are flushed inside the batches as in the
server), the way the HTTP batch parsers hand them over (one labels dict shared by the batch).
Prints, per repetition and as the median, the wall time and the process CPU time per record;
the CPU figure is the one to compare (the flushes' ``fsync`` waits are wall time only).
``--profile`` runs one more repetition under cProfile and prints the top functions.
Not collected by pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.engine import Storage  # noqa: E402
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord  # noqa: E402

T0 = 1_700_000_000_000_000


def run_once(root: Path, batches: int, count: int, size: int) -> tuple[float, float]:
    """Write the batches into a fresh storage; (wall s, CPU s) spent in ``write_batch``."""
    storage = Storage.open(EngineOptions(data_path=root))
    try:
        bucket = storage.create_bucket("bench", BucketSettings())
        data = os.urandom(size)
        labels = {"sensor": "a", "kind": "bench"}
        wall = cpu = 0.0
        ts = T0
        for _ in range(batches):
            records = [NewRecord(ts + i, data, "application/octet-stream", labels)
                       for i in range(count)]
            ts += count
            w0, c0 = time.perf_counter(), time.process_time()
            errors = bucket.write_batch("entry", records)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            assert not errors, errors
    finally:
        storage.close()
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    """Run the repetitions and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    gc.set_threshold(50_000)  # what the server runs with (server.tune_gc)
    total = args.batches * args.records
    rows: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-wb-") as tmp:
        for n in range(args.repeat):
            wall, cpu = run_once(Path(tmp) / f"run{n}", args.batches, args.records, args.size)
            rows.append((wall / total * 1e6, cpu / total * 1e6))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run_once(Path(tmp) / "profiled", args.batches, args.records, args.size)
            profiler.disable()
    table = Table(title=f"write_batch: {args.batches} × {args.records} records of {args.size} B")
    for column in ("repetition", "wall µs/record", "CPU µs/record"):
        table.add_column(column, justify="right")
    for n, (wall, cpu) in enumerate(rows, 1):
        table.add_row(str(n), f"{wall:.2f}", f"{cpu:.2f}")
    walls = [r[0] for r in rows]
    cpus = [r[1] for r in rows]
    table.add_row(
        "median (range)",
        f"{statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f})",
        f"{statistics.median(cpus):.2f} ({min(cpus):.2f}–{max(cpus):.2f})",
    )
    console = Console()
    console.print(table)
    console.print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
