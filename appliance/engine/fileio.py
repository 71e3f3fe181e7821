"""The engine's file operations: atomic metadata writes, durable renames, removal, truncation.

The system calls that make data durable (``os.fsync``, ``os.replace``) live in one module for the
whole code base, ``backends.fileio``; this module builds the engine's operations on them and
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

Errors are ``OSError`` here; the engine translates them at its boundary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from backends.fileio import fsync_dir, fsync_fd, hard_link, replace, write_all

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "free_bytes",
    "fsync_dir",
    "fsync_fd",
    "hard_link",
    "move",
    "read_file",
    "remove_file",
    "remove_tree",
    "rename_dir",
    "replace",
    "truncate",
]

TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (tmp, write, fsync, rename, fsync dir).

    ``sync=False`` skips both fsyncs: still atomic against a process crash, not power loss.
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
    if sync:
        fsync_dir(path.parent)


def move(src: Path, dst: Path) -> Path:
    """Move a file or folder to ``dst`` (parents created; ``.1``, ``.2``... if taken)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    replace(src, dst)


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
