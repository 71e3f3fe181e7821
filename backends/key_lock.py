"""Per-key exclusive locks across processes: ``flock`` on a sidecar lock file, stealable when stale.

``flock`` is advisory and released by the kernel when the holder dies; over NFS Linux emulates
it with byte-range locks, and some FUSE mounts do not support it at all (``spec/leases.md``
§3.3). It therefore guards compare-and-replace, while create-if-absent relies on ``link``
(``backends.durability``). A crash can leave a lock file behind; its reserved suffix
(``base.LOCK_SUFFIX``) hides it from ``list``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.base import LOCK_SUFFIX
from backends.durability import NAME_MAX, open_creating_parents

# A waiter looks at the holder's process state after this long; a stopped one loses the lock.
STOPPED_CHECK_AFTER_SECONDS = 0.05
# /proc states of a holder that will not release the lock by itself: stopped, traced, dead.
STOPPED_STATES = frozenset({"T", "t", "Z", "X"})


def lock_path_for(target: Path) -> Path:
    """The sidecar lock file that serialises mutations of ``target``: ``.<name>.cas-lock``."""
    name = f".{target.name}{LOCK_SUFFIX}"
    if len(name.encode()) > NAME_MAX:
        # Long names get a hashed lock name; a collision would only serialise two keys.
        name = f".{uuid.uuid5(uuid.NAMESPACE_URL, target.name).hex}{LOCK_SUFFIX}"
    return target.with_name(name)



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
        fd = open_creating_parents(lock_path, os.O_RDWR | os.O_CREAT)
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

