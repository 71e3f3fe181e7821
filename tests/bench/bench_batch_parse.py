"""In-process microbenchmark of the batch-write header parsers: the column pass of
``batch_codec.fast`` against its per-header loop (``_parse_v1_loop`` / ``_parse_v2_loop``, what
the fast parsers were before issue 15's fourth round), alternated.

Usage: ``python tests/bench/bench_batch_parse.py [--repeat 5] [--records 1000]``

The headers are what reduct-py 1.21 sends for a batch of ``--records`` 1 KiB records with
labels cycling through ten values (as ``bench_api.py`` writes them), beside the usual request
headers. The young-generation GC threshold is the server's (``server.tune_gc``). Each
repetition times both variants for ~0.5 s each, in turns; µs per record, medians and ranges.
Not collected by pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from reduct.batch.batch_v1 import Batch, make_headers_v1
from reduct.batch.batch_v2 import RecordBatch, make_headers_v2
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.api.batch_codec import fast  # noqa: E402
from appliance.server import tune_gc  # noqa: E402

BASE = [(b"host", b"127.0.0.1:8383"), (b"user-agent", b"reduct-py"),
        (b"authorization", b"Bearer token"), (b"content-type", b"application/octet-stream")]


def raw(headers: dict[str, str], length: int) -> list[tuple[bytes, bytes]]:
    """ASGI raw headers as the server hands them over."""
    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return BASE + pairs + [(b"content-length", str(length).encode())]


def per_record(fn: Callable[[], object], records: int, seconds: float = 0.5) -> float:
    """µs per record of ``fn`` (one batch a call), over about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and calls < 100_000:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls / records * 1e6


def main() -> None:
    """Time both parsers on both protocols and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    tune_gc()
    n = args.records
    v1, v2 = Batch(), RecordBatch()
    for i in range(n):
        v1.add(10**15 + i, b"x" * 1024, labels={"n": str(i % 10)})
        v2.add("e", 10**15 + i, b"x" * 1024, labels={"n": str(i % 10)})
    raw1 = raw(make_headers_v1(v1)[1], 1024 * n)
    raw2 = raw(make_headers_v2(v2)[1], 1024 * n)
    assert fast.parse_v1_write(raw1, "e") == fast._parse_v1_loop(raw1, "e")  # noqa: SLF001
    assert fast.parse_v2_write(raw2) == fast._parse_v2_loop(raw2)  # noqa: SLF001
    cases = {
        "v1 (x-reduct-time-*)": (lambda: fast._parse_v1_loop(raw1, "e"),  # noqa: SLF001
                                 lambda: fast.parse_v1_write(raw1, "e")),
        "v2 (x-reduct-<i>-<d>)": (lambda: fast._parse_v2_loop(raw2),  # noqa: SLF001
                                  lambda: fast.parse_v2_write(raw2)),
    }
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for rep in range(args.repeat):
        for name, (loop, columns) in cases.items():
            pair = [(0, loop), (1, columns)]
            for slot, fn in pair if rep % 2 == 0 else pair[::-1]:
                results[name][slot].append(per_record(fn, n))
    table = Table(title=f"batch-write header parsing, {n} records, µs per record, median of "
                        f"{args.repeat}")
    for column in ("case", "per-header loop", "range", "column pass", "range", "speed-up"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, (loop_t, col_t) in results.items():
        a, b = statistics.median(loop_t), statistics.median(col_t)
        table.add_row(name, f"{a:.2f}", f"{min(loop_t):.2f}–{max(loop_t):.2f}", f"{b:.2f}",
                      f"{min(col_t):.2f}–{max(col_t):.2f}", f"{a / b:.2f}×")
    console = Console(width=120)
    console.print(table)
    console.print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
