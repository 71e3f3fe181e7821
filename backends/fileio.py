"""Durability primitives for local files: temp files, fsync, atomic publish, per-key locks.

The one module in the code base that calls ``os.fsync``, ``os.replace`` or ``os.link``. Every
backend that touches a local file (the filesystem backend for its objects; every backend for
``download``) goes through here, and so does the storage engine: ``appliance.engine.fileio``
builds its atomic metadata writes on ``write_all``/``fsync_fd``/``replace``/``fsync_dir`` (the
dependency points engine -> backends, never back). Functions raise plain ``OSError``; backend
callers translate with ``translate_os_error`` or ``local_file_error``, the engine at its boundary.

Fault model (POSIX, one host, or NFSv3+ with close-to-open consistency):

- Crash at any point leaves either the old object or the new one at the target name, never a
  torn file: data goes to a temp file in the same directory, is fsynced, then published by
  ``rename`` (replace) or ``link`` (create-if-absent), and the directory is fsynced.
- A crash can leave a temp file or a lock file behind. Both carry reserved suffixes
  (``base.RESERVED_SUFFIXES``), which ``list`` hides and keys may not use.
- ``link`` fails with EEXIST if the target exists, on every POSIX filesystem and on NFS. On NFS
  a retransmitted LINK can report failure although it succeeded, so a failed link is re-checked
  by the temp file's link count reaching 2 (open(2), "O_EXCL" notes).
- ``flock`` is advisory and released by the kernel when the holder dies; over NFS Linux emulates
  it with byte-range locks, and some FUSE mounts do not support it at all (``spec/leases.md``
  §3.3). It therefore guards compare-and-replace, while create-if-absent relies on ``link``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from backends.base import LOCK_SUFFIX, TEMP_SUFFIX
from backends.errors import BackendError, BackendUnavailable, InvalidKey, ObjectNotFound

MIB = 1024 * 1024
CHUNK_BYTES = 1 * MIB
NS_PER_SECOND = 1_000_000_000
NS_PER_MICROSECOND = 1_000
# Longest file name most filesystems accept (NAME_MAX); temp and lock names must stay below it.
NAME_MAX = 255
# How often to retry creating a file whose directory a concurrent delete just pruned.
_CREATE_ATTEMPTS = 5
# A waiter looks at the holder's process state after this long; a stopped one loses the lock.
STOPPED_CHECK_AFTER_SECONDS = 0.05
# /proc states of a holder that will not release the lock by itself: stopped, traced, dead.
STOPPED_STATES = frozenset({"T", "t", "Z", "X"})

# errnos that describe a condition that may clear by itself (or by an operator freeing space).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOLCK,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def translate_os_error(
    exc: OSError, *, backend: str, key: str, action: str, writing: bool = False
) -> BackendError:
    """Map an OSError about a stored object to the backend error a caller can act on.

    ENOENT/ENOTDIR/EISDIR mean "missing" when reading; when writing they mean a folder and a
    file want the same name (``a`` and ``a/b``), which is a conflict, not a missing object.
    """
    detail = f"{action} failed: {exc.strerror or exc}"
    if exc.errno in MISSING_ERRNOS:
        if writing:
            return BackendError(
                f"{detail} (part of the key names a file, or the key names a folder)",
                backend=backend,
                key=key,
            )
        return ObjectNotFound("no such object", backend=backend, key=key)
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidKey(f"{detail} (a key segment is too long)", backend=backend, key=key)
    if exc.errno in TRANSIENT_ERRNOS:
        return BackendUnavailable(detail, backend=backend, key=key)
    return BackendError(detail, backend=backend, key=key)


def local_file_error(exc: OSError, *, backend: str, key: str, path: Path) -> BackendError:
    """Map an OSError about the caller's local file; never ObjectNotFound, which means the key."""
    detail = f"local file {str(path)!r}: {exc.strerror or exc}"
    if exc.errno in TRANSIENT_ERRNOS:
        return BackendUnavailable(detail, backend=backend, key=key)
    return BackendError(detail, backend=backend, key=key)


def is_internal_name(name: str) -> bool:
    """True for the temp and lock files a backend keeps beside the data."""
    return name.endswith((TEMP_SUFFIX, LOCK_SUFFIX))


