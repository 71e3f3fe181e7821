"""``appliance cp`` benchmark: two local instances, the real CLI in between.

Usage: ``python tests/bench/bench_cp.py [--small N] [--large N] [--parallel P]``

Fills a source instance with N 1 KiB records and N 1 MiB records (spread over four entries,
written with batched HTTP writes), then runs ``python -m appliance cp`` from the source to an
empty destination and reports records/s and MB/s from the command's own summary line (the
copy itself, without interpreter start-up), plus the wall time of the whole command. A second
run of the same copy shows the cost of a re-run where everything is skipped. All three
processes share this machine's cores; every loop is bounded by its record count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
ENTRIES = 4
WRITE_BATCH_BYTES = 8 * MIB
SUMMARY = re.compile(
    r"copied (\d+) record\(s\), skipped (\d+), failed (\d+).*?, (\d+) bytes in ([0-9.]+) s"
)


def fill(url: str, bucket: str, size: int, count: int) -> None:
    """Write ``count`` records of ``size`` bytes into ``bucket`` with v1 batched writes."""
    payload = os.urandom(size)
    per_batch = max(1, min(500, WRITE_BATCH_BYTES // size))
    with httpx.Client(base_url=url + "/api/v1", timeout=120) as client:
        client.post(f"/b/{bucket}").raise_for_status()
        for index in range(ENTRIES):
            todo = count // ENTRIES
            ts = 1_000_000
            while todo > 0:
                n = min(per_batch, todo)
                headers = {
                    f"x-reduct-time-{ts + i}": f"{size},application/octet-stream,k={i % 7}"
                    for i in range(n)
                }
                answer = client.post(
                    f"/b/{bucket}/entry-{index}/batch", headers=headers, content=payload * n
                )
                answer.raise_for_status()
                assert not any(h.startswith("x-reduct-error") for h in answer.headers), (
                    answer.headers
                )
                ts += n
                todo -= n


def run_cp(src: str, dst: str, parallel: int) -> tuple[int, int, int, float, float]:
    """Run the CLI; (copied, skipped, bytes, copy seconds, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RS_")}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "cp", src, dst, "--parallel", str(parallel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    wall = time.perf_counter() - started
    match = SUMMARY.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"cp failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    copied, skipped, failed, size, seconds = match.groups()
    return int(copied), int(skipped), int(size), float(seconds), wall


def main() -> None:
    """Fill, copy, copy again, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000, help="number of 1 KiB records")
    parser.add_argument("--large", type=int, default=400, help="number of 1 MiB records")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    table = Table(title=f"appliance cp between two local instances (--parallel {args.parallel})")
    for column in ("records", "run", "copied", "skipped", "copy s", "records/s", "MB/s", "wall s"):
        table.add_column(column, justify="right", no_wrap=True)
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        (root / "dst").mkdir()
        src = ServerProcess(root / "src" / "data").start()
        dst = ServerProcess(root / "dst" / "data").start()
        try:
            for label, size, count in (("1 KiB", KIB, args.small), ("1 MiB", MIB, args.large)):
                bucket = f"b{size}"
                fill(src.url, bucket, size, count)
                for run in ("first", "re-run"):
                    copied, skipped, nbytes, seconds, wall = run_cp(
                        f"{src.url}/{bucket}", f"{dst.url}/{bucket}", args.parallel
                    )
                    moved = copied + skipped
                    table.add_row(
                        f"{count:,} x {label}",
                        run,
                        f"{copied:,}",
                        f"{skipped:,}",
                        f"{seconds:.2f}",
                        f"{moved / seconds:,.0f}",
                        f"{moved * size / seconds / 1e6:,.1f}",
                        f"{wall:.2f}",
                    )
        finally:
            src.stop()
            dst.stop()
    Console(width=120).print(table)
    print("records/s and MB/s count copied + skipped records over the copy's own time;")
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
