"""The appliance side by side with PostgreSQL, the system users pick instead.

Usage: ``python tests/bench/bench_peers.py [--reps 5] [--quick] [--sizes 100KiB,1MiB]
[--read-passes 3] [--pg-page batch|write] [--tree PATH]``
(needs Debian's ``postgresql`` package and the ``bench`` extra: ``pip install -e '.[bench]'``
for asyncpg).

Same machine, same run: a private PostgreSQL cluster (``initdb`` in a temporary folder, on
127.0.0.1 and a free port, run as the ``postgres`` user because initdb refuses root; started and
stopped here) and two appliance processes (the default, and ``RS_ENGINE_SYNC_WRITES=true``).
One client at a time: reduct-py for the appliance, asyncpg for PostgreSQL (``COPY`` for
batches, a prepared ``INSERT`` per single write, keyset-paged ``SELECT`` for batched reads,
each page as many rows as our server puts in a batch: 85 of 1 KiB, 79 of 100 KiB, 8 of 1 MiB;
``--pg-page write`` pages as the write batches instead, 1,000 rows of 1 KiB).
Records of 1 KiB, 100 KiB and 1 MiB with one label; a PostgreSQL table per sample with a
``bigint`` primary key (the timestamp), a ``text`` label and ``bytea`` payload stored
uncompressed (``STORAGE EXTERNAL``: the payloads are random, as ours are stored raw).

Durability modes, each side's own switch: our default (acknowledged once in the page cache
and WAL) against ``synchronous_commit=off``, and ``RS_ENGINE_SYNC_WRITES=true`` against
``synchronous_commit=on`` (``fsync`` is on in the cluster throughout).

Fairness: every case runs on both systems back to back, their order rotated on each
repetition, and the table shows medians. Before every write sample an untimed 256 MiB ballast
file is written and deleted in the same file system (writing into page cache freed by a
just-deleted file is several times faster on this VM than growing a file), and both systems
are warmed up (PostgreSQL's first WAL segments are slow to create). Server CPU per record is
the server's user+system time (the appliance process; the postmaster and all its children)
over the sample; client CPU per record is this process's (reduct-py or asyncpg). A read
sample reads what the write sample before it stored ``--read-passes`` times over (one query
each; 96 records of 1 MiB read once take ~75 ms, a few clock ticks of CPU). Every loop is
bounded by a record count and a time budget. ``--tree`` runs the appliance from another
checkout (``git worktree add /tmp/old <commit>``), to compare two commits in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from reduct import Batch, Bucket, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.settings import Settings  # noqa: E402
from tests.bench.bench_big import ballast, checkout, cpu_seconds  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
BATCH_BYTES = 8_000_000
BATCH_RECORDS_MAX = 1000
SAMPLE_SECONDS = 10.0  # time budget of one sample, whatever its record count
# Records per sample: (batched, single). Single writes only for 1 KiB.
COUNTS = {KIB: (20_000, 2_000), 100 * KIB: (800, 0), MIB: (96, 0)}
QUICK_COUNTS = {KIB: (2_000, 200), 100 * KIB: (80, 0), MIB: (16, 0)}
SIZE_LABEL = {KIB: "1 KiB", 100 * KIB: "100 KiB", MIB: "1 MiB"}
SIZE_ARG = {label.replace(" ", ""): size for size, label in SIZE_LABEL.items()}


def sizes_arg(text: str) -> list[int]:
    """``--sizes``: a comma-separated subset of 1KiB, 100KiB, 1MiB."""
    try:
        return [SIZE_ARG[part.strip()] for part in text.split(",") if part.strip()]
    except KeyError as exc:
        raise argparse.ArgumentTypeError(
            f"unknown size {exc.args[0]!r}: one of {', '.join(SIZE_ARG)}"
        ) from None


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        sys.exit("PostgreSQL not found: apt-get install -y postgresql")
    return str(found[-1])


class Postgres:
    """A private cluster in ``folder``: initdb, start on 127.0.0.1:``port``, stop."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "pgdata"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        # initdb and postgres refuse to run as root
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        """initdb (trust auth on loopback) and start the postmaster; wait until it accepts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            [*self.prefix, pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "bench",
             "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        log = self.folder / "postgres.log"
        self.proc = subprocess.Popen(
            [*self.prefix, pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
             "-c", "fsync=on", "-c", "max_wal_size=4GB", "-c", "logging_collector=off"],
            stdout=subprocess.DEVNULL, stderr=log.open("ab") if not self.prefix else subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited at start")
            pidfile = self.data / "postmaster.pid"
            if pidfile.exists():
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and "ready" in lines[7]:
                    self.pid = int(lines[0])
                    return
            time.sleep(0.1)
        raise RuntimeError("postgres not ready after 30 s")

    def cpu(self) -> float:
        """CPU seconds of the postmaster and every child (backends, WAL writer, checkpointer)."""
        total = cpu_seconds(self.pid)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == self.pid:
                total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster); wait for it."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def per_batch(size: int) -> int:
    """Records per batch request (same rule for both systems)."""
    return max(1, min(BATCH_RECORDS_MAX, BATCH_BYTES // size))


def read_batch(size: int) -> int:
    """Records in one batch our server answers a query with at its default limits
    (``RS_IO_BATCH_MAX_RECORDS``, ``RS_IO_BATCH_MAX_SIZE``): the records are taken while the
    body is within the size limit, so the one that passes it is still in. PostgreSQL's read
    pages have this many rows, so each side answers the same number of round trips."""
    fields = Settings.model_fields
    max_records = int(fields["io_batch_max_records"].default)
    max_size = int(fields["io_batch_max_size"].default)
    return min(max_records, max_size // size + 1)


# --- the appliance ---------------------------------------------------------------------------


async def ours_batched_write(bucket: Bucket, entry: str, size: int, count: int) -> int:
    """Batched writes of ``count`` records (or as many as the time budget allows)."""
    data = os.urandom(size)
    n = per_batch(size)
    done = 0
    start = time.perf_counter()
    while done < count and time.perf_counter() - start < SAMPLE_SECONDS:
        batch = Batch()
        for i in range(done, min(count, done + n)):
            batch.add(1_000_000 + i, data, labels={"n": str(i % 10)})
        errors = await bucket.write_batch(entry, batch)
        assert not errors, errors
        done = min(count, done + n)
    return done


async def ours_single_write(bucket: Bucket, entry: str, size: int, count: int) -> int:
    """Single writes, one request per record."""
    data = os.urandom(size)
    start = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - start < SAMPLE_SECONDS:
        await bucket.write(entry, data, timestamp=1_000_000 + done, labels={"n": str(done % 10)})
        done += 1
    return done


async def ours_read(bucket: Bucket, entry: str, size: int, count: int) -> int:
    """Read every record of ``entry`` back through one query (batched reads)."""
    done = 0
    async for record in bucket.query(entry):
        data = await record.read_all()
        assert len(data) == size
        done += 1
        if done >= count:
            break
    return done


# --- PostgreSQL ------------------------------------------------------------------------------


async def pg_table(conn: asyncpg.Connection, table: str) -> None:
    """A fresh table: timestamp key, one label, raw payload."""
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.execute(
        f"CREATE TABLE {table} (ts bigint PRIMARY KEY, label text NOT NULL, data bytea NOT NULL)"
    )
    await conn.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")


async def pg_batched_write(conn: asyncpg.Connection, table: str, size: int, count: int) -> int:
    """COPY batches of the same sizes as ours (one transaction each)."""
    data = os.urandom(size)
    n = per_batch(size)
    done = 0
    start = time.perf_counter()
    while done < count and time.perf_counter() - start < SAMPLE_SECONDS:
        rows = [(1_000_000 + i, str(i % 10), data) for i in range(done, min(count, done + n))]
        await conn.copy_records_to_table(table, records=rows, columns=("ts", "label", "data"))
        done += len(rows)
    return done


async def pg_single_write(conn: asyncpg.Connection, table: str, size: int, count: int) -> int:
    """One prepared INSERT per record (autocommit: one transaction each)."""
    data = os.urandom(size)
    insert = await conn.prepare(f"INSERT INTO {table} (ts, label, data) VALUES ($1, $2, $3)")
    done = 0
    start = time.perf_counter()
    while done < count and time.perf_counter() - start < SAMPLE_SECONDS:
        await insert.fetch(1_000_000 + done, str(done % 10), data)
        done += 1
    return done


async def pg_read(conn: asyncpg.Connection, table: str, size: int, count: int,
                  rows: int) -> int:
    """Keyset-paged SELECTs of ``rows`` rows a page (as a query returns batches of records)."""
    page = await conn.prepare(
        f"SELECT ts, label, data FROM {table} WHERE ts > $1 ORDER BY ts LIMIT {rows}"
    )
    last = -1
    done = 0
    while done < count:
        rows = await page.fetch(last)
        if not rows:
            break
        for row in rows:
            assert len(row["data"]) == size
        done += len(rows)
        last = rows[-1]["ts"]
    return done


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One timed run of one case on one system."""

    records: int
    seconds: float
    cpu: float
    client_cpu: float


