"""Per-request CPU of single 1 KiB writes through the ASGI app, beside the empty handler.

Usage: ``python tests/bench/bench_request.py [--requests 3000] [--repeat 5]``

No server, no socket, no client: each request is one ``await app(scope, receive, send)`` on a
uvloop loop, with the scope reduct-py's ``Bucket.write`` produces (1 KiB body, one label), so
what is measured is the app's own work per request (Quart, our hooks and connection policy, the
handler, the engine write and any thread hop). The empty handler of ``empty_app.py`` answers the
same requests. CPU time of the whole process (all threads) per request; repetitions alternate
the two; medians and ranges are printed with the load average. Much less noisy than
``bench_api.py`` on a shared machine (no cross-process wake-ups), but it leaves out Hypercorn
and h11, which both servers pay alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.api.conftest import request_at_once  # noqa: E402

Call = Callable[[str, str, bytes, bytes], Awaitable[int]]
WARMUP = 300


def caller(app: Any) -> Call:
    """``call(method, path, query, body)``: one request through ``app``; its status."""

    async def call(method: str, path: str, query: bytes, body: bytes, label: bytes = b"1") -> int:
        headers = [
            (b"host", b"127.0.0.1:8383"), (b"user-agent", b"python-httpx/0.28"),
            (b"accept", b"*/*"), (b"content-type", b"application/octet-stream"),
            (b"x-reduct-label-n", label),
        ]
        return await request_at_once(app, method, path, query, body, headers)

    return call


async def measure(call: Call, stamp: list[int], requests: int) -> float:
    """CPU µs per single 1 KiB write (fresh, increasing timestamps)."""
    data = os.urandom(1024)
    start = time.process_time()
    for i in range(requests):
        stamp[0] += 1
        status = await call("POST", "/api/v1/b/bench/e", f"ts={stamp[0]}".encode(), data,
                            str(i % 10).encode())  # type: ignore[call-arg]
        assert status == 200, status
    return (time.process_time() - start) / requests * 1e6


async def main(args: argparse.Namespace) -> Table:
    """Both apps started side by side; alternate their samples."""
    from appliance.app import create_app
    from appliance.engine import Storage
    from appliance.services import Services
    from appliance.server import tune_gc
    from appliance.settings import Settings

    sys.argv = sys.argv[:1]
    import empty_app

    tune_gc()  # as ``serve`` does (both apps share this process)

    with tempfile.TemporaryDirectory(prefix="bench-request-") as tmp:
        settings = Settings(data_path=Path(tmp) / "data", disable_auth=True)
        services = Services(settings, open_storage=Storage.open)
        ours = create_app(settings, services)
        running = ours.test_app()
        await running.__aenter__()
        await services.wait_open()
        empty = empty_app.app
        apps = {"ours": caller(ours), "empty handler": caller(empty)}
        assert await apps["ours"]("POST", "/api/v1/b/bench", b"", b"") == 200
        stamps = {name: [1_000_000] for name in apps}
        samples: dict[str, list[float]] = {name: [] for name in apps}
        try:
            for name, call in apps.items():
                await measure(call, stamps[name], WARMUP)
            for rep in range(args.repeat):
                order = list(apps.items()) if rep % 2 == 0 else list(apps.items())[::-1]
                for name, call in order:
                    samples[name].append(await measure(call, stamps[name], args.requests))
        finally:
            await running.__aexit__(None, None, None)
    table = Table(title=f"single 1 KiB writes through the ASGI app, CPU per request "
                        f"(median of {args.repeat} × {args.requests})")
    for column in ("app", "CPU µs/request", "range"):
        table.add_column(column, justify="left" if column == "app" else "right")
    for name, values in samples.items():
        table.add_row(name, f"{statistics.median(values):.1f}",
                      f"{min(values):.1f}–{max(values):.1f}")
    return table


def cli() -> None:
    """Parse the arguments, run, print the table and the load average."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per sample")
    parser.add_argument("--repeat", type=int, default=5, help="samples per app")
    args = parser.parse_args()
    load0 = os.getloadavg()
    table = uvloop.run(main(args))
    console = Console()
    console.print(table)
    load1 = os.getloadavg()
    console.print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")


if __name__ == "__main__":
    cli()
