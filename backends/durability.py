"""Durability primitives for local files: temp files, fsync, atomic publish (rename or link).

The one module in the code base that calls ``os.fsync``, ``os.replace`` or ``os.link``. Every
backend that touches a local file (the filesystem backend for its objects; every backend for
``download``) goes through here, and so does the storage engine: ``appliance.engine.fs_ops``
builds its atomic metadata writes on ``write_all``/``fsync_fd``/``replace``/``fsync_dir`` (the
dependency points engine -> backends, never back). Functions raise plain ``OSError``; backend
callers translate with ``backends.os_errors``, the engine at its boundary. The per-key locks
that guard compare-and-replace are in ``backends.key_lock``.

Fault model (POSIX, one host, or NFSv3+ with close-to-open consistency):

- Crash at any point leaves either the old object or the new one at the target name, never a
  torn file: data goes to a temp file in the same directory, is fsynced, then published by
  ``rename`` (replace) or ``link`` (create-if-absent), and the directory is fsynced.
- A crash can leave a temp file or a lock file behind. Both carry reserved suffixes
  (``base.RESERVED_SUFFIXES``), which ``list`` hides and keys may not use.
- ``link`` fails with EEXIST if the target exists, on every POSIX filesystem and on NFS. On NFS
  a retransmitted LINK can report failure although it succeeded, so a failed link is re-checked
  by the temp file's link count reaching 2 (open(2), "O_EXCL" notes).
- ``flock`` (``backends.key_lock``) guards compare-and-replace; create-if-absent relies on
  ``link`` alone, because some mounts do not support ``flock``.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from backends.base import LOCK_SUFFIX, TEMP_SUFFIX

MIB = 1024 * 1024
CHUNK_BYTES = 1 * MIB
# Buffers per pwritev call (Linux's IOV_MAX).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
# Bytes per write system call at most (``write_all``). Measured on a 2-core VM (Linux 6.18,
# ext4): batches written with one 8 MiB pwritev spent 1.35-1.7 ms of system time a MiB, with
# 1 MiB calls 0.3-0.4; a call per MiB costs a microsecond. Our reading, not proven: the kernel
# sizes page-cache folios to the write (up to 2 MiB), those come from the largest free blocks,
# and on a VM with free page reporting (virtio-balloon, 2 MiB blocks and up) the host has taken
# those back, so each first touch faults the memory in again.
MAX_WRITE_BYTES = 1 * MIB
NS_PER_SECOND = 1_000_000_000
NS_PER_MICROSECOND = 1_000
# Longest file name most filesystems accept (NAME_MAX); temp and lock names must stay below it.
NAME_MAX = 255
# How often to retry creating a file whose directory a concurrent delete just pruned.
_CREATE_ATTEMPTS = 5


def is_internal_name(name: str) -> bool:
    """True for the temp and lock files a backend keeps beside the data."""
    return name.endswith((TEMP_SUFFIX, LOCK_SUFFIX))


def fsync_fd(fd: int) -> None:
    """Flush one open file to stable storage."""
    os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    """Make renames, links and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hard_link(src: Path, dst: Path) -> None:
    """Give ``src``'s inode the second name ``dst`` (no fsync: the caller syncs the folder)."""
    os.link(src, dst)


def write_all(fd: int, chunks: Iterable[bytes | memoryview], offset: int | None = None) -> None:
    """Write every chunk to ``fd``, looping over short writes (no fsync).

    With ``offset`` the chunks go there with ``pwrite`` and the file position is left alone,
    so threads sharing a cached descriptor can write at their own reserved offsets; a list of
    several chunks goes with ``pwritev`` (one system call, one release of the GIL, no join).
    No call writes more than ``MAX_WRITE_BYTES``.
    """
    if offset is not None and type(chunks) is list and len(chunks) > 1:
        _pwritev_all(fd, chunks, offset)
        return
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            part = view if len(view) <= MAX_WRITE_BYTES else view[:MAX_WRITE_BYTES]
            if offset is None:
                written = os.write(fd, part)
            else:
                written = os.pwrite(fd, part, offset)
                offset += written
            view = view[written:]


