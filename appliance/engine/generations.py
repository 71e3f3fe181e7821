"""Generation rules: which WAL frames recovery may replay, which files a writer may replace.

Pure storage rules (no I/O, no lease): the lease lives in ``appliance.roles``, which records
"generation N began" markers (``roles/fencing.py``) and hands them to the engine as a ``Fence``.

Invariants the engine and the services keep:

- I1  every WAL segment header and every WAL frame carries the writer's generation;
      ``blocks.idx`` and every ``<id>.meta`` carry the generation that last wrote them.
- I2  a generation writes nothing before its marker is durable (``LeaseRole.wait_serving``
      records it after acquiring the lease, before the engine opens and recovers).
- I3  acknowledged ⇒ written before any takeover: the fence runs before every engine mutation
      and again after the write, before the response (``appliance.app`` request hooks);
      past ``ttl/2`` without renewal it re-verifies.
- I4  recovery replays every WAL segment and deletes it once descriptors and index are saved.

Rule for a WAL frame of generation ``g`` ending at byte ``e`` of segment ``k`` whose header
says generation ``h``, during recovery by the holder of generation ``current``:

1. ``g > current`` → reject (FUTURE). Only a stale process can see this; the lease side
   (``roles.fencing.Fence.check_current``) refuses to recover when a newer marker exists.
2. ``g < h`` → reject (NEWER_SEGMENT): a stale writer appended to a segment that a newer
   generation created.
3. ``m`` = the earliest marker with generation ``> g``; none → accept (``g`` is the newest).
4. accept iff ``k`` is in ``m.wal``, ``e <= m.wal[k].size``, and the first ``size`` bytes of
   ``k`` still have ``m.wal[k].crc32c``: the frame was in that file when ``m`` began. Anything
   else (appended past the boundary, or in a segment ``g`` re-created after ``m``'s recovery
   deleted the old one) was written by ``g`` after ``m`` began → reject (AFTER_BOUNDARY).

Why the *earliest* marker: if ``m``'s recovery crashed before deleting ``k``, the next holder
still accepts ``g``'s pre-``m`` frames (they are inside ``m``'s prefix) and still rejects
``g``'s post-``m`` frames. Rejected frames were never acknowledged (I3), so nothing a client
was told is durable is dropped; the prefix CRC costs one CRC32C pass per (segment, marker).

Whole-file commits (index, descriptors) are atomic replaces stamped with a generation:

- ``may_replace(file_gen, writer_gen)``: a writer never replaces a file stamped with a higher
  generation; the engine reads the target's header right before the rename and fences itself.
- ``index_is_stale(index_gen, descriptor_gens)``: an index older than the newest descriptor of
  its entry was clobbered by a stale writer (or is simply behind) → rebuild from descriptors.

Residual window, stated plainly: a process stopped *between* its last check and a syscall
performs that one syscall when it resumes. A payload ``pwrite`` then lands in an orphan: a new
holder copies a pre-takeover data file to its own inode before its first append to it
(``EntryFiles.pin_data``). A WAL append lands in a deleted segment, or after the boundary.
A descriptor or index rename is checked (``may_replace``) right before it, so only a stop in
the microseconds between that check and the rename can replace a newer file; the next
startup sees the index/descriptor mismatch (``index_is_stale`` and the cross-check).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import google_crc32c

log = logging.getLogger(__name__)

GENERATIONS_KEY = ".generations"


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (the engine's checksum)."""
    return int(google_crc32c.value(data))


def is_wal_segment(key: str) -> bool:
    """True for the engine's WAL segments, ``<bucket>/<entry>/.wal/<block>.wal``."""
    return "/.wal/" in key and key.endswith(".wal")


@dataclass(frozen=True, slots=True)
class SegmentBoundary:
    """A WAL segment's length and the CRC32C of those bytes when a generation began."""

    size: int
    crc32c: int

    @classmethod
    def of(cls, data: bytes) -> SegmentBoundary:
        """The boundary of a segment whose current content is ``data``."""
        return cls(len(data), crc32c(data))