def lock_path_for(target: Path) -> Path:
    """The sidecar lock file that serialises mutations of ``target``: ``.<name>.cas-lock``."""
    name = f".{target.name}{LOCK_SUFFIX}"
    if len(name.encode()) > NAME_MAX:
        # Long names get a hashed lock name; a collision would only serialise two keys.
        name = f".{uuid.uuid5(uuid.NAMESPACE_URL, target.name).hex}{LOCK_SUFFIX}"
    return target.with_name(name)


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


def write_all(fd: int, chunks: Iterable[bytes | memoryview]) -> None:
    """Write every chunk to ``fd``, looping over short writes (no fsync)."""
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


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


def _open_creating_parents(path: Path, flags: int, mode: int = 0o666) -> int:
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
        self.fd = _open_creating_parents(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
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


@contextmanager
def key_lock(target: Path, *, timeout_seconds: float) -> Iterator[Callable[[], bool]]:
    """Hold an exclusive ``flock`` on ``target``'s sidecar lock file, across processes.

    Yields ``still_held()``: False once a waiter took the lock over (see below), so a holder
    can check it right before its commit step and back off instead of committing unguarded.

    The holder removes the lock file on release so locks do not pile up beside the data. A
    waiter that then wins the flock holds a lock on an unlinked inode, which excludes nobody,
    so it checks that the path still names its inode and starts over if not.

    A holder that is *stopped* (SIGSTOP, ``docker pause``) keeps its flock, and the kernel
    releases it only when the process dies, so every other writer of the key would wait until
    it resumes: a paused lease holder could block its successor's lease renewals forever. The
    holder therefore writes ``pid boot_id pid_namespace`` into the lock file, and a waiter on
    the same host that finds that process stopped (or gone) steals the lock by unlinking the
    path. The resumed holder sees ``still_held()`` turn False before it commits.
    """
    lock_path = lock_path_for(target)
    fd = _acquire(lock_path, deadline=time.monotonic() + timeout_seconds)
    try:
        yield lambda: _names_inode(lock_path, fd)
    finally:
        try:
            # Still holding the flock: waiters will notice and start over. Not after a steal:
            # the path then names the new holder's lock file.
            if _names_inode(lock_path, fd):
                os.unlink(lock_path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def _acquire(lock_path: Path, *, deadline: float) -> int:
    """Return a descriptor holding the flock on the file ``lock_path`` names right now."""
    pause = 0.0005  # polling (not a blocking flock) so a hung holder turns into a timeout
    started = time.monotonic()
    while True:
        fd = _open_creating_parents(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _names_inode(lock_path, fd):
                _stamp_holder(fd)
                return fd
        except BlockingIOError:
            now = time.monotonic()
            if now - started >= STOPPED_CHECK_AFTER_SECONDS and _holder_is_stopped(fd):
                _steal(lock_path, fd)
                os.close(fd)
                continue
            if now > deadline:
                os.close(fd)
                raise OSError(errno.ETIMEDOUT, f"lock {lock_path} held too long") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _host_identity() -> str:
    """``boot_id pid_namespace``: two processes with equal identities share pid numbers."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot_id = handle.read().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot_id} {pid_ns}"


_HOST_IDENTITY = _host_identity()


def _stamp_holder(fd: int) -> None:
    """Record who holds the lock, so a waiter can tell a stopped holder (no fsync: a hint)."""
    if not _HOST_IDENTITY:
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_HOST_IDENTITY}\n".encode(), 0)
    except OSError:
        pass  # only a hint for waiters; the flock is what excludes


def _holder_is_stopped(fd: int) -> bool:
    """True if the lock file names a process on this host that is stopped or gone."""
    try:
        raw = os.pread(fd, 256, 0).decode("ascii", "replace").split()
    except OSError:
        return False
    if len(raw) != 3 or not raw[0].isdigit() or " ".join(raw[1:]) != _HOST_IDENTITY:
        return False  # another host, another pid namespace, or not stamped yet: cannot tell
    pid = int(raw[0])
    if pid == os.getpid():
        return False  # another thread of ours: it is running
    return process_state(pid) in STOPPED_STATES


def process_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` ("R", "S", "T"...); "X" if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return "X"
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else "X"


def _steal(lock_path: Path, fd: int) -> None:
    """Unlink the lock file of a stopped holder (only if ``fd`` still names it)."""
    if _names_inode(lock_path, fd):
        try:
            os.unlink(lock_path)
        except FileNotFoundError:
            pass


def _names_inode(path: Path, fd: int) -> bool:
    """True if ``path`` currently names the file open as ``fd``."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


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
