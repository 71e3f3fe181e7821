"""The engine's file operations: atomic metadata writes, durable renames, removal, truncation.

The system calls that make data durable (``os.fsync``, ``os.replace``) live in one module for the
whole code base, ``backends.durability``; this module builds the engine's operations on them and
re-exports ``fsync_fd``, ``fsync_dir`` and ``replace`` so engine code imports one module. No
other engine module calls ``os.fsync``, ``os.rename`` or ``os.replace`` (tested).

Fault model: the process may die (SIGKILL) between any two system calls, and, unless writes were
fsynced, the machine may lose power and drop anything not yet on stable storage. Therefore:

- ``atomic_write``: write ``<name>.tmp`` next to the target, fsync it, rename over the target,
  fsync the directory; on error the tmp file is removed and the old target is untouched. A
  reader sees either the old or the new bytes, never a mix. The fixed tmp name (unlike the
  backends' unique temp names) lets entry recovery sweep leftovers by suffix.
- ``replace`` / ``move``: rename plus a directory fsync (both directories when they differ).
- ``fsync_fd`` / ``fsync_dir``: explicit flushes for the group committer and for close().
- ``retire_dir``: a bucket or entry removal first renames its folder into ``<data>/.removing/``
  (one durable rename: the removal has happened, all or nothing, as seen after any crash), then
  deletes it; startup finishes deletions a crash interrupted (``purge_removing``).
- ``make_dirs``: ``mkdir -p`` that, when syncing, fsyncs the parent of every folder it made, so a
  new bucket or entry folder survives power loss along with the files in it.

Errors are ``OSError`` here; the engine translates them at its boundary.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from backends.durability import fsync_dir, fsync_fd, hard_link, replace, write_all

__all__ = [
    "REMOVING_DIR",
    "allocate",
    "TMP_SUFFIX",
    "atomic_write",
    "free_bytes",
    "make_dirs",
    "punch_hole",
    "purge_removing",
    "retire_dir",
    "fsync_dir",
    "fsync_fd",
    "hard_link",
    "move",
    "read_at",
    "read_chunks",
    "read_file",
    "remove_file",
    "remove_tree",
    "rename_dir",
    "staging_dir",
    "replace",
    "truncate",
]

TMP_SUFFIX = ".tmp"
# Folders being deleted: a removal is one rename into here (never a bucket name: it starts with .)
REMOVING_DIR = ".removing"


def atomic_write(path: Path, data: bytes, sync: bool = True, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (tmp, write, fsync, rename, fsync dir).

    ``sync=False`` skips both fsyncs: still atomic against a process crash, not power loss.
    ``sync_dir=False`` leaves the folder's fsync to the caller (one for many files).
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, (data,))
            if sync:
                fsync_fd(fd)
        finally:
            os.close(fd)
        replace(tmp, path, sync=False)  # the directory fsync follows, outside the cleanup
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync and sync_dir:
        fsync_dir(path.parent)


def move(src: Path, dst: Path) -> Path:
    """Move a file or folder to ``dst`` (parents created; ``.1``, ``.2``... if taken)."""
    make_dirs(dst.parent, sync=True)
    target = dst
    counter = 0
    while target.exists():
        counter += 1
        target = dst.with_name(f"{dst.name}.{counter}")
    replace(src, target)
    return target


def rename_dir(src: Path, dst: Path) -> None:
    """Rename a folder (bucket or entry) whose target must not exist; durable."""
    if dst.exists():
        raise FileExistsError(dst)
    make_dirs(dst.parent, sync=True)
    replace(src, dst)


def read_chunks(fd: int, size: int, offset: int, chunk_bytes: int = 0) -> Iterator[bytes]:
    """``pread`` ``size`` bytes from ``offset`` in chunks of at most ``chunk_bytes`` (0: as
    few as the kernel allows); stops early at end of file, so the caller checks the length."""
    step = chunk_bytes or size
    done = 0
    while done < size:
        chunk = os.pread(fd, min(step, size - done), offset + done)
        if not chunk:
            return
        done += len(chunk)
        yield chunk


def read_at(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes from ``offset`` (fewer only at end of file): very large reads come back
    from the kernel in pieces, so one ``pread`` is not enough."""
    return b"".join(read_chunks(fd, size, offset))


def read_file(path: Path) -> bytes:
    """Whole file contents."""
    with open(path, "rb") as handle:
        return handle.read()


def remove_file(path: Path, sync: bool = False) -> bool:
    """Unlink ``path`` if it exists; return whether it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync:
        fsync_dir(path.parent)
    return True


def remove_tree(path: Path) -> None:
    """Delete a folder and everything below it (missing is fine)."""
    shutil.rmtree(path, ignore_errors=False, onerror=_ignore_missing)
    if path.parent.exists():
        fsync_dir(path.parent)


def _ignore_missing(func: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def truncate(path: Path, length: int) -> None:
    """Cut a file at ``length`` bytes and flush it (used to drop a torn WAL tail)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        fsync_fd(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    """Bytes available to unprivileged writers on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def make_dirs(path: Path, sync: bool) -> None:
    """``mkdir -p``; with ``sync`` fsync the parent of each folder made (durable names)."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # made by a concurrent caller: its parent is synced by that caller
        if sync:
            fsync_dir(folder.parent)


def staging_dir(data_path: Path) -> Path:
    """A new empty folder in ``.removing`` to build a folder in before renaming it into place.

    Startup deletes whatever is left in ``.removing``, so a crash mid-creation leaves no trace.
    """
    trash = data_path / REMOVING_DIR
    make_dirs(trash, sync=True)
    folder = trash / f"new-{uuid.uuid4().hex}"
    os.mkdir(folder)
    return folder


def retire_dir(path: Path, data_path: Path) -> Path | None:
    """Atomically take ``path`` out of the data (rename into ``.removing``); its new place.

    Needs no free space. None if ``path`` does not exist.
    """
    trash = data_path / REMOVING_DIR
    make_dirs(trash, sync=True)
    target = trash / uuid.uuid4().hex
    try:
        replace(path, target)  # fsyncs both folders: the removal is durable from here on
    except FileNotFoundError:
        return None
    return target


def purge_removing(data_path: Path) -> list[Path]:
    """Delete what removals left in ``.removing`` (a crash cut them short); what was there."""
    trash = data_path / REMOVING_DIR
    if not trash.is_dir():
        return []
    found = sorted(trash.iterdir())
    for leftover in found:
        if leftover.is_dir() and not leftover.is_symlink():
            remove_tree(leftover)
        else:
            remove_file(leftover)
    return found


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc: ctypes.CDLL | None = None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the disk blocks of ``[offset, offset + length)`` (reads give zeros); needs no space.

    False where the file system or platform cannot (the caller then keeps the bytes).
    """
    global _libc
    if length <= 0:
        return True
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
    if fallocate is None:
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return fallocate(fd, mode, offset, length) == 0


def allocate(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes really allocated (the removal reserve)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
