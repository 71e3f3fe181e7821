"""How a copy shows its progress: a rich bar on a terminal, plain lines otherwise.

Progress is measured in time covered, as ``reduct-cli`` does: each entry contributes the span
of timestamps it will copy (its oldest..latest record within ``--start``/``--stop``), and the
last record acknowledged by the destination tells how far it got. Record counts would be
wrong under ``--start``/``--when`` filters; the time span is right for any steady stream,
which is what the ETA needs. Records, bytes and rates are shown beside it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

PLAIN_INTERVAL_SECONDS = 2.0
MB = 1_000_000


@dataclass
class CopyStats:
    """Counters of one copy, shared by every entry task (one event loop: no lock needed)."""

    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    entries: int = 0
    span: int = 0  # µs of timestamps to cover, over every entry
    covered: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        """Seconds since the copy started."""
        return time.monotonic() - self.started

    def rates(self) -> str:
        """``records/s`` and ``MB/s`` so far."""
        seconds = max(self.seconds, 1e-6)
        return f"{self.copied / seconds:,.0f} records/s, {self.bytes / MB / seconds:,.2f} MB/s"

    def counts(self) -> str:
        """Copied, skipped and failed records and the bytes copied."""
        return (
            f"{self.copied:,} copied, {self.skipped:,} skipped, {self.failed:,} failed, "
            f"{self.bytes / MB:,.2f} MB"
        )

    def short(self) -> tuple[str, str]:
        """Counts and rates in few characters, for a bar on an 80-column terminal."""
        seconds = max(self.seconds, 1e-6)
        counts = f"{self.copied:,} rec {self.bytes / MB:,.1f} MB"
        if self.skipped:
            counts += f" {self.skipped:,} skipped"
        if self.failed:
            counts += f" {self.failed:,} FAILED"
        rates = f"{self.copied / seconds:,.0f} rec/s {self.bytes / MB / seconds:,.1f} MB/s"
        return counts, rates

    def fraction(self) -> float:
        """How much of the time span is covered (0..1)."""
        return min(self.covered / self.span, 1.0) if self.span else 1.0


class Reporter(Protocol):
    """What the copier tells about its progress."""

    def start(self, stats: CopyStats) -> None:
        """The copy begins (``stats.span`` is known)."""

    def update(self) -> None:
        """Counters changed."""

    def note(self, line: str) -> None:
        """A line worth keeping (an entry finished, a warning)."""

    def stop(self) -> None:
        """The copy ended (normally or not)."""


class PlainReporter:
    """A progress line every few seconds, for logs and pipes."""

    def __init__(self, out: IO[str] | None = None, interval: float = PLAIN_INTERVAL_SECONDS):
        self.out = out or sys.stderr
        self.interval = interval
        self.stats = CopyStats()
        self._last = time.monotonic()

    def start(self, stats: CopyStats) -> None:
        """Remember the counters."""
        self.stats = stats
        self._last = time.monotonic()

    def update(self) -> None:
        """Print a line if the last one is old enough."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        stats = self.stats
        fraction = stats.fraction()
        eta = stats.seconds * (1 - fraction) / fraction if fraction > 0 else None
        eta_text = f", ETA {eta:,.0f} s" if eta is not None else ""
        print(
            f"progress: {fraction:.0%}: {stats.counts()}, {stats.rates()}{eta_text}",
            file=self.out,
            flush=True,
        )

    def note(self, line: str) -> None:
        """Print the line."""
        print(line, file=self.out, flush=True)

    def stop(self) -> None:
        """Nothing to tear down."""


class RichReporter:
    """A live progress bar with records, bytes, rates and ETA (stderr, a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            BarColumn(bar_width=16),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("[cyan]{task.fields[rates]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.stats = CopyStats()
        self._task = self.progress.add_task("copy", total=1, counts="", rates="", start=False)

    def start(self, stats: CopyStats) -> None:
        """Show the bar."""
        self.stats = stats
        self.progress.update(self._task, total=max(stats.span, 1))
        self.progress.start_task(self._task)
        self.progress.start()

    def update(self) -> None:
        """Move the bar (rich redraws at its own pace)."""
        stats = self.stats
        counts, rates = stats.short()
        self.progress.update(
            self._task, completed=min(stats.covered, max(stats.span, 1)), counts=counts, rates=rates
        )

    def note(self, line: str) -> None:
        """Print above the bar."""
        self.progress.console.print(line, highlight=False, markup=False)

    def stop(self) -> None:
        """Draw the final state and release the terminal."""
        self.update()
        self.progress.stop()


def make_reporter(stream: IO[str] | None = None) -> Reporter:
    """A rich bar when ``stream`` (stderr) is a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichReporter()
    return PlainReporter(stream)