async def measure(run: Callable[[], Awaitable[int]], cpu: Callable[[], float]) -> Sample:
    """Time ``run``, the server CPU and the client (this process) CPU it cost."""
    cpu0 = cpu()
    client0 = time.process_time()
    start = time.perf_counter()
    n = await run()
    seconds = time.perf_counter() - start
    return Sample(n, seconds, cpu() - cpu0, time.process_time() - client0)


async def passes(n: int, read: Callable[[], Awaitable[int]]) -> int:
    """``read`` ``n`` times over (a query, or a keyset scan, each); the records read in all."""
    total = 0
    for _ in range(n):
        total += await read()
    return total


def pg_page(args: argparse.Namespace, size: int) -> int:
    """Rows per PostgreSQL read page: as many as our batch (``--pg-page batch``, the default)
    or the write batch's size (``--pg-page write``: 1,000 rows of 1 KiB, where reduct-py could
    not take a batch of that many records: aiohttp refuses a response of 128 headers or more)."""
    return read_batch(size) if args.pg_page == "batch" else per_batch(size)


async def run_all(args: argparse.Namespace, folder: Path, pg: Postgres,
                  ours: dict[str, ServerProcess]) -> dict[tuple[str, str], list[Sample]]:
    """Every case on every system, interleaved and rotated; samples by (case, system)."""
    counts = {size: n for size, n in (QUICK_COUNTS if args.quick else COUNTS).items()
              if size in args.sizes}
    results: dict[tuple[str, str], list[Sample]] = {}
    conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="bench",
                                 database="postgres")
    clients = {mode: Client(server.url, timeout=120) for mode, server in ours.items()}
    try:
        for c in clients.values():
            await c.__aenter__()
        buckets = {mode: await c.create_bucket("peer", exist_ok=True)
                   for mode, c in clients.items()}
        ours_cpu = {mode: (lambda p=server.proc.pid: cpu_seconds(p))  # type: ignore[union-attr]
                    for mode, server in ours.items()}
        # Warm-up, untimed: PostgreSQL creates its first WAL segments, both sides their files.
        await pg_table(conn, "warm")
        await conn.execute("SET synchronous_commit = off")
        await pg_batched_write(conn, "warm", MIB, 512 if not args.quick else 32)
        await conn.execute("DROP TABLE warm")
        await conn.execute("CHECKPOINT")
        for mode in ours:
            await ours_batched_write(buckets[mode], "warm", MIB, 128 if not args.quick else 16)
            await buckets[mode].remove_entry("warm")

        serial = 0
        for rep in range(args.reps):
            for mode, pg_commit in (("default", "off"), ("sync", "on")):
                await conn.execute(f"SET synchronous_commit = {pg_commit}")
                bucket = buckets[mode]
                for size, (n_batched, n_single) in counts.items():
                    cases = [("batched writes", n_batched)]
                    if n_single:
                        cases.append(("single writes", n_single))
                    for case, n in cases:
                        serial += 1
                        name = f"t{serial}"
                        await pg_table(conn, name)
                        if case == "batched writes":
                            pg_fn, ours_fn = pg_batched_write, ours_batched_write
                        else:
                            pg_fn, ours_fn = pg_single_write, ours_single_write

                        async def do_pg(fn=pg_fn, name=name, size=size, n=n) -> Sample:
                            ballast(folder)
                            return await measure(lambda: fn(conn, name, size, n), pg.cpu)

                        async def do_ours(fn=ours_fn, name=name, size=size, n=n) -> Sample:
                            ballast(folder)
                            return await measure(lambda: fn(bucket, name, size, n),
                                                 ours_cpu[mode])

                        order = [("pg", do_pg), ("ours", do_ours)]
                        if (rep + serial) % 2:
                            order.reverse()
                        key = f"{SIZE_LABEL[size]} {case}"
                        for system, do in order:
                            results.setdefault((f"{key}|{mode}", system), []).append(await do())
                        if case == "batched writes" and mode == "default":
                            reads = [
                                ("pg", lambda name=name, size=size, n=n: measure(
                                    lambda: passes(args.read_passes, lambda: pg_read(
                                        conn, name, size, n, pg_page(args, size))), pg.cpu)),
                                ("ours", lambda name=name, size=size, n=n, b=bucket,
                                 cpu=ours_cpu[mode]: measure(
                                    lambda: passes(args.read_passes, lambda: ours_read(
                                        b, name, size, n)), cpu)),
                            ]
                            if rep % 2:
                                reads.reverse()
                            for system, do in reads:
                                results.setdefault(
                                    (f"{SIZE_LABEL[size]} batched reads|{mode}", system), []
                                ).append(await do())
                        await conn.execute(f"DROP TABLE {name}")
                        await bucket.remove_entry(name)
    finally:
        await conn.close()
        for c in clients.values():
            await c.__aexit__(None, None, None)
    return results


