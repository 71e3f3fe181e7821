"""Engine benchmark (no HTTP): write and read throughput beside a raw file-write baseline.

Usage: ``python tests/bench/bench_engine.py [--quick] [--seconds 3] [--dir /path/on/target/disk]``

For 1 KiB and 1 MiB records, measured in one run on one folder:

- raw baselines: the same bytes written sequentially to one plain file, then closed; one new
  file per record (open + write + close); both without fsync; and, as the ceiling for durable
  writes, one ``write`` + ``fsync`` per record; each baseline is the best of 3 runs (a ceiling);
- ``write_record``: single-record writes, one thread;
- ``write_batch``: batches of 100 records (1 KiB only);
- ``begin_write``: streamed writes in 64 KiB chunks (1 MiB only);
- reads: ``iter_records`` + ``read_payload`` of everything written by ``write_record``
  (payload checksum verified by the engine);
- ``sync_writes=True``: ``write_record`` from 1 thread, then from 8 threads writing into 8
  entries, then from 8 threads writing into one entry; group commit lets concurrent writes share
  a round of fsyncs (one fsync per file touched in the round: writes into the same entry share
  files, writes into different entries do not).

fsync cost on a shared VM disk varies a lot from second to second: compare rows of one run, and
run twice before drawing conclusions.

Each case stops after a fixed record count or after ``--seconds`` (default 3; 1 with ``--quick``),
whichever comes first; ``compact()`` and ``close()`` are outside the timed part. Results are
records/s and MB/s (10^6 bytes). Not collected by pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.engine import Bucket, Storage  # noqa: E402
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
SIZES = {"1 KiB": KIB, "1 MiB": MIB}
MAX_RECORDS = {KIB: 200_000, MIB: 2_000}
BATCH_RECORDS = 100
STREAM_CHUNK = 64 * KIB
SYNC_THREADS = 8
T0 = 1_700_000_000_000_000


@dataclass
class Result:
    case: str
    size_label: str
    records: int
    seconds: float
    record_size: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.records * self.record_size / self.seconds / 1e6 if self.seconds else 0.0


def budget(limit: int, seconds: float) -> Callable[[int], bool]:
    """True while fewer than ``limit`` records are done and the time budget is not spent."""
    start = time.perf_counter()
    return lambda done: done < limit and time.perf_counter() - start < seconds


def raw_sequential(folder: Path, data: bytes, limit: int, seconds: float) -> tuple[int, float]:
    path = folder / "raw.bin"
    more = budget(limit, seconds)
    done = 0
    start = time.perf_counter()
    with path.open("wb") as f:
        while more(done):
            f.write(data)
            done += 1
    elapsed = time.perf_counter() - start
    path.unlink()
    return done, elapsed


def raw_file_per_record(folder: Path, data: bytes, limit: int, seconds: float) -> tuple[int, float]:
    """One new file per record: open, write, close (no fsync)."""
    target = folder / "raw-files"
    target.mkdir()
    more = budget(limit, seconds)
    done = 0
    start = time.perf_counter()
    while more(done):
        with (target / f"{done}.bin").open("wb") as f:
            f.write(data)
        done += 1
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    return done, elapsed


def warm_up(folder: Path) -> None:
    """Write and drop 64 MiB so the first measured case does not pay for a cold disk."""
    path = folder / "warm-up.bin"
    chunk = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(64):
            f.write(chunk)
    path.unlink()


def raw_fsync_each(folder: Path, data: bytes, limit: int, seconds: float) -> tuple[int, float]:
    path = folder / "raw-sync.bin"
    more = budget(limit, seconds)
    done = 0
    start = time.perf_counter()
    with path.open("wb", buffering=0) as f:
        while more(done):
            f.write(data)
            os.fsync(f.fileno())
            done += 1
    elapsed = time.perf_counter() - start
    path.unlink()
    return done, elapsed


def best_of(
    runs: int, measure: Callable[[float], tuple[int, float]], seconds: float
) -> tuple[int, float]:
    """The fastest of ``runs`` runs, each with a share of the budget (a baseline is a ceiling:
    the first write to a fresh file on a VM is often several times slower than the next)."""
    results = [measure(seconds / runs) for _ in range(runs)]
    return max(results, key=lambda r: r[0] / r[1] if r[1] else 0.0)


class Bench:
    def __init__(self, root: Path, seconds: float, quick: bool) -> None:
        self.root = root
        self.seconds = seconds
        self.quick = quick
        self.results: list[Result] = []
        self.runs = 0

    def limit(self, size: int) -> int:
        return MAX_RECORDS[size] // (10 if self.quick else 1)

    def open(self, sync: bool) -> tuple[Storage, Path]:
        self.runs += 1
        path = self.root / f"engine-{self.runs}"
        storage = Storage.open(EngineOptions(data_path=path, sync_writes=sync))
        storage.create_bucket("bench", BucketSettings())
        return storage, path

    def add(self, case: str, label: str, size: int, done: int, elapsed: float) -> None:
        self.results.append(Result(case, label, done, elapsed, size))

    def run_size(self, label: str, size: int) -> None:
        data = os.urandom(size)
        limit = self.limit(size)
        self.add(
            "raw: one file, write all, close",
            label,
            size,
            *best_of(3, lambda t: raw_sequential(self.root, data, limit, t), self.seconds),
        )
        self.add(
            "raw: file per record, open+write+close",
            label,
            size,
            *best_of(3, lambda t: raw_file_per_record(self.root, data, limit, t), self.seconds),
        )

        storage, path = self.open(sync=False)
        bucket = storage.get_bucket("bench")
        more = budget(limit, self.seconds)
        done = 0
        start = time.perf_counter()
        while more(done):
            bucket.write_record("single", T0 + done, data, "application/octet-stream", {"n": "1"})
            done += 1
        self.add("engine write_record", label, size, done, time.perf_counter() - start)

        if size <= 64 * KIB:
            more = budget(limit, self.seconds)
            done = 0
            start = time.perf_counter()
            while more(done):
                records = [
                    NewRecord(T0 + done + i, data, "application/octet-stream", {"n": "1"})
                    for i in range(BATCH_RECORDS)
                ]
                errors = bucket.write_batch("batch", records)
                assert not errors, errors
                done += BATCH_RECORDS
            self.add(
                f"engine write_batch ({BATCH_RECORDS}/batch)",
                label,
                size,
                done,
                time.perf_counter() - start,
            )
        else:
            more = budget(limit, self.seconds)
            done = 0
            start = time.perf_counter()
            while more(done):
                writer = bucket.begin_write(
                    "stream", T0 + done, size, "application/octet-stream", {}
                )
                for i in range(0, size, STREAM_CHUNK):
                    writer.write(data[i : i + STREAM_CHUNK])
                writer.finish()
                done += 1
            self.add(
                "engine begin_write (64 KiB chunks)", label, size, done, time.perf_counter() - start
            )

        storage.compact()
        storage.close()
        storage = Storage.open(EngineOptions(data_path=path))  # cold: nothing cached
        entry = storage.get_bucket("bench").get_entry("single")
        more = budget(limit, self.seconds)
        done = 0
        start = time.perf_counter()
        for meta in entry.iter_records(0, 2**64 - 1):
            if not more(done):
                break
            blob = entry.read_payload(meta)
            assert len(blob) == size
            done += 1
        self.add("engine iter_records+read_payload", label, size, done, time.perf_counter() - start)
        storage.close()
        shutil.rmtree(path)

        sync_limit = limit
        self.add(
            "raw: write+fsync per record",
            label,
            size,
            *best_of(3, lambda t: raw_fsync_each(self.root, data, sync_limit, t), self.seconds),
        )
        storage, path = self.open(sync=True)
        bucket = storage.get_bucket("bench")
        more = budget(sync_limit, self.seconds)
        done = 0
        start = time.perf_counter()
        while more(done):
            bucket.write_record("sync", T0 + done, data, "application/octet-stream", {})
            done += 1
        self.add(
            "sync_writes write_record, 1 thread", label, size, done, time.perf_counter() - start
        )

        for one_entry in (False, True):
            self.add(
                f"sync_writes write_record, {SYNC_THREADS} threads, "
                + ("one entry" if one_entry else f"{SYNC_THREADS} entries"),
                label,
                size,
                *self.threaded_writes(bucket, data, sync_limit, one_entry),
            )
        storage.close()
        shutil.rmtree(path)

    def threaded_writes(
        self, bucket: Bucket, data: bytes, limit: int, one_entry: bool
    ) -> tuple[int, float]:
        """``SYNC_THREADS`` threads writing at once: into one entry each, or all into one."""
        counts = [0] * SYNC_THREADS
        more = budget(limit, self.seconds)
        first = T0 + 10**9 * (2 if one_entry else 1)

        def worker(n: int) -> None:
            name = "sync-shared" if one_entry else f"sync-{n}"
            while more(sum(counts)):
                ts = first + counts[n] * SYNC_THREADS + n
                bucket.write_record(name, ts, data, "application/octet-stream", {})
                counts[n] += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(SYNC_THREADS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts), time.perf_counter() - start

    def table(self) -> Table:
        table = Table(
            title=f"Engine throughput ({'quick' if self.quick else 'full'}, "
            f"≤{self.seconds:g} s per case, folder {self.root})"
        )
        for column in ("case", "record", "records", "seconds", "records/s", "MB/s"):
            table.add_column(column, justify="left" if column in ("case", "record") else "right")
        for r in self.results:
            table.add_row(
                r.case,
                r.size_label,
                f"{r.records}",
                f"{r.seconds:.2f}",
                f"{r.records_per_s:,.0f}",
                f"{r.mb_per_s:,.1f}",
            )
        return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 s and a tenth of the records per case"
    )
    parser.add_argument("--seconds", type=float, default=None, help="time budget per case")
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    root = Path(tempfile.mkdtemp(prefix="bench-engine-", dir=args.dir))
    bench = Bench(root, seconds, args.quick)
    try:
        warm_up(root)
        for label, size in SIZES.items():
            bench.run_size(label, size)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Console(width=110).print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
