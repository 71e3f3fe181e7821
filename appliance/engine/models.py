"""Value types shared by the engine, the API layer and provisioning (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from appliance.units import MIB

if TYPE_CHECKING:
    from appliance.engine.mirror import Mirror
    from appliance.engine.generations import Fence

__all__ = [
    "BucketInfo",
    "BucketSettings",
    "EngineOptions",
    "EntryInfo",
    "NewRecord",
    "Pieces",
    "QuotaType",
    "RecordMeta",
    "RecordState",
    "StorageInfo",
    "WriteFence",
]

class QuotaType(str, Enum):
    """Bucket quota policy: none, drop oldest blocks (FIFO), or refuse writes (HARD)."""

    NONE = "NONE"
    FIFO = "FIFO"
    HARD = "HARD"


DEFAULT_MAX_BLOCK_SIZE = 64_000_000
DEFAULT_MAX_BLOCK_RECORDS = 1024
META_ENTRY_MAX_BLOCK_SIZE = 128 * 1024  # `$meta` attachment entries, as ReductStore
U64_MAX = 2**64 - 1


class RecordState(IntEnum):
    """Life cycle of a record: payload in flight, complete, or broken."""

    STARTED = 0
    FINISHED = 1
    ERRORED = 2


@dataclass(frozen=True, slots=True)
class BucketSettings:
    """Settings of one bucket; every field is always filled."""

    quota_type: QuotaType = QuotaType.NONE
    quota_size: int = 0
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE
    max_block_records: int = DEFAULT_MAX_BLOCK_RECORDS

    def merged(
        self,
        quota_type: QuotaType | None = None,
        quota_size: int | None = None,
        max_block_size: int | None = None,
        max_block_records: int | None = None,
    ) -> BucketSettings:
        """A copy where every argument that is not None replaces the current value."""
        changes = {
            k: v
            for k, v in {
                "quota_type": quota_type,
                "quota_size": quota_size,
                "max_block_size": max_block_size,
                "max_block_records": max_block_records,
            }.items()
            if v is not None
        }
        return replace(self, **changes)

    def to_json(self) -> dict[str, object]:
        """The settings as ReductStore's JSON object."""
        return {
            "quota_type": self.quota_type.value,
            "quota_size": self.quota_size,
            "max_block_size": self.max_block_size,
            "max_block_records": self.max_block_records,
        }


# Not frozen, though never mutated once built: the engine builds two of these per written
# record (and one per record it decodes), and a frozen dataclass's __init__ costs ~3x a plain
# one (``object.__setattr__`` per field; issue 15 profile). Treat instances as immutable: they
# are shared between the engine's block maps and readers; change one with ``replace``.
@dataclass(slots=True)
class RecordMeta:
    """What is known about one record without reading its payload (treat as immutable)."""

    timestamp: int
    size: int
    content_type: str
    labels: Mapping[str, str]
    state: RecordState
    entry: str = ""


class Pieces:
    """A payload held as the pieces it was received in, written as they are (never joined:
    copying a large record into one ``bytes`` costs a fresh allocation, whose first touch is
    slow on a VM, and a copy). ``len()`` is its size in bytes, ``bytes()`` joins it."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.size = sum(map(len, parts))

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


@dataclass(slots=True)
class NewRecord:
    """A whole record held in memory, for batch writes (not frozen: one per record of a
    batch, see ``RecordMeta``); ``data`` is a ``bytes`` or, for large records, ``Pieces``."""

    timestamp: int
    data: bytes | Pieces
    content_type: str = "application/octet-stream"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """Statistics of one entry, as ``GET /b/{bucket}`` lists them."""

    name: str
    size: int
    record_count: int
    block_count: int
    oldest_record: int
    latest_record: int
    status: str = "READY"


@dataclass(frozen=True, slots=True)
class BucketInfo:
    """Statistics of one bucket, as ``GET /list`` shows them."""

    name: str
    entry_count: int
    size: int
    oldest_record: int
    latest_record: int
    is_provisioned: bool = False
    status: str = "READY"


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """Instance-wide statistics for ``GET /info``."""

    bucket_count: int
    usage: int
    oldest_record: int
    latest_record: int


class WriteFence(Protocol):
    """The lease as the engine sees it (``roles/write_fence.py``): may this process still write?"""

    def check(self) -> None:
        """Raise ``ServiceUnavailable`` unless the lease is surely still ours (may do I/O)."""

    def deposed(self, reason: str) -> None:
        """The engine found a newer generation's file: step down (no I/O, never raises)."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Everything the engine needs from the settings (built by ``services.py``).

    ``generation`` (lease roles) is stamped into WAL and index commits; ``fence`` is checked
    before every mutation; ``wal_fence`` decides which WAL frames recovery may replay.
    """

    data_path: Path
    integrity_checks: bool = True
    sync_writes: bool = False
    min_free_space: int = 16 * MIB
    max_storage_size: int | None = None
    bucket_defaults: BucketSettings = BucketSettings()
    read_only: bool = False
    generation: int = 0
    fence: WriteFence | None = None
    wal_fence: Fence | None = None
    # The object-store mirror (``engine/mirror.py``) when the data lives on S3; None = local.
    mirror: Mirror | None = None
    # Journal every mutation for point-in-time recovery (continuous archiving on).
    journal: bool = False
