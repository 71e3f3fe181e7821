"""The removal reserve: disk space held back so that removals work on a completely full disk.

Removing records rewrites a block descriptor and the block index (atomic writes: a new file
beside the old one) before any payload space comes free, so on a 100 % full file system a
removal would fail for want of the very space it is meant to free (issue 8 item 2). The engine
therefore keeps ``<data>/.reserve``, a file of ``RESERVE_BYTES`` really allocated bytes, made
at startup while there is room. A removal that finds less than that free deletes the reserve
first (``make_room``), then proceeds; afterwards (``refill``) the reserve is made again once
it fits without pushing free space under ``min_free_space``, i.e. without refusing writes.

Payload space then comes free without a copy: a block whose data file cannot be rewritten
(no room for the copy) gets the removed records' ranges punched out (``fs_ops.punch_hole``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.engine import fs_ops
from appliance.units import MIB

RESERVE_FILE = ".reserve"
# Enough for the descriptor of a block of a few thousand labelled records plus the index of
# thousands of blocks: what one removal step writes before it frees anything.
RESERVE_BYTES = 4 * MIB

log = logging.getLogger(__name__)


class RemovalReserve:
    """The ballast file of one data folder (thread-safe)."""

    def __init__(self, data_path: Path, size: int, min_free_space: int) -> None:
        self.path = data_path / RESERVE_FILE
        self.size = size
        self._min_free = min_free_space
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes held back right now (0 after a removal used them up)."""
        try:
            return self.size if os.stat(self.path).st_size >= self.size else 0
        except FileNotFoundError:
            return 0

    def refill(self) -> None:
        """Make the reserve if it is missing and fits without refusing writes (else later)."""
        with self._lock:
            if self.held:
                return
            try:
                if fs_ops.free_bytes(self.path.parent) < self.size + self._min_free:
                    return
                fs_ops.allocate(self.path, self.size)
            except OSError as exc:
                log.warning("can't make the removal reserve: %s", exc)

    def make_room(self) -> None:
        """Give the reserve up when the disk is (nearly) full, so a removal can proceed."""
        with self._lock:
            try:
                if fs_ops.free_bytes(self.path.parent) >= self.size:
                    return
                if fs_ops.remove_file(self.path):
                    log.warning("disk full: removal reserve released for a removal")
            except OSError as exc:
                log.warning("can't release the removal reserve: %s", exc)