def micros(value: float) -> str:
    """µs for the table: one decimal below 100 (a small record's few µs), whole above."""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def table(results: dict[tuple[str, str], list[Sample]], reps: int) -> Table:
    """Medians per case: records/s and server CPU µs/record on each side, and the ratio."""
    t = Table(title=f"appliance vs PostgreSQL, one client, {os.cpu_count()} cores, "
              f"medians of {reps}")
    for column in ("case", "durability", "ours rec/s", "pg rec/s", "ours/pg",
                   "ours CPU µs/rec", "pg CPU µs/rec", "client CPU µs/rec ours / pg"):
        t.add_column(column, justify="left" if column in ("case", "durability") else "right")
    sizes = list(SIZE_LABEL.values())

    def order(key: str) -> tuple[int, str, bool]:
        case, mode = key.split("|")
        return sizes.index(" ".join(case.split()[:2])), case, mode != "default"

    keys = sorted({k for k, _ in results}, key=order)
    for key in keys:
        case, mode = key.split("|")
        ours = results[(key, "ours")]
        pg = results[(key, "pg")]
        ours_rate = statistics.median(s.records / s.seconds for s in ours)
        pg_rate = statistics.median(s.records / s.seconds for s in pg)
        ours_cpu = statistics.median(s.cpu / s.records * 1e6 for s in ours)
        pg_cpu = statistics.median(s.cpu / s.records * 1e6 for s in pg)
        ours_client = statistics.median(s.client_cpu / s.records * 1e6 for s in ours)
        pg_client = statistics.median(s.client_cpu / s.records * 1e6 for s in pg)
        durability = ("reads" if "reads" in case else
                      "ours default / pg synchronous_commit=off" if mode == "default" else
                      "ours RS_ENGINE_SYNC_WRITES / pg synchronous_commit=on")
        t.add_row(case, durability, f"{ours_rate:,.0f}", f"{pg_rate:,.0f}",
                  f"{ours_rate / pg_rate:.2f}x", micros(ours_cpu), micros(pg_cpu),
                  f"{micros(ours_client)} / {micros(pg_client)}")
    return t


