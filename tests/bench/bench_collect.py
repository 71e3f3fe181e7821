"""The engine side of a batched read, in-process: collecting a query's batches and encoding
their headers and bodies, as the engine thread does for each request (no HTTP).

Usage: ``python tests/bench/bench_collect.py [--records 120000] [--passes 3] [--repeat 3]``

One entry of ``--records`` 1 KiB records (1,000 a ``write_batch``) is written twice: with one
label set for every record, and with a label that cycles through ten values (``n=0..9``, what
``bench_api.py`` writes). Each is then read whole ``--passes`` times through a query
(``Query.collect_batch`` with the server's default limits, 85 records a batch) and each batch
is encoded as the server encodes it (``api.queries.encode_batch``, v2 and v1). The entry has
more blocks than the block cache holds, so every pass decodes every block descriptor again, as
reading history does. The table shows the median process CPU time per record over
``--repeat`` runs, and the range. Every loop is bounded by the record count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.api.queries import encode_batch  # noqa: E402
from appliance.engine import Storage  # noqa: E402
from appliance.engine.models import EngineOptions, NewRecord  # noqa: E402
from appliance.query.handle import BatchLimits, QuerySpec  # noqa: E402
from appliance.query.registry import QueryRegistry  # noqa: E402

LABELS = {
    "one label set": lambda i: {"a": "b"},
    "cycling label n=0..9": lambda i: {"n": str(i % 10)},
}


def fill(storage: Storage, entry: str, records: int, labels: object) -> None:
    """``records`` 1 KiB records in batches of 1,000."""
    data = os.urandom(1024)
    bucket = storage.get_bucket("b")
    for start in range(0, records, 1000):
        batch = [
            NewRecord(start + i + 1, data, labels=labels(i))  # type: ignore[operator]
            for i in range(min(1000, records - start))
        ]
        assert not bucket.write_batch(entry, batch)


def read_all(storage: Storage, entry: str, passes: int, v2: bool) -> tuple[int, float]:
    """Records read and process CPU seconds for ``passes`` whole reads of ``entry``."""
    count = 0
    cpu = time.process_time()
    for _ in range(passes):
        registry = QueryRegistry()
        qid = registry.create(storage, "b", None, QuerySpec(entries=(entry,)))
        query = registry.get(qid, "b", None)
        for _ in range(10_000_000):
            batch = query.collect_batch(storage, BatchLimits(), False, v2)
            if not batch.records:
                break
            encode_batch(batch, v2, False, False)
            count += len(batch.records)
    return count, time.process_time() - cpu


def main() -> None:
    """Run the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=120_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"collect + encode, 1 KiB records, {args.passes} passes, "
                  f"median of {args.repeat}")
    for column in ("labels", "protocol", "µs/record CPU", "range"):
        table.add_column(column, justify="left" if column in ("labels", "protocol") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage.open(EngineOptions(data_path=Path(tmp) / "data"))
        try:
            storage.create_bucket("b")
            for n, (name, labels) in enumerate(LABELS.items()):
                fill(storage, f"e{n}", args.records, labels)
                read_all(storage, f"e{n}", 1, True)  # warm-up
                for v2 in (True, False):
                    samples = []
                    for _ in range(args.repeat):
                        count, cpu = read_all(storage, f"e{n}", args.passes, v2)
                        assert count == args.records * args.passes, count
                        samples.append(1e6 * cpu / count)
                    table.add_row(
                        name, "v2" if v2 else "v1", f"{statistics.median(samples):.2f}",
                        f"{min(samples):.2f}–{max(samples):.2f}",
                    )
        finally:
            storage.close()
    Console().print(table)
    print("load average %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
