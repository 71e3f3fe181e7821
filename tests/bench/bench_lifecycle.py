"""Lifecycle benchmark: the longest write latency while a run removes 100,000 records.

Usage: ``python tests/bench/bench_lifecycle.py [--records 100000] [--dir /path/on/target/disk]``

One engine on a temporary folder. Entry ``old`` gets ``--records`` 1 KiB-ish records aged 10 days
(written in batches, compacted); a lifecycle policy (``older_than: 1d``) then removes them all in
one run (``appliance.lifecycle.runner.run_policy``) while a writer thread keeps writing fresh
100-byte records into the same entry and into another one, timing every write. Cases:

- ``no run``: the writer alone (baseline), for as long as the chunked run takes;
- ``run, per block``: the real runner (one block, at most ``REMOVE_CHUNK`` records, per
  entry-lock hold);
- ``run, chunk 256``: chunks of 256 records that split blocks (each block rewritten 4 times);
- ``run, one chunk``: every timestamp in one ``remove_unchecked`` call (what a naive
  implementation does), to show what the chunking buys.

Printed: run duration, records removed, writes done, and the writes' p50 / p99 / max latency in
ms, per target entry. Not collected by pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.engine import Storage  # noqa: E402
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord  # noqa: E402
from appliance.lifecycle import runner  # noqa: E402
from appliance.lifecycle.policy import parse_policy  # noqa: E402

DAY_US = 86_400 * 1_000_000
BATCH = 1000


def _fill(storage: Storage, records: int, now_us: int) -> None:
    bucket = storage.get_bucket("b")
    base = now_us - 10 * DAY_US
    for start in range(0, records, BATCH):
        batch = [
            NewRecord(base + i, b"x" * 200, labels={"n": str(i % 7)})
            for i in range(start, min(start + BATCH, records))
        ]
        bucket.write_batch("old", batch)
    storage.compact()


def _writer(storage: Storage, entry: str, stop: threading.Event, out: list[float]) -> None:
    bucket = storage.get_bucket("b")
    ts = int(time.time() * 1_000_000)
    while not stop.is_set() and len(out) < 200_000:
        ts += 1
        began = time.perf_counter()
        bucket.write_record(entry, ts, b"y" * 100, "application/octet-stream", {})
        out.append(time.perf_counter() - began)
        time.sleep(0.0005)  # ~a steady sensor stream, not a write storm


def _case(root: Path, records: int, mode: str, seconds: float | None) -> dict[str, object]:
    folder = root / mode.replace(" ", "_").replace(",", "")
    storage = Storage.open(EngineOptions(data_path=folder, integrity_checks=False))
    storage.create_bucket("b", BucketSettings(max_block_records=1024))
    now_us = int(time.time() * 1_000_000)
    _fill(storage, records, now_us)
    policy = parse_policy({"type": "delete", "bucket": "b", "older_than": "1d",
                           "entries": ["old"], "processing_interval": "30d"})
    stop = threading.Event()
    same: list[float] = []
    other: list[float] = []
    threads = [
        threading.Thread(target=_writer, args=(storage, "old", stop, same)),
        threading.Thread(target=_writer, args=(storage, "fresh", stop, other)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # writers warmed up
    began = time.perf_counter()
    removed = 0
    if mode == "no run":
        time.sleep(seconds or 1.0)
    else:
        saved = runner.REMOVE_CHUNK, runner._chunks  # noqa: SLF001 - the variants compared
        if mode == "run, chunk 256":
            runner._chunks = lambda items, _ids, _size: (  # noqa: SLF001
                items[i : i + 256] for i in range(0, len(items), 256)
            )
        elif mode == "run, one chunk":
            runner._chunks = lambda items, _ids, _size: iter([items])  # noqa: SLF001
        try:
            report = runner.run_policy(storage, policy, {}, now_us)
        finally:
            runner.REMOVE_CHUNK, runner._chunks = saved  # noqa: SLF001
        removed = report.removed
    duration = time.perf_counter() - began
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    storage.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {"mode": mode, "duration": duration, "removed": removed, "same": same, "other": other}


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    if q >= 1.0:
        return f"{max(values) * 1000:.1f}"
    return f"{statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run the three cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-lifecycle-", dir=args.dir))
    try:
        real = _case(root, args.records, "run, per block", None)
        rows = [
            _case(root, args.records, "no run", float(real["duration"])),  # type: ignore[arg-type]
            real,
            _case(root, args.records, "run, chunk 256", None),
            _case(root, args.records, "run, one chunk", None),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"Write latency while a lifecycle run removes {args.records:,} records")
    for column in ("case", "run s", "removed", "target", "writes", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column in ("case", "target") else "right")
    for row in rows:
        for target in ("same", "other"):
            lat: list[float] = row[target]  # type: ignore[assignment]
            table.add_row(
                str(row["mode"]), f"{row['duration']:.2f}", f"{row['removed']:,}",
                "same entry" if target == "same" else "other entry", f"{len(lat):,}",
                _ms(lat, 0.5), _ms(lat, 0.99), _ms(lat, 1.0),
            )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