def main() -> None:
    """Start PostgreSQL and both appliances, run every case, print the table, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (medians)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the script")
    parser.add_argument("--sizes", type=sizes_arg, default=list(SIZE_LABEL),
                        help="record sizes to run, e.g. 100KiB,1MiB (default: all three)")
    parser.add_argument("--read-passes", type=int, default=3,
                        help="times each read sample reads the records back (one query each)")
    parser.add_argument("--pg-page", choices=("batch", "write"), default="batch",
                        help="rows per PostgreSQL read page: our read batch's count (default) "
                             "or the write batch's (1,000 rows of 1 KiB)")
    parser.add_argument("--tree", type=Path, help="run the appliance from this checkout")
    args = parser.parse_args()
    args.tree = checkout(parser, args.tree)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)  # the postgres user must reach its folder inside
        if shutil.disk_usage(folder).free < 4 * 1024 * MIB:
            sys.exit("need 4 GiB free")
        load0 = os.getloadavg()[0]
        pg = Postgres(folder / "pg")
        ours = {
            "default": ServerProcess(folder / "ours-default" / "data", cwd=args.tree),
            "sync": ServerProcess(folder / "ours-sync" / "data",
                                  env={"RS_ENGINE_SYNC_WRITES": "true"}, cwd=args.tree),
        }
        try:
            pg.start()
            for server in ours.values():
                server.data_path.parent.mkdir(parents=True, exist_ok=True)
                server.start()
            results = asyncio.run(run_all(args, folder, pg, ours))
        finally:
            for server in ours.values():
                if server.proc is not None:
                    server.stop()
            pg.stop()
        load1 = os.getloadavg()[0]
    console = Console(width=160)
    console.print(table(results, args.reps))
    console.print(f"load average {load0:.2f} before, {load1:.2f} after")


if __name__ == "__main__":
    main()
