"""Generation fencing, the lease side: the "generation N began" markers on shared storage.

The lease cannot stop a paused ex-holder from touching files once it resumes (Kleppmann, "How
to do distributed locking"; ``spec/leases.md`` §3.3). What makes it harmless is that every
write carries the writer's generation and the storage side refuses stale generations.

Markers: ``<data>/.generations``, JSON lines, one per generation that began::

    {"generation": 7, "owner": "host:pid:uuid", "began_at_wall": 1.7e9,
     "wal": {"<bucket>/<entry>/.wal/<block>.wal": {"size": 4096, "crc32c": 123}, ...}}

``wal`` is the boundary "generation N begins after position P" of spec §3.4 step 6: every WAL
segment of the dataset, its length and the CRC32C of those bytes, at the instant N began.
Only the lease holder appends, by compare-and-swap; a marker whose generation is not above
every existing one is refused (``LeaseLost``), so a stale holder cannot even record a start.

The rules recovery applies to those markers (which WAL frames to replay, which files a writer
may replace) are storage rules and live in ``appliance.engine.generations``; this module adds the
lease side: the marker log on a backend, the WAL snapshot taken when a generation begins, and
``Fence.check_current`` (a stale recoverer must stop: ``LeaseLost``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from appliance.engine import generations
from appliance.engine.generations import (
    GENERATIONS_KEY,
    GenerationMarker,
    SegmentBoundary,
    SegmentFence,
    Verdict,
    accept,
    crc32c,
    index_is_stale,
    is_wal_segment,
    may_replace,
    parse_markers,
)
from appliance.roles.clock import SYSTEM_CLOCK, Clock
from appliance.roles.lease import LeaseLost, read_stable
from backends.base import Backend
from backends.errors import BackendUnavailable, ObjectNotFound, PreconditionFailed

__all__ = [
    "GENERATIONS_KEY",
    "Fence",
    "GenerationLog",
    "GenerationMarker",
    "SegmentBoundary",
    "SegmentFence",
    "Verdict",
    "accept",
    "crc32c",
    "index_is_stale",
    "is_wal_segment",
    "may_replace",
    "parse_markers",
    "snapshot_wal",
]

log = logging.getLogger(__name__)

_ATTEMPTS = 5


class Fence(generations.Fence):
    """The engine's pure fence, plus the lease's refusal of a stale recoverer."""

    def check_current(self) -> None:
        """Raise LeaseLost if a generation newer than ours began: we must not recover or write."""
        if self.newest > self.current:
            raise LeaseLost(
                f"generation {self.newest} began after ours ({self.current})",
                found_generation=self.newest,
            )


def snapshot_wal(
    backend: Backend, is_segment: Callable[[str], bool] = is_wal_segment
) -> dict[str, SegmentBoundary]:
    """The boundary of every WAL segment in the dataset right now."""
    boundaries = {}
    for info in backend.list(""):
        if not is_segment(info.key):
            continue
        try:
            data = backend.read(info.key)
        except ObjectNotFound:
            continue  # deleted since the listing: it has no boundary to keep
        boundaries[info.key] = SegmentBoundary.of(data)
    return boundaries


class GenerationLog:
    """``.generations`` on a backend: read the markers, append one by compare-and-swap."""

    def __init__(
        self, backend: Backend, *, key: str = GENERATIONS_KEY, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.backend = backend
        self.key = key
        self._clock = clock

    def markers(self) -> list[GenerationMarker]:
        """Every marker, oldest first (none if the log does not exist)."""
        found = read_stable(self.backend, self.key)
        return parse_markers(found[0], source=self.key) if found is not None else []

    def record_began(
        self, generation: int, owner: str, wal: Mapping[str, SegmentBoundary] | None = None
    ) -> GenerationMarker:
        """Append "``generation`` began"; LeaseLost if that or a newer generation already did."""
        marker = GenerationMarker(generation, owner, self._clock.wall(), dict(wal or {}))
        for _ in range(_ATTEMPTS):
            found = read_stable(self.backend, self.key)
            data = found[0] if found is not None else b""
            existing = parse_markers(data, source=self.key)
            mine = [m for m in existing if m.generation == generation and m.owner == owner]
            if mine:
                return mine[0]  # a retried write of ours landed
            newest = existing[-1].generation if existing else 0
            if newest >= generation:
                raise LeaseLost(
                    f"generation {newest} already began; {generation} is stale",
                    found_generation=newest,
                )
            if data and not data.endswith(b"\n"):
                data += b"\n"
            try:
                if found is None:
                    self.backend.create_if_absent(self.key, marker.encode())
                else:
                    self.backend.replace_if_unchanged(self.key, data + marker.encode(), found[1])
            except PreconditionFailed:
                continue  # someone wrote meanwhile (or our retry landed): re-read and decide
            return marker
        raise BackendUnavailable(
            "could not append to the generation log", backend=self.backend.name, key=self.key
        )


def load_wal_fence(backend: Backend, generation: int) -> Fence:
    """The generation fence recovery applies; LeaseLost if a newer generation already began."""
    fence = Fence(GenerationLog(backend).markers(), generation)
    fence.check_current()
    return fence