@dataclass(frozen=True, slots=True)
class GenerationMarker:
    """One line of ``.generations``: generation N began (after these WAL positions)."""

    generation: int
    owner: str
    began_at_wall: float
    wal: Mapping[str, SegmentBoundary] = field(default_factory=dict)

    def encode(self) -> bytes:
        """One JSON line."""
        body = {
            "generation": self.generation,
            "owner": self.owner,
            "began_at_wall": self.began_at_wall,
            "wal": {k: {"size": b.size, "crc32c": b.crc32c} for k, b in sorted(self.wal.items())},
        }
        return json.dumps(body, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> GenerationMarker:
        """Parse one line; ValueError if it is not a marker."""
        try:
            raw: Any = json.loads(line)
            wal = {
                str(k): SegmentBoundary(int(v["size"]), int(v["crc32c"]))
                for k, v in dict(raw.get("wal") or {}).items()
            }
            return cls(int(raw["generation"]), str(raw["owner"]), float(raw["began_at_wall"]), wal)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a generation marker: {exc}") from None


def parse_markers(data: bytes, *, source: str = GENERATIONS_KEY) -> list[GenerationMarker]:
    """Markers in ``data``, sorted by generation; bad lines are logged and skipped."""
    markers = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            markers.append(GenerationMarker.decode(line))
        except ValueError as exc:
            log.warning("skipping line %d of %s: %s", number, source, exc)
    return sorted(markers, key=lambda m: m.generation)


class Verdict(str, Enum):
    """What recovery does with one WAL frame, and why."""

    ACCEPT = "accept"
    FUTURE = "future"  # newer than the recovering holder: the recoverer is stale
    NEWER_SEGMENT = "newer_segment"  # older frame in a segment a newer generation created
    AFTER_BOUNDARY = "after_boundary"  # written after a newer generation began


class SegmentFence:
    """The rule applied to the frames of one WAL segment (prefix CRCs computed once)."""

    def __init__(self, fence: Fence, key: str, header_generation: int, data: bytes) -> None:
        self._fence = fence
        self.key = key
        self.header_generation = header_generation
        self._data = data
        self._intact: dict[int, bool] = {}

    def verdict(self, frame_generation: int, end_offset: int) -> Verdict:
        """Rules 1-4 of the module docstring for a frame ending at ``end_offset``."""
        if frame_generation > self._fence.current:
            return Verdict.FUTURE
        if frame_generation < self.header_generation:
            return Verdict.NEWER_SEGMENT
        marker = self._fence.first_after(frame_generation)
        if marker is None:
            return Verdict.ACCEPT
        boundary = marker.wal.get(self.key)
        if boundary is None or end_offset > boundary.size or not self._prefix_intact(boundary):
            return Verdict.AFTER_BOUNDARY
        return Verdict.ACCEPT

    def accept(self, frame_generation: int, end_offset: int) -> bool:
        """True if the frame may be replayed."""
        return self.verdict(frame_generation, end_offset) is Verdict.ACCEPT

    def _prefix_intact(self, boundary: SegmentBoundary) -> bool:
        if boundary.size not in self._intact:
            prefix = self._data[: boundary.size]
            self._intact[boundary.size] = (
                len(prefix) == boundary.size and crc32c(prefix) == boundary.crc32c
            )
        return self._intact[boundary.size]


class Fence:
    """The markers as recovery sees them, for the holder of generation ``current``. Pure."""

    def __init__(self, markers: Iterable[GenerationMarker], current: int) -> None:
        self.markers = sorted(markers, key=lambda m: m.generation)
        self.current = current

    @property
    def newest(self) -> int:
        """The highest generation that began (0 if none)."""
        return self.markers[-1].generation if self.markers else 0

    def first_after(self, generation: int) -> GenerationMarker | None:
        """The earliest marker with a generation above ``generation``."""
        return next((m for m in self.markers if m.generation > generation), None)

    def segment(self, key: str, header_generation: int, data: bytes) -> SegmentFence:
        """The rule for the frames of one segment (``data``: its whole current content)."""
        return SegmentFence(self, key, header_generation, data)


def accept(
    entry_generation: int,
    *,
    current: int,
    markers: Iterable[GenerationMarker],
    segment: str,
    segment_generation: int,
    end_offset: int,
    segment_data: bytes,
) -> bool:
    """One-off form of the rule: may recovery replay this WAL frame? (see module docstring)."""
    fence = Fence(markers, current)
    return fence.segment(segment, segment_generation, segment_data).accept(
        entry_generation, end_offset
    )


def may_replace(file_generation: int, writer_generation: int) -> bool:
    """May a writer of ``writer_generation`` replace a file stamped ``file_generation``?"""
    return file_generation <= writer_generation


def index_is_stale(index_generation: int, descriptor_generations: Iterable[int]) -> bool:
    """True if ``blocks.idx`` is older than a descriptor it indexes: rebuild it."""
    return any(g > index_generation for g in descriptor_generations)
