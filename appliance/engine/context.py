"""Shared state of one open storage: options, caches of fds and blocks, the group committer."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.engine.block import BlockCache
from appliance.engine.commit import GroupCommitter
from appliance.engine.files import FileCache
from appliance.engine.models import EngineOptions
from appliance.errors import Forbidden

QUARANTINE_DIR = ".quarantine"
READ_ONLY_MESSAGE = "Cannot perform this operation in read-only mode"

log = logging.getLogger(__name__)
_uids = itertools.count(1)


@dataclass
class EngineContext:
    """Everything buckets and entries share; built once by ``Storage.open``."""

    options: EngineOptions
    files: FileCache
    blocks: BlockCache
    committer: GroupCommitter | None
    storage_usage: Callable[[], int] = field(default=lambda: 0)

    @classmethod
    def create(cls, options: EngineOptions) -> EngineContext:
        """A context for ``options`` (committer only when writes are synced)."""
        return cls(
            options=options,
            files=FileCache(sync_on_close=options.sync_writes),
            blocks=BlockCache(),
            committer=GroupCommitter() if options.sync_writes else None,
        )

    @property
    def data_path(self) -> Path:
        """Root of the data folder."""
        return self.options.data_path

    @property
    def generation(self) -> int:
        """Lease generation stamped into WAL frames and index commits."""
        return self.options.generation

    @property
    def sync(self) -> bool:
        """Whether writes are fsynced before they are acknowledged."""
        return self.options.sync_writes

    def quarantine_path(self, bucket: str, entry: str) -> Path:
        """Where damaged files of one entry are moved."""
        return self.data_path / QUARANTINE_DIR / bucket / entry

    def check_writable(self) -> None:
        """Refuse mutations on a read-only instance (403, ReductStore's message)."""
        if self.options.read_only:
            raise Forbidden(READ_ONLY_MESSAGE)

    @staticmethod
    def new_uid() -> int:
        """A process-unique id for an entry incarnation (block cache keys)."""
        return next(_uids)
