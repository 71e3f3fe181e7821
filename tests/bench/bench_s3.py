"""Data on S3 (moto's server on 127.0.0.1) beside the local folder, in one run.

Usage: ``python tests/bench/bench_s3.py [--records 200] [--startup-only]``

Cases, each bounded by a record count: 1 KiB batched writes and reads, 1 MiB single writes and
reads, on (a) the local folder, (b) S3 with the default sync interval (here 1 s), (c) S3 with
``RS_REMOTE_SYNC_INTERVAL=0`` (acknowledged only once on S3). Then the S3 requests of a startup
with an empty cache for 10 buckets x 10 entries x 20 blocks, with integrity checks on and off
(counted when ``/ready`` first answers 200).
moto is an in-process Python server, so S3 figures are request overhead on loopback, not network
latency: a real bucket adds its round trips on top.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx
from moto.server import ThreadedMotoServer
from reduct import Batch, BucketSettings, Client
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.server import ServerProcess  # noqa: E402
from tests.remote.conftest import BUCKET, DUMMY, REGION, s3_env  # noqa: E402

KIB = 1024
MIB = 1024 * KIB


async def run_cases(url: str, records: int) -> dict[str, float]:
    """records/s of each case against one server."""
    out: dict[str, float] = {}
    small = os.urandom(KIB)
    big = os.urandom(MIB)
    async with Client(url, timeout=120) as client:
        bucket = await client.create_bucket("bench", BucketSettings(), exist_ok=True)
        started = time.perf_counter()
        for start in range(0, records * 10, 100):
            batch = Batch()
            for ts in range(start, start + 100):
                batch.add(ts + 1, small)
            await bucket.write_batch("small", batch)
        out["1 KiB batched write"] = records * 10 / (time.perf_counter() - started)
        started = time.perf_counter()
        count = 0
        async for record in bucket.query("small"):
            await record.read_all()
            count += 1
        out["1 KiB batched read"] = count / (time.perf_counter() - started)
        n = max(5, records // 10)
        started = time.perf_counter()
        for ts in range(1, n + 1):
            await bucket.write("big", big, timestamp=ts)
        out["1 MiB write"] = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for ts in range(1, n + 1):
            async with bucket.read("big", timestamp=ts) as record:
                await record.read_all()
        out["1 MiB read"] = n / (time.perf_counter() - started)
    return out


def startup_requests(url: str, work: Path, checks: bool, prefix: str) -> tuple[int, float]:
    """Requests and seconds of a startup with an empty cache on a 10x10x20 dataset."""
    cache = work / f"restore-{checks}"
    env = s3_env(url, cache, prefix, RS_ENGINE_ENABLE_INTEGRITY_CHECKS=str(checks).lower())
    server = ServerProcess(cache, env=env)
    started = time.perf_counter()
    server.start(wait_ready=False)
    server.wait_ready(timeout=600)
    seconds = time.perf_counter() - started
    info = httpx.get(f"{server.url}/api/v1/info", timeout=30).json()["remote"]
    server.stop(timeout=300)
    calls = info["requests"]
    # A download is HEAD + GET (the GET pinned to the HEAD's ETag: the manifest, data fetched
    # on a miss); a metadata fetch is one GET ("read"); every other call is one request.
    return sum(calls.values()) + calls.get("download", 0), seconds


async def build_dataset(url: str) -> None:
    """10 buckets x 10 entries x 20 blocks of one small record each."""
    async with Client(url, timeout=120) as client:
        for b in range(10):
            bucket = await client.create_bucket(f"b{b}", BucketSettings(max_block_records=1))
            for e in range(10):
                batch = Batch()
                for ts in range(1, 21):
                    batch.add(ts, b"x" * 100)
                await bucket.write_batch(f"e{e}", batch)


def main() -> None:
    """Run every case and print one table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--startup-only", action="store_true", help="only the startup counts")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID=DUMMY, AWS_SECRET_ACCESS_KEY=DUMMY)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name=REGION).create_bucket(Bucket=BUCKET)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        setups = {
            "local folder": {},
            "S3, sync 1 s": s3_env(url, work / "c1", "bench-1/"),
            "S3, sync 0": s3_env(url, work / "c0", "bench-0/", RS_REMOTE_SYNC_INTERVAL="0"),
        }
        for name, env in setups.items():
            if args.startup_only:
                break
            folder = work / name.replace(" ", "").replace(",", "")
            server = ServerProcess(folder, env=env).start()
            try:
                results[name] = asyncio.run(run_cases(server.url, args.records))
            finally:
                server.stop()
        writer = ServerProcess(work / "w", env=s3_env(url, work / "w", "bench-startup/")).start()
        asyncio.run(build_dataset(writer.url))
        writer.stop(timeout=300)
        on = startup_requests(url, work, True, "bench-startup/")
        off = startup_requests(url, work, False, "bench-startup/")
    moto.stop()
    table = Table(title=f"records/s ({args.records * 10} x 1 KiB, {max(5, args.records // 10)} x 1 MiB)")
    table.add_column("case")
    for name in results:
        table.add_column(name, justify="right")
    for case in next(iter(results.values())) if results else ():
        table.add_row(case, *(f"{results[n][case]:.0f}" for n in results))
    console = Console()
    if results:
        console.print(table)
    startup = Table(title="startup with an empty cache, 10 buckets x 10 entries x 20 blocks")
    startup.add_column("integrity checks")
    startup.add_column("S3 HTTP requests", justify="right")
    startup.add_column("seconds to ready", justify="right")
    startup.add_row("on", str(on[0]), f"{on[1]:.1f}")
    startup.add_row("off", str(off[0]), f"{off[1]:.1f}")
    console.print(startup)


if __name__ == "__main__":
    main()
