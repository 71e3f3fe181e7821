"""The mutation journal: every change of the data set, in order, with its time (issue 12 §2).

Point-in-time recovery replays it over a base backup. The WAL cannot serve: it is per block,
deleted at compaction, and removals, entry and bucket changes never pass through it. So with
continuous archiving on (``RS_BACKUP_ARCHIVE_INTERVAL``) every committed mutation is also
appended here, inside the write gate and the entry lock, with its payload bytes (a record
removed seconds later must still be restorable to the instant before) and a strictly
increasing sequence number and µs time.

Files: ``<data>/.journal/<first seq, 20 digits>.jnl`` segments, appended with ``O_APPEND``;
``rotate`` closes the open segment so the archiver can ship it (``appliance/backup/pitr.py``)
and delete it. ``next_seq`` survives restarts in ``<data>/.journal/next`` (written at each
rotation) and by scanning the segments left on disk (torn tails from a crash are cut off).

Frame: ``u32 header length, u32 payload length, u32 CRC32C(header + payload), header JSON,
payload``. Header keys: ``s`` seq, ``t`` µs time, ``op`` and the op's fields (``b`` bucket,
``e`` entry, ``ts``, ``ct``, ``l`` labels, ``n`` new name, ``tss`` timestamps).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c

from appliance.engine import fs_ops

JOURNAL_DIR = ".journal"
SEGMENT_SUFFIX = ".jnl"
NEXT_FILE = "next"
_HEAD = struct.Struct("<III")
CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    """One journaled mutation."""

    seq: int
    time_us: int
    op: str
    fields: dict[str, Any]
    payload: bytes


def encode_frame(header: dict[str, Any], payload: bytes) -> bytes:
    """Frame bytes (sans-I/O)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    crc = google_crc32c.extend(google_crc32c.value(head), payload)
    return _HEAD.pack(len(head), len(payload), crc) + head + payload


def decode_frames(data: bytes) -> tuple[list[Frame], int]:
    """Every whole, sound frame from the start of ``data`` and where the good part ends."""
    frames: list[Frame] = []
    pos = 0
    while pos + _HEAD.size <= len(data):
        hlen, plen, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + hlen + plen
        if end > len(data):
            break
        head = data[pos + _HEAD.size : pos + _HEAD.size + hlen]
        payload = data[pos + _HEAD.size + hlen : end]
        if google_crc32c.extend(google_crc32c.value(head), payload) != crc:
            break
        try:
            header = json.loads(head)
        except ValueError:
            break
        seq, t, op = header.pop("s"), header.pop("t"), header.pop("op")
        frames.append(Frame(int(seq), int(t), str(op), header, bytes(payload)))
        pos = end
    return frames, pos


def segment_name(first_seq: int) -> str:
    """File name of a segment whose first frame has ``first_seq``."""
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


class Journal:
    """The append side (thread-safe); one per open storage."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment: Path | None = None
        self.next_seq = 1
        self.last_time_us = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._recover()

    def _recover(self) -> None:
        """Find ``next_seq`` after a restart; cut torn tails off segments left on disk."""
        try:
            self.next_seq = int((self.folder / NEXT_FILE).read_text().strip() or 1)
        except (FileNotFoundError, ValueError):
            self.next_seq = 1
        for path in self.segments():
            data = path.read_bytes()
            frames, good = decode_frames(data)
            if good < len(data):
                fs_ops.truncate(path, good)
            if frames:
                self.next_seq = max(self.next_seq, frames[-1].seq + 1)
                self.last_time_us = max(self.last_time_us, frames[-1].time_us)

    def segments(self) -> list[Path]:
        """Segments on disk, oldest first (the open one last)."""
        return sorted(self.folder.glob(f"*{SEGMENT_SUFFIX}"))

    def _open_segment(self) -> int:
        if self._fd is None:
            self._segment = self.folder / segment_name(self.next_seq)
            self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        return self._fd

    def _stamp(self) -> tuple[int, int]:
        now = max(time.time_ns() // 1000, self.last_time_us + 1)
        seq = self.next_seq
        self.next_seq += 1
        self.last_time_us = now
        return seq, now

    def append(self, op: str, payload: bytes = b"", **fields: Any) -> None:
        """Journal one mutation (payload in memory)."""
        with self._lock:
            fd = self._open_segment()
            seq, now = self._stamp()
            fs_ops.write_all(fd, (encode_frame({"s": seq, "t": now, "op": op, **fields}, payload),))

    def append_from_file(self, op: str, fd_in: int, offset: int, size: int, **fields: Any) -> None:
        """Journal one mutation whose payload lies in another file (a streamed record)."""
        if size <= CHUNK_BYTES:
            self.append(op, _pread_all(fd_in, offset, size), **fields)
            return
        with self._lock:
            fd = self._open_segment()
            seq, now = self._stamp()
            head = json.dumps({"s": seq, "t": now, "op": op, **fields}, separators=(",", ":")).encode()
            crc = google_crc32c.value(head)
            for chunk in _pread_chunks(fd_in, offset, size):
                crc = google_crc32c.extend(crc, chunk)
            # One frame, written in pieces under the lock; a crash leaves a torn tail that
            # recovery cuts off (the record's own WAL frame follows this one).
            chunks: Iterable[bytes] = [_HEAD.pack(len(head), size, crc), head]
            fs_ops.write_all(fd, chunks)
            fs_ops.write_all(fd, _pread_chunks(fd_in, offset, size))

    def rotate(self) -> list[Path]:
        """Close the open segment; every closed segment, oldest first (ready to ship)."""
        with self._lock:
            if self._fd is not None:
                fs_ops.fsync_fd(self._fd)
                os.close(self._fd)
                self._fd = None
                self._segment = None
            fs_ops.atomic_write(self.folder / NEXT_FILE, str(self.next_seq).encode())
            return self.segments()

    def close(self) -> None:
        """Close the open segment (it is shipped after the next start)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_segment(path: Path) -> Iterator[Frame]:
    """The sound frames of one segment file."""
    frames, _ = decode_frames(path.read_bytes())
    yield from frames


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    return b"".join(_pread_chunks(fd, offset, size))


def _pread_chunks(fd: int, offset: int, size: int) -> Iterator[bytes]:
    done = 0
    while done < size:
        chunk = os.pread(fd, min(CHUNK_BYTES, size - done), offset + done)
        if not chunk:
            raise EOFError("record payload is shorter than its size")
        done += len(chunk)
        yield chunk
