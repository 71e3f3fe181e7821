"""The manifest of one backup: what it holds and how to check it (issue 12 §1).

A backup in a folder target is ``<target>/<id>/`` with ``data/`` (a plain data folder the
engine opens, read-only or not) and ``manifest.json``. The manifest is written last and
atomically (tmp, fsync, rename, fsync dir): a backup without one is *incomplete* (a crash
mid-backup), listed as such and never restored. It carries the id, the wall time and the µs
instant of the cut, the instance and lease generation it came from, the buckets it holds (None:
all) and every file's size and CRC32C, plus its own CRC32C so a damaged manifest is noticed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import google_crc32c

from appliance.engine import fs_ops
from appliance.errors import CorruptionError, UnprocessableEntity

MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
FORMAT = 1
ID_PATTERN = re.compile(r"^\d{8}T\d{12}Z(-\d+)?$")


def backup_id(cut_us: int) -> str:
    """A sortable id for a cut at ``cut_us``: ``YYYYmmddTHHMMSSffffffZ``."""
    seconds, micros = divmod(cut_us, 1_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micros:06d}Z"


def check_id(value: str) -> str:
    """``value`` if it is a backup id (422 otherwise: ids name folders and objects)."""
    if not ID_PATTERN.match(value):
        raise UnprocessableEntity(f"'{value}' is not a backup id (like 20260101T120000000000Z)")
    return value


def iso(us: int) -> str:
    """An instant in µs as ISO 8601 UTC."""
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc).isoformat()


@dataclass(frozen=True)
class FileRecord:
    """One file of a backup: path relative to ``data/``, size, CRC32C and SHA-256.

    The SHA-256 decides whether a later backup may share the file: the engine's metadata files
    end with their own CRC32C, and every such file of one length has the *same* CRC32C over
    its whole content (the CRC residue), so the CRC cannot tell two descriptors apart.
    """

    path: str
    size: int
    crc32c: int
    sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    """Everything a backup holds; complete exactly when written."""

    id: str
    cut_us: int
    instance: str
    generation: int
    buckets: tuple[str, ...] | None
    files: tuple[FileRecord, ...]
    new_bytes: int
    pause_ms: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Total size of the backup's files (shared ones included)."""
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, object]:
        """The JSON object stored in ``manifest.json`` (without its checksum)."""
        return {
            "format": FORMAT,
            "id": self.id,
            "time": iso(self.cut_us),
            "cut_us": self.cut_us,
            "instance": self.instance,
            "generation": self.generation,
            "buckets": None if self.buckets is None else list(self.buckets),
            "pause_ms": self.pause_ms,
            "bytes": self.bytes,
            "new_bytes": self.new_bytes,
            "files": [[f.path, f.size, f.crc32c, f.sha256] for f in self.files],
            **self.extra,
        }

    def encode(self) -> bytes:
        """Canonical bytes with a trailing ``crc32c`` of the rest."""
        body = self.to_json()
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        body["crc32c"] = google_crc32c.value(raw)
        return json.dumps(body, sort_keys=True, indent=1).encode()


def decode(data: bytes, source: str) -> Manifest:
    """Parse and check a manifest; CorruptionError names ``source`` when it is damaged."""
    try:
        body = json.loads(data)
        crc = body.pop("crc32c")
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if google_crc32c.value(raw) != crc:
            raise ValueError("checksum mismatch")
        if body["format"] != FORMAT:
            raise ValueError(f"unknown format {body['format']}")
        known = {"format", "id", "time", "cut_us", "instance", "generation", "buckets",
                 "pause_ms", "bytes", "new_bytes", "files"}
        return Manifest(
            id=body["id"],
            cut_us=int(body["cut_us"]),
            instance=body["instance"],
            generation=int(body["generation"]),
            buckets=None if body["buckets"] is None else tuple(body["buckets"]),
            files=tuple(FileRecord(f[0], int(f[1]), int(f[2]), str(f[3])) for f in body["files"]),
            new_bytes=int(body["new_bytes"]),
            pause_ms=float(body.get("pause_ms", 0.0)),
            extra={k: v for k, v in body.items() if k not in known},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(f"manifest {source} is damaged: {exc}", path=source) from exc


def write(folder: Path, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically: from now on the backup is complete."""
    fs_ops.atomic_write(folder / MANIFEST_NAME, manifest.encode())


def read(folder: Path) -> Manifest | None:
    """The manifest of the backup in ``folder``; None when it has none (incomplete)."""
    path = folder / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode(data, str(path))
