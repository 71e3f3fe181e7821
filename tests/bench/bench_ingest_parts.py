"""In-process microbenchmark of the API's per-record work on a batched write other than the
record-header parsing (``bench_batch_parse.py``), each before and after issue 15's fourth round.

Usage: ``python tests/bench/bench_ingest_parts.py [--records 1000]``

- request headers: Quart's title-cased ``str`` list of all raw headers and four lookups by
  name in werkzeug's ``Headers`` (what the request had), against ``ScopeHeaders`` and the same
  lookups;
- batch limits: ``check_batch_limits``' per-header count, against its upper bound (the names
  and the values joined);
- the worker's records: payload slices, the grouping loop and ``NewRecord`` per ``Incoming``
  row, against the slices and ``NewRecord``s made from the parsed columns (``Rows``).

The young-generation GC threshold is the server's; best of 5 × 100 calls, twice each, µs per
record. Not collected by pytest (file name is not ``test_*``).
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

from werkzeug.datastructures import Headers

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.api.batch_codec.fast import _parse_v1_loop, parse_v1_write  # noqa: E402
from appliance.api.connection import ScopeHeaders  # noqa: E402
from appliance.engine.models import NewRecord  # noqa: E402
from appliance.server import tune_gc  # noqa: E402

LOOKUPS = ("Content-Length", "Authorization", "Content-Type", "Transfer-Encoding")


def cases(n: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """{name: (before, after)} over a v1 batch of ``n`` 1 KiB records."""
    raw = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer t")] + [
        (f"x-reduct-time-{10**15 + i}".encode(), f"1024,application/octet-stream,n={i % 10}".encode())
        for i in range(n)
    ] + [(b"content-length", str(1024 * n).encode())]
    rows_before = _parse_v1_loop(raw, "e").rows  # noqa: SLF001 - Incoming rows, as before
    parsed = parse_v1_write(raw, "e")
    assert parsed is not None
    rows = parsed.rows
    body = os.urandom(1024) * n

    def headers_before() -> None:
        headers = Headers()
        pairs = [("Remote-Addr", "127.0.0.1")]
        pairs += [(k.decode("latin1").title(), v.decode("latin1")) for k, v in raw]
        headers._list = pairs  # noqa: SLF001
        for key in LOOKUPS:
            headers.get(key)

    def headers_after() -> None:
        headers = ScopeHeaders.from_scope(raw, "127.0.0.1")
        for key in LOOKUPS:
            headers.get(key)

    def limits_before() -> None:
        count = size = 0
        for name, value in raw:
            if name[:9].lower() == b"x-reduct-" and name[-1:].isdigit():
                count += 1
                size += len(name) + len(value) + 2

    def limits_after() -> bool:
        names = b"".join([name for name, _ in raw])
        values = b"".join([value for _, value in raw])
        return len(names) + len(values) + 2 * len(raw) <= 512_000

    def records_before() -> None:
        pairs, offset = [], 0
        for item in rows_before:
            pairs.append((item, body[offset : offset + item.length]))
            offset += item.length
        groups: dict[str, tuple[list[object], list[NewRecord]]] = {}
        for item, data in pairs:
            group = groups.get(item.entry)
            if group is None:
                group = groups[item.entry] = ([], [])
            group[0].append(item)
            group[1].append(NewRecord(item.timestamp, data, item.content_type, item.labels))

    def records_after() -> list[NewRecord]:
        payloads, offset = [], 0
        for end in accumulate(rows.lengths):  # type: ignore[union-attr]
            payloads.append(body[offset:end])
            offset = end
        len(set(rows.entries))  # type: ignore[union-attr]
        return list(map(NewRecord, rows.stamps, payloads, rows.content_types, rows.labels))  # type: ignore[union-attr]

    return {
        "request headers (list + 4 lookups)": (headers_before, headers_after),
        "batch limits": (limits_before, limits_after),
        "payload slices + NewRecords": (records_before, records_after),
    }


def main() -> None:
    """Time each pair, alternated, and print µs per record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    tune_gc()
    n = args.records
    for name, (before, after) in cases(n).items():
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(2):
            for label, fn in (("before", before), ("after", after)):
                best = min(timeit.repeat(fn, number=100, repeat=5))
                times[label].append(best / 100 / n * 1e6)
        print(f"{name:38} before {min(times['before']):.3f}  after {min(times['after']):.3f} "
              "µs a record")
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
