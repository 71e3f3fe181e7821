"""HTTP API benchmark with the real reduct-py client over loopback, beside its ceilings.

Usage: ``python tests/bench/bench_api.py [--seconds 3] [--repeat 3] [--sizes 1KiB,100KiB,1MiB]
[--only single,v1,v2,reads] [--ceiling-parser h11] [--read-records N] [--tree PATH] [--quick]``

For 1 KiB, 100 KiB and 1 MiB records it measures, against ``python -m appliance``: single
writes, batched writes (protocol v1 ``POST /b/{bucket}/{entry}/batch`` and v2
``POST /io/{bucket}/write``) and batched reads (a query). Each case is paired with its ceiling,
measured right next to it with the very same client code:

- writes: a Quart+Hypercorn app whose handlers drain the body and do nothing (``empty_app.py``,
  same Hypercorn config and event loop; with ``--ceiling-parser h11`` it keeps h11's own header
  parsing while the appliance uses ``appliance.http1``'s, the stock Quart+Hypercorn ceiling);
- reads: a bare HTTP server replaying the batched-read responses captured from the appliance
  (``replay_server.py``): what reduct-py can receive and parse.

Every repetition runs every pair, alternating which of the two goes first; the table shows the
median records/s over the repetitions (and their range), the ratio ours/ceiling (median of the
per-repetition ratios), and CPU time per record of the server process (all its threads, from
``/proc``) and of this client process. Raw sequential disk writes in the same folder are
measured before and after the cases (on a VM the first touch of page-cache memory can cost far
more than a rewrite of memory the guest used before). The load average is printed before and
after. Every loop is bounded by a record count and a time budget. Client and servers share this
machine's cores, so compare rows of one run.

The reads read one entry, written once before them: as many records as the v1 case writes in
``--seconds``, or ``--read-records``. Its name in the table gives its records and blocks: more
blocks than the server's block cache holds (64) and every pass decodes each block again, as
when reading history; fewer and the passes after the first find them decoded. ``--tree`` runs
the appliance from another checkout (``git worktree add /tmp/old <commit>``), to compare two
commits in turn.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from reduct import Batch, Bucket, Client, RecordBatch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.http1 import PARSER_ENV  # noqa: E402
from tests.bench.bench_big import checkout  # noqa: E402
from tests.e2e.server import ServerProcess, free_port  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
SIZES = {"1KiB": KIB, "100KiB": 100 * KIB, "1MiB": MIB}
BATCH_BYTES = 8_000_000
BATCH_RECORDS_MAX = 1000
CAPTURE_BYTES = 64 * MIB  # batched-read responses kept for the replay ceiling
CAPTURE_BATCHES = 200
TICKS = os.sysconf("SC_CLK_TCK")
KINDS = ("single", "v1", "v2", "reads")


def raw_disk_mb_per_s(folder: Path, total: int = 256 * MIB) -> float:
    """Sequential 1 MiB writes of ``total`` bytes to one file (no fsync, like the server)."""
    chunk = os.urandom(MIB)
    path = folder / "raw.bin"
    start = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(total // MIB):
            f.write(chunk)
    elapsed = time.perf_counter() - start
    path.unlink()
    return total / elapsed / 1e6


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads), from ``/proc/pid/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Sample:
    """One timed run of one case."""

    count: int
    elapsed: float
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.count / self.elapsed if self.elapsed else 0.0


@dataclass
class Case:
    """A named case: how to run it once, which process serves it, and its samples."""

    name: str
    size: int
    pid: Callable[[], int]
    run: Callable[[float, int], Awaitable[tuple[int, float]]]
    samples: list[Sample] = field(default_factory=list)

    async def measure(self, seconds: float, limit: int) -> Sample:
        """Run once; keep and return the sample with the server's and our CPU time."""
        pid = self.pid()
        cpu0, client0 = process_cpu(pid), time.process_time()
        count, elapsed = await self.run(seconds, limit)
        sample = Sample(
            count, elapsed, process_cpu(pid) - cpu0, time.process_time() - client0
        )
        self.samples.append(sample)
        return sample


