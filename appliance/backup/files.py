"""File helpers of the backup package: CRC32C of a file prefix, copying a prefix with its CRC,
walking a backup's files, and the sizes a folder holds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import google_crc32c

from appliance.engine import fs_ops

CHUNK_BYTES = 4 * 1024 * 1024


def prefix_chunks(path: Path, size: int | None) -> Iterator[bytes]:
    """The first ``size`` bytes of ``path`` (all: None) in chunks (EOFError if it is shorter)."""
    with open(path, "rb") as handle:
        left = size if size is not None else -1
        while left:
            chunk = handle.read(CHUNK_BYTES if left < 0 else min(CHUNK_BYTES, left))
            if not chunk:
                if left > 0:
                    raise EOFError(f"{path} is shorter than {size} bytes")
                return
            yield chunk
            if left > 0:
                left -= len(chunk)


def crc_prefix(path: Path, size: int) -> int:
    """CRC32C of the first ``size`` bytes of ``path`` (EOFError if it is shorter)."""
    crc = 0
    for chunk in prefix_chunks(path, size):
        crc = google_crc32c.extend(crc, chunk)
    return crc


def copy_prefix(src: Path, dst: Path, size: int | None = None) -> int:
    """Copy the first ``size`` bytes (all: None) of ``src`` to a new ``dst``, fsynced; its CRC32C.

    ``dst`` is a new inode (never a link): what happens to ``src`` later cannot reach it.
    """
    crc = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in prefix_chunks(src, size):
            crc = google_crc32c.extend(crc, chunk)
            fs_ops.write_all(fd, (chunk,))
        fs_ops.fsync_fd(fd)
    finally:
        os.close(fd)
    return crc


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative posix path, path)`` of every regular file under ``root``, sorted."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        base = Path(folder)
        for name in sorted(names):
            path = base / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def sync_tree(root: Path) -> None:
    """fsync every folder under ``root`` (the names of new files become durable)."""
    for folder, _dirs, _names in os.walk(root):
        fs_ops.fsync_dir(Path(folder))


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links counted each time)."""
    total = 0
    for _, path in walk_files(root):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            # A backup in progress renames its temporary files while we list it.
            continue
    return total


def digest_prefix(path: Path, size: int) -> tuple[int, str]:
    """CRC32C and SHA-256 (hex) of the first ``size`` bytes of ``path``."""
    import hashlib

    crc = 0
    sha = hashlib.sha256()
    for chunk in prefix_chunks(path, size):
        crc = google_crc32c.extend(crc, chunk)
        sha.update(chunk)
    return crc, sha.hexdigest()
