"""The shapes a copy moves: record headers, entry statistics, a source batch, copy errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A record without its payload: what a batch header says about it."""

    entry: str
    timestamp: int
    size: int
    content_type: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EntryStat:
    """One entry of the source bucket, as ``GET /b/{bucket}`` lists it."""

    name: str
    record_count: int
    oldest_record: int
    latest_record: int


class CopyError(Exception):
    """A request that failed as a whole (the message names the side, the URL and the cause).

    ``transient`` errors (connection trouble, 5xx, 429) are worth retrying: the copier resumes
    the entry after the last acknowledged record. Others (401, 403, 404, 422…) are not.
    ``timestamp`` names the one record that could not be read (a corrupt payload at a local
    source): the copier counts it as failed and resumes after it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        transient: bool = False,
        timestamp: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.timestamp = timestamp


class SourceBatch(Protocol):
    """Records read together; their payloads are consumed in order, each at most once."""

    @property
    def records(self) -> Sequence[RecordHeader]:
        """The batch's records in ascending timestamp order."""
        ...

    def payload(self, record: RecordHeader) -> AsyncIterator[bytes]:
        """The payload of ``record`` in chunks; records before it that were not asked for
        are skipped. Call in ascending timestamp order."""
        ...


class Source(Protocol):
    """Where records come from: an instance over HTTP, or a local data folder."""

    description: str

    async def bucket_settings(self) -> dict[str, Any]:
        """The bucket's settings as ReductStore's JSON object (CopyError if unreachable)."""
        ...

    async def entries(self) -> list[EntryStat]:
        """Every entry of the bucket with its statistics."""
        ...

    def read(
        self, entry: str, start: int | None, stop: int | None, when: Mapping[str, Any] | None
    ) -> AsyncIterator[SourceBatch]:
        """Batches of the entry's records with start <= ts < stop matching ``when``."""
        ...

    async def aclose(self) -> None:
        """Release connections, files and threads."""
        ...
