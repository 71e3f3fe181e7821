"""In-process microbenchmark of HTTP/1 header handling: h11 0.16's own against
``appliance.http1``'s one pass, alternated.

Usage: ``python tests/bench/bench_http1.py [--repeat 5] [--headers 1000] [--records 85]``

- request: an h11 server connection receives a batched v1 write's head (``--headers``
  ``x-reduct-time-N`` lines beside Host and Content-Length), gives the ``Request`` and
  Hypercorn takes its header list (``list(event.headers)``); µs per header.
- response: a batched read's response (``--records`` ``x-reduct-time-N`` headers plus the
  usual ones) goes through Hypercorn's ``build_and_validate_headers``, ``h11.Response`` and
  ``Connection.send``; µs per header.

The young-generation GC threshold is the server's (``server.tune_gc``). Each repetition times
both variants for ~0.5 s each, in turns; medians and ranges are printed with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h11
from hypercorn.protocol import http_stream
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance import http1  # noqa: E402
from appliance.server import tune_gc  # noqa: E402

SECONDS = 0.5


def request_case(headers: int) -> tuple[Callable[[], None], int]:
    """Receiving a batched write's head; the number of headers."""
    lines = [b"Host: 127.0.0.1:8383", b"Content-Length: 0", b"Content-Type: text/plain"]
    lines += [
        b"x-reduct-time-%d: 1024,application/octet-stream,a=b" % (1_700_000_000_000_000 + i)
        for i in range(headers)
    ]
    head = b"POST /api/v1/b/bench/e/batch HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"

    def run() -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
        conn.receive_data(head)
        event = conn.next_event()
        list(event.headers)  # what Hypercorn hands on
        assert type(conn.next_event()) is h11.EndOfMessage

    return run, len(lines)


def response_case(records: int) -> tuple[Callable[[], None], int]:
    """Sending a batched read's response head; the number of headers."""
    pairs = [
        (b"x-reduct-time-%d" % (1_700_000_000_000_000 + i), b"1024,application/octet-stream,a=b")
        for i in range(records)
    ]
    pairs += [
        (b"content-length", b"%d" % (1024 * records)),
        (b"content-type", b"application/octet-stream"),
        (b"x-reduct-last", b"false"),
        (b"x-reduct-api", b"1.21"),
        (b"server", b"ReductStore 1.21.0"),
    ]
    request = b"GET /api/v1/b/bench/e/batch HTTP/1.1\r\nHost: h\r\n\r\n"

    def run() -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(request)
        conn.next_event()
        conn.next_event()
        headers = http_stream.build_and_validate_headers(pairs)
        conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))

    return run, len(pairs)


def per_header(run: Callable[[], None], count: int) -> float:
    """µs per header of ``run`` over ~``SECONDS``."""
    run()
    loops = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < SECONDS:
        run()
        loops += 1
    return elapsed / loops / count * 1e6


def main() -> None:
    """Time each case with h11's code and with the one pass, in turns; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--headers", type=int, default=1000)
    parser.add_argument("--records", type=int, default=85)
    args = parser.parse_args()
    tune_gc()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cases = {
        f"request head, {args.headers} record headers": request_case(args.headers),
        f"response head, {args.records} record headers": response_case(args.records),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeat):
        for name, (run, count) in cases.items():
            for variant in (("h11", "one pass") if rep % 2 == 0 else ("one pass", "h11")):
                if variant == "one pass":
                    assert http1.install(), "not installed (APPLIANCE_HTTP_PARSER? versions?)"
                else:
                    http1.uninstall()
                times.setdefault((name, variant), []).append(per_header(run, count))
    http1.uninstall()
    table = Table(
        title=f"HTTP/1 header handling, µs per header (median of {args.repeat}, in-process)",
        caption=f"load average before {load_before}, after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    )
    for column in ("case", "h11 0.16", "range", "one pass", "range ", "speed-up"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name in cases:
        stock, fast = times[(name, "h11")], times[(name, "one pass")]
        table.add_row(
            name,
            f"{statistics.median(stock):.2f}",
            f"{min(stock):.2f}–{max(stock):.2f}",
            f"{statistics.median(fast):.2f}",
            f"{min(fast):.2f}–{max(fast):.2f}",
            f"{statistics.median(stock) / statistics.median(fast):.1f}×",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
