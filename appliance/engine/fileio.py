"""Durability primitives: the only module that calls ``os.fsync``, ``os.rename`` or ``os.replace``.

Fault model: the process may die (SIGKILL) between any two system calls, and, unless writes were
fsynced, the machine may lose power and drop anything not yet on stable storage. Therefore:

- ``atomic_write``: write ``<name>.tmp`` next to the target, fsync it, rename over the target,
  fsync the directory; on error the tmp file is removed and the old target is untouched. A
  reader sees either the old or the new bytes, never a mix.
- ``replace`` / ``move``: rename plus a directory fsync (both directories when they differ).
- ``fsync_fd`` / ``fsync_dir``: explicit flushes for the group committer and for close().

Errors are ``OSError`` here; the engine translates them at its boundary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_fd(fd: int) -> None:
    """Flush one open file to stable storage."""
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames, unlinks) to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (tmp, write, fsync, rename, fsync dir).

    ``sync=False`` skips both fsyncs: still atomic against a process crash, not power loss.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


def replace(src: Path, dst: Path, sync: bool = True) -> None:
    """Rename ``src`` over ``dst`` and make the rename durable."""
    os.replace(src, dst)
    if sync:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)


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
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    """Bytes available to unprivileged writers on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
