"""Who is using a data folder: ``<data>/.in-use``, locked with ``flock`` while a server has it open.

A serving instance holds a *shared* lock (several may: a lease holder and its read-only
replicas) and writes its identity into the file; ``appliance check`` asks for an *exclusive*
one. So ``check --repair`` can refuse a folder a running instance holds (naming it), plain
``check`` can warn that its report may be inconsistent, and a server does not open a folder
that a repair is rewriting. The lock dies with its process (SIGKILL included): no stale state.
A folder where the file cannot be created (a read-only replica mount) is simply not marked.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

IN_USE_FILE = ".in-use"


class FolderInUse(Exception):
    """The folder is locked by another process; the message names it when it can."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


class InUseLock:
    """One process's lock on ``<data>/.in-use`` (shared for a server, exclusive for a check)."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / IN_USE_FILE
        self._fd: int | None = None

    def acquire(self, *, exclusive: bool, who: str, read_only: bool = False) -> bool:
        """Take the lock without waiting; FolderInUse if it is held incompatibly.

        Returns False (and holds nothing) when the file cannot be opened at all (read-only
        folder, or ``read_only`` and no server made it yet); ``who`` is written into the file when it can be (the holder's identity).
        Taking it again first drops the lock held so far (a lease holder re-opening).
        """
        self.release()
        try:
            if read_only:  # a replica never creates or writes anything in the folder
                raise PermissionError
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            writable = True
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return False
            writable = False
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUse(holder) from None
        except OSError:  # a file system without flock: nothing to learn, nothing to hold
            os.close(fd)
            return False
        if writable:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, who.encode() + b"\n", 0)
            except OSError:
                pass
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def identity(what: str) -> str:
    """A line naming this process: ``<what> pid 123 on host since 2025-01-01T10:00:00Z``."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{what} pid {os.getpid()} on {socket.gethostname()} since {since}"
