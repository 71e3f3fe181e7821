"""How fast this machine writes into the page cache, by where the pages come from.

Usage: ``python tests/bench/bench_pagecache.py [--folder PATH] [--mib 1024] [--ballast 256]``

A large record written by the appliance costs a copy into the page cache (``pwritev``) that
the empty-handler ceilings never pay. On a VM that copy's speed depends on the guest page it
lands in: one a just-deleted file freed is already backed by the host, while one the guest
never touched (or handed back to the host) is backed on first touch, at the host's expense.
``bench_big.py`` writes and deletes a ballast file before every sample for that reason, so a
sample larger than the ballast runs partly on slow pages, and so does its "raw disk" row.

This writes and deletes a ``--ballast`` MiB file, then writes ``--mib`` MiB in 1 MiB ``write``
calls to a new file in ``--folder`` (a temporary folder on the data folder's file system by
default) and shows the rate of each 128 MiB of it; then deletes that file and writes as much
again at once (every page just freed), and as much with ``O_DIRECT`` where the file system
allows it (no page cache: the device's own rate). Every loop is bounded by its byte count.
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

MIB = 1024 * 1024
SEGMENT_MIB = 128


def write_file(path: Path, mib: int, direct: bool = False) -> list[float]:
    """Write ``mib`` MiB in 1 MiB ``write`` calls to a new ``path`` (it stays); the MiB/s of
    each ``SEGMENT_MIB`` MiB (and of the rest)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    buffer = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT needs
    buffer.write(os.urandom(MIB))
    rates: list[float] = []
    fd = os.open(path, flags, 0o644)
    try:
        started = time.perf_counter()
        for done in range(1, mib + 1):
            os.write(fd, buffer)
            if done % SEGMENT_MIB == 0 or done == mib:
                now = time.perf_counter()
                rates.append((done - SEGMENT_MIB * len(rates)) / (now - started))
                started = now
    finally:
        os.close(fd)
        buffer.close()
    return rates


def main() -> None:
    """Run the three writes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where to write (a temporary folder in it)")
    parser.add_argument("--mib", type=int, default=1024, help="MiB written by each case")
    parser.add_argument("--ballast", type=int, default=256, help="MiB freed before the first")
    options = parser.parse_args()
    if options.mib < 1 or options.ballast < 0:
        parser.error("--mib must be at least 1 and --ballast at least 0")
    rows: list[tuple[str, list[float] | str]] = []
    with tempfile.TemporaryDirectory(dir=options.folder) as tmp:
        folder = Path(tmp)
        if options.ballast:
            write_file(folder / "ballast", options.ballast)
            (folder / "ballast").unlink()
        rows.append((f"after a {options.ballast} MiB ballast was deleted",
                     write_file(folder / "first", options.mib)))
        (folder / "first").unlink()
        rows.append(("right after deleting that file", write_file(folder / "again", options.mib)))
        (folder / "again").unlink()
        try:
            rows.append(("O_DIRECT (no page cache)",
                         write_file(folder / "direct", options.mib, direct=True)))
        except OSError as exc:
            rows.append(("O_DIRECT (no page cache)", f"refused: {exc.strerror or exc}"))
    segments = -(-options.mib // SEGMENT_MIB)
    table = Table(title=f"writes of {options.mib} MiB into the page cache, 1 MiB a write: "
                        f"MiB/s of each {SEGMENT_MIB} MiB")
    table.add_column("case")
    table.add_column("whole", justify="right")
    for k in range(segments):
        table.add_column(f"{k * SEGMENT_MIB}–", justify="right")
    for name, rates in rows:
        if isinstance(rates, str):
            table.add_row(name, rates, *[""] * segments)
            continue
        whole = options.mib / sum(
            min(SEGMENT_MIB, options.mib - k * SEGMENT_MIB) / rate for k, rate in enumerate(rates)
        )
        table.add_row(name, f"{whole:,.0f}", *[f"{rate:,.0f}" for rate in rates])
    console = Console(width=max(100, 40 + 8 * segments))
    console.print(table)
    console.print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