def _pwritev_all(fd: int, chunks: list[bytes | memoryview], offset: int) -> None:
    """``pwritev`` of ``chunks`` at ``offset``: consecutive buffers up to ``MAX_WRITE_BYTES``
    (and ``IOV_MAX`` buffers) per call, a larger buffer a slice at a time; resumes after a
    short write."""
    views = [memoryview(chunk) for chunk in chunks if len(chunk)]
    i = 0
    count = len(views)
    while i < count:
        size = len(views[i])
        if size >= MAX_WRITE_BYTES:
            batch = [views[i][:MAX_WRITE_BYTES]]
        else:
            j = i + 1
            while j < count and j - i < IOV_MAX and size + len(views[j]) <= MAX_WRITE_BYTES:
                size += len(views[j])
                j += 1
            batch = views[i:j]
        written = os.pwritev(fd, batch, offset)
        if not written:  # a regular file never takes nothing; do not spin
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += written
        while written and i < count:  # skip what went out; cut a partly written view
            size = len(views[i])
            if written < size:
                views[i] = views[i][written:]
                break
            written -= size
            i += 1


def replace(src: Path, dst: Path, sync: bool = True) -> None:
    """Rename ``src`` over ``dst`` (atomic) and make the rename durable.

    With ``sync`` the target's folder is fsynced, and the source's too when it differs (the
    entry left it); ``sync=False`` is still atomic against a process crash, not power loss.
    """
    os.replace(src, dst)
    if sync:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)


def file_chunks(handle: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield a file's content in bounded chunks, so large files never sit in memory whole."""
    while chunk := handle.read(chunk_bytes):
        yield chunk


def temp_path_for(target: Path) -> Path:
    """A fresh, hidden, unique temp name in ``target``'s folder (same filesystem: rename works)."""
    stem = target.name[: NAME_MAX // 2]
    return target.with_name(f".{stem}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def open_creating_parents(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that (re)creates missing parent folders, which a concurrent delete may prune."""
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            return os.open(path, flags, mode)
        except FileNotFoundError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
    raise AssertionError("unreachable")


class TempFile:
    """A uniquely named file next to ``target`` that is either published or removed."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = temp_path_for(target)
        self.fd = open_creating_parents(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._temp_name_gone = False

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def write_all(self, chunks: Iterable[bytes | memoryview]) -> None:
        """Write every chunk, then fsync, so the data is on disk before it gets a name."""
        write_all(self.fd, chunks)
        fsync_fd(self.fd)

    def stamp_mtime(self, after_ns: int | None) -> os.stat_result:
        """Set mtime to now, or just past ``after_ns``, and fsync; return the resulting stat.

        The filesystem etag is (inode, mtime_ns, size). Kernel timestamps come from a coarse
        clock (a few ms) and inodes are reused, so two quick identical writes could otherwise
        share an etag; a strictly increasing mtime per key rules that out.
        """
        want = time.time_ns()
        if after_ns is not None and want <= after_ns:
            want = after_ns + NS_PER_MICROSECOND
        for _ in range(3):
            os.utime(self.fd, ns=(want, want))
            stat = os.fstat(self.fd)
            if after_ns is None or stat.st_mtime_ns > after_ns:
                break
            # The filesystem truncated our timestamp (1 s or 2 s granularity): step further.
            want = max(want, after_ns) + NS_PER_SECOND
        fsync_fd(self.fd)
        return stat

    def publish_replace(self) -> None:
        """Rename over the target (atomic) and make the rename durable."""
        os.replace(self.path, self.target)
        self._temp_name_gone = True
        fsync_dir(self.target.parent)

    def publish_link(self) -> bool:
        """Give the data the target name only if that name is free; False if it is taken."""
        try:
            os.link(self.path, self.target)
        except FileExistsError:
            # On NFS a retried LINK reports EEXIST even when the first attempt created it.
            if os.fstat(self.fd).st_nlink < 2:
                return False
        self.discard()  # drop the temp name; the data lives on under the target name
        fsync_dir(self.target.parent)
        return True

    def discard(self) -> None:
        """Close the descriptor and remove the temp name if it still exists (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self._temp_name_gone:
            self._temp_name_gone = True
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass



def remove_empty_dirs(directory: Path, *, stop: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, never ``stop`` or above it."""
    while directory != stop and stop in directory.parents:
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty (or already gone, or busy): either way we are done
        directory = directory.parent


def publish_local_path(temp: Path, target: Path) -> None:
    """Fsync a finished temp file written by someone else (boto3), then rename it into place."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)
    replace(temp, target)


def write_local_file(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write a caller's local file atomically: temp file beside it, fsync, rename."""
    with TempFile(path) as temp:
        temp.write_all(chunks)
        temp.publish_replace()