class Stamps:
    """Fresh, increasing timestamps per entry (repetitions must not overwrite records)."""

    def __init__(self, start: int = 1_000_000) -> None:
        self._start = start
        self._next: dict[str, int] = {}

    def take(self, key: str, n: int) -> int:
        """The first of ``n`` unused timestamps of ``key``."""
        first = self._next.get(key, self._start)
        self._next[key] = first + n
        return first


STAMPS = Stamps()


async def single_writes(bucket: Bucket, entry: str, size: int, seconds: float, limit: int) -> tuple[int, float]:
    """Sequential single-record writes until the time or count budget runs out."""
    data = os.urandom(size)
    key = f"{bucket.name}/{entry}"
    count = 0
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        ts = STAMPS.take(key, 1)
        await bucket.write(entry, data, timestamp=ts, labels={"n": str(count % 10)})
        count += 1
    return count, time.perf_counter() - start


def per_batch(size: int) -> int:
    """Records per batch: up to 8 MB and 1000 records."""
    return max(1, min(BATCH_RECORDS_MAX, BATCH_BYTES // size))


async def batched_writes(
    bucket: Bucket, entry: str, size: int, seconds: float, limit: int, v2: bool
) -> tuple[int, float]:
    """Batches (v1 or v2 protocol) of up to 8 MB / 1000 records until a budget runs out."""
    data = os.urandom(size)
    n = per_batch(size)
    key = f"{bucket.name}/{entry}"
    count = 0
    start = time.perf_counter()
    while count < limit and time.perf_counter() - start < seconds:
        ts = STAMPS.take(key, n)
        if v2:
            batch2 = RecordBatch()
            for i in range(n):
                batch2.add(entry, ts + i, data, labels={"n": str(i % 10)})
            errors2 = await bucket.write_record_batch(batch2)
            assert not any(errors2.values()), errors2
        else:
            batch = Batch()
            for i in range(n):
                batch.add(ts + i, data, labels={"n": str(i % 10)})
            errors = await bucket.write_batch(entry, batch)
            assert not errors, errors
        count += n
    return count, time.perf_counter() - start


async def batched_reads(bucket: Bucket, entry: str, seconds: float, limit: int) -> tuple[int, float]:
    """Read the records of ``entry`` through a query until the end or a budget runs out."""
    count = 0
    start = time.perf_counter()
    async for record in bucket.query(entry):
        await record.read_all()
        count += 1
        if count >= limit or (count % 64 == 0 and time.perf_counter() - start > seconds):
            break
    return count, time.perf_counter() - start


def capture_reads(url: str, bucket: str, entry: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """The batched-read responses of a query of ``entry`` (as reduct-py 1.21 asks: API v2)."""
    captured: list[tuple[int, list[tuple[str, str]], bytes]] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        answer = http.post(f"/api/v1/io/{bucket}/q", json={"query_type": "QUERY", "entries": [entry]})
        answer.raise_for_status()
        qid = str(answer.json()["id"])
        size = 0
        while size < CAPTURE_BYTES and len(captured) < CAPTURE_BATCHES:
            r = http.get(f"/api/v1/io/{bucket}/read", headers={"x-reduct-query-id": qid})
            if r.status_code != 200:
                break
            captured.append((r.status_code, list(r.headers.multi_items()), r.content))
            size += len(r.content)
            if r.headers.get("x-reduct-last") == "true":
                break
    assert captured, "nothing to replay"
    return captured


class Servers:
    """The appliance, the empty handler and (per size) a replay server; stopped together."""

    def __init__(
        self, folder: Path, ceiling_parser: str | None = None, tree: Path | None = None
    ) -> None:
        self.folder = folder
        self.ours = ServerProcess(folder / "data", cwd=tree).start()
        env = {**os.environ, PARSER_ENV: ceiling_parser} if ceiling_parser else None
        self.empty = self._spawn("empty_app.py", env=env)
        self.replays: dict[int, ServerProcess] = {}

    def _spawn(self, script: str, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name(script)), str(port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        server = ServerProcess(self.folder / "unused", port=port)
        server.proc = proc
        server.wait_ready(path="/api/v1/alive")
        return server

    def replay(self, size: int, bucket: str, entry: str) -> ServerProcess:
        """The replay server of ``size`` (captured from ours on first use)."""
        if size not in self.replays:
            capture = self.folder / f"capture-{size}.pickle"
            capture.write_bytes(pickle.dumps(capture_reads(self.ours.url, bucket, entry)))
            self.replays[size] = self._spawn("replay_server.py", str(capture))
        return self.replays[size]

    def stop(self) -> None:
        """Stop every process started."""
        for server in (self.empty, *self.replays.values()):
            assert server.proc is not None
            server.proc.terminate()
            server.proc.wait(timeout=10)
        self.ours.stop()


def pid_of(server: ServerProcess) -> int:
    """The process id of a started server."""
    assert server.proc is not None
    return server.proc.pid


async def run(args: argparse.Namespace, servers: Servers) -> list[tuple[Case, Case]]:
    """Every (ours, ceiling) pair, ``--repeat`` times, alternating which goes first."""
    limit = 2_000 if args.quick else 500_000
    seconds = args.seconds
    pairs: list[tuple[Case, Case]] = []
    opened: list[Client] = []  # replay clients, closed at the end
    async with Client(servers.ours.url, timeout=60) as ours, Client(
        servers.empty.url, timeout=60
    ) as empty:
        for label, size in SIZES.items():
            if label not in args.sizes:
                continue
            bucket = await ours.create_bucket(f"bench{size}", exist_ok=True)
            blank = Bucket("b", empty._http)  # the empty app needs no bucket
            me, ce = lambda: pid_of(servers.ours), lambda: pid_of(servers.empty)  # noqa: E731

            def write_pair(kind: str, b: Bucket = bucket, s: int = size) -> tuple[Case, Case]:
                if kind == "single":
                    fn = lambda bk, e: lambda t, n: single_writes(bk, e, s, t, n)  # noqa: E731
                else:
                    v2 = kind == "v2"
                    fn = lambda bk, e: lambda t, n: batched_writes(bk, e, s, t, n, v2)  # noqa: E731
                title = "single writes" if kind == "single" else f"batched writes {kind}"
                return (
                    Case(f"{label} {title}", s, me, fn(b, kind)),
                    Case(f"  ceiling: empty handler", s, ce, fn(blank, kind)),
                )

            for kind in ("single", "v1", "v2"):
                if kind in args.only:
                    pairs.append(write_pair(kind))
            if "reads" in args.only:
                replay_http: list[Client] = []

                async def replayed(
                    t: float, n: int, s: int = size, replay_http: list[Client] = replay_http
                ) -> tuple[int, float]:
                    if not replay_http:
                        srv = servers.replay(s, f"bench{s}", "reads")
                        client = Client(srv.url, timeout=60)
                        await client.__aenter__()
                        await client._http.request_all("HEAD", "/alive")  # learns the API version
                        replay_http.append(client)
                        opened.append(client)
                    return await batched_reads(Bucket(f"bench{s}", replay_http[0]._http), "reads", t, n)

                async def fill_then_read(t: float, n: int, b: Bucket = bucket, s: int = size) -> tuple[int, float]:
                    return await batched_reads(b, "reads", t, n)

                # The entry to read: as many records as the v1 case wrote in its budget, once
                # (or ``--read-records``). Whether its blocks fit in the server's block cache
                # decides whether a pass decodes them again: the case's name says how many.
                if args.read_records:
                    await batched_writes(bucket, "reads", size, 10**6, args.read_records, False)
                else:
                    await batched_writes(bucket, "reads", size, seconds, limit, False)
                info = next(e for e in await bucket.get_entry_list() if e.name == "reads")
                replay_pid = lambda s=size: pid_of(servers.replay(s, f"bench{s}", "reads"))  # noqa: E731
                pairs.append(
                    (
                        Case(f"{label} batched reads ({info.record_count:,} records, "
                             f"{info.block_count} blocks)", size, me, fill_then_read),
                        Case("  ceiling: replayed responses", size, replay_pid, replayed),
                    )
                )
        for rep in range(args.repeat):
            for mine, ceiling in pairs:
                order = (mine, ceiling) if rep % 2 == 0 else (ceiling, mine)
                for case in order:
                    await case.measure(seconds, limit)
            print(f"repetition {rep + 1}/{args.repeat} done, load average {loadavg()}", file=sys.stderr)
        for client in opened:
            await client.__aexit__(None, None, None)
    return pairs


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_case(case: Case, ratio: str) -> tuple[str, ...]:
    """A table row from a case's samples (medians)."""
    rates = [s.rate for s in case.samples]
    rate = statistics.median(rates)
    count = sum(s.count for s in case.samples)
    server = statistics.median(s.server_cpu / s.count * 1e6 for s in case.samples if s.count)
    client = statistics.median(s.client_cpu / s.count * 1e6 for s in case.samples if s.count)
    spread = f"{min(rates):,.0f}–{max(rates):,.0f}" if len(rates) > 1 else "-"
    return (
        case.name, f"{count:,}", f"{rate:,.0f}", spread, f"{rate * case.size / 1e6:,.1f}",
        f"{server:,.1f}", f"{client:,.1f}", ratio,
    )


def main() -> None:
    """Start the servers, run every pair, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per case")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians are shown)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="record sizes to run")
    parser.add_argument("--only", default=",".join(KINDS), help="cases: " + ",".join(KINDS))
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the script")
    parser.add_argument(
        "--ceiling-parser", choices=("h11",), default=None,
        help="the empty handler keeps h11's own header parsing (the stock ceiling)",
    )
    parser.add_argument(
        "--read-records", type=int, default=0,
        help="records in the entry the reads read (default: what the v1 case writes in "
        "--seconds); more than 65,536 of 1 KiB are more blocks than the block cache holds",
    )
    parser.add_argument("--tree", type=Path, help="run the appliance from this checkout")
    args = parser.parse_args()
    args.tree = checkout(parser, args.tree)
    args.sizes = args.sizes.replace(" ", "").split(",")
    args.only = args.only.split(",")
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        folder = Path(tmp)
        disk = raw_disk_mb_per_s(folder)
        servers = Servers(folder, args.ceiling_parser, args.tree)
        try:
            pairs = asyncio.run(run(args, servers))
            disk_after = raw_disk_mb_per_s(folder)
        finally:
            servers.stop()
    table = Table(
        title=f"HTTP API benchmark (reduct-py, loopback, {os.cpu_count()} cores, "
        f"median of {args.repeat}, {args.seconds:g} s per case)",
        caption=f"load average before {load_before}, after {loadavg()}",
    )
    columns = (
        "case", "records", "records/s", "range", "MB/s", "server CPU µs/rec",
        "client CPU µs/rec", "of ceiling",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "case" else "right")
    for mine, ceiling in pairs:
        ratios = [a.rate / b.rate for a, b in zip(mine.samples, ceiling.samples) if b.rate]
        table.add_row(*fmt_case(mine, f"{statistics.median(ratios):.0%}" if ratios else "-"))
        table.add_row(*fmt_case(ceiling, ""), end_section=True)
    table.add_row("raw sequential disk writes (1 MiB chunks)", "-", "-", "-", f"{disk:,.1f}", "", "", "")
    table.add_row("  the same, measured again after all cases", "-", "-", "-", f"{disk_after:,.1f}", "", "", "")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
