"""A folder backup target: ``<target>/<id>/{manifest.json,data/}`` (issue 12 §1).

Everything here works on the target alone (no server): ``list_backups``, ``verify``,
``delete``, ``apply_retention``. Writers (a backup being published, delete, retention) hold
``<target>/.lock`` (flock) so they never interleave; readers need no lock because a backup is
complete only once its manifest exists and a deletion removes the manifest first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.backup import manifest as mf
from appliance.backup.files import crc_prefix, tree_bytes, walk_files
from appliance.engine import fs_ops
from appliance.errors import CorruptionError, NotFound, ServiceUnavailable

LOCK_NAME = ".lock"
LOCK_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class BackupInfo:
    """One backup as ``list`` shows it."""

    id: str
    complete: bool
    cut_us: int
    bytes: int
    new_bytes: int
    files: int
    buckets: tuple[str, ...] | None
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        """The object of ``GET /api/v1/backups``."""
        return {
            "id": self.id,
            "complete": self.complete,
            "cut_us": self.cut_us,
            "time": mf.iso(self.cut_us) if self.cut_us else None,
            "bytes": self.bytes,
            "new_bytes": self.new_bytes,
            "files": self.files,
            "buckets": None if self.buckets is None else list(self.buckets),
            "problem": self.problem,
        }


@dataclass
class VerifyReport:
    """What ``verify`` checked and every problem found (empty: the backup is sound)."""

    id: str
    files: int = 0
    bytes: int = 0
    records: int = 0
    payload_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, object]:
        """The body of ``POST /api/v1/backups/{id}/verify``."""
        return {
            "id": self.id,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "records": self.records,
            "payload_bytes": self.payload_bytes,
            "problems": self.problems,
        }

    def render(self) -> str:
        """One line per problem, then the verdict."""
        verdict = "OK" if self.ok else f"DAMAGED ({len(self.problems)} problem(s))"
        lines = list(self.problems)
        lines.append(
            f"{verdict}: backup {self.id}: {self.files} file(s), {self.bytes} byte(s), "
            f"{self.records} record(s), {self.payload_bytes} payload byte(s) checked"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def locked(target: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the target's writer lock (503 if another writer keeps it past ``timeout``)."""
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(target / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"backup target {target} is busy (another backup or deletion)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def backup_folders(target: Path) -> list[Path]:
    """Folders of ``target`` named like backups, oldest first."""
    if not target.is_dir():
        return []
    return sorted(p for p in target.iterdir() if p.is_dir() and mf.ID_PATTERN.match(p.name))


def info(folder: Path) -> BackupInfo:
    """What ``list`` shows for one backup folder."""
    try:
        found = mf.read(folder)
    except CorruptionError as exc:
        return BackupInfo(folder.name, False, 0, tree_bytes(folder), 0, 0, None, exc.message)
    if found is None:
        return BackupInfo(
            folder.name, False, 0, tree_bytes(folder), 0, 0, None, "incomplete: no manifest"
        )
    return BackupInfo(
        found.id, True, found.cut_us, found.bytes, found.new_bytes, len(found.files), found.buckets
    )


def list_backups(target: Path) -> list[BackupInfo]:
    """Every backup in ``target``, oldest first, incomplete ones included."""
    return [info(folder) for folder in backup_folders(target)]


def load(target: Path, backup: str) -> tuple[Path, mf.Manifest]:
    """The folder and manifest of a complete backup (404 if missing, 409 if incomplete)."""
    folder = target / mf.check_id(backup)
    if not folder.is_dir():
        raise NotFound(f"Backup '{backup}' is not found in {target}")
    found = mf.read(folder)
    if found is None:
        raise NotFound(f"Backup '{backup}' in {target} is incomplete (no manifest)")
    return folder, found


def verify(target: Path, backup: str) -> VerifyReport:
    """Check every file against the manifest, then scrub the data as ``appliance check``."""
    report = VerifyReport(backup)
    try:
        folder, found = load(target, backup)
    except CorruptionError as exc:
        report.problems.append(exc.message)
        return report
    data = folder / mf.DATA_DIR
    expected = {f.path: f for f in found.files}
    for rel, path in walk_files(data):
        if rel not in expected:
            report.problems.append(f"file {rel}: not in the manifest")
    for record in found.files:
        report.files += 1
        try:
            check_file(report, record, data / record.path)
        except FileNotFoundError:
            report.problems.append(f"file {record.path}: missing")
    return scrub_into(report, data)


def check_file(report: VerifyReport, record: mf.FileRecord, path: Path) -> None:
    """Check one file of a backup copy against its manifest record (size, then CRC32C)."""
    size = path.stat().st_size
    if size != record.size:
        report.problems.append(f"file {record.path}: size {size}, manifest says {record.size}")
        return
    report.bytes += size
    if crc_prefix(path, size) != record.crc32c:
        report.problems.append(f"file {record.path}: checksum mismatch (CRC32C)")


def scrub_into(report: VerifyReport, data: Path) -> VerifyReport:
    """Open the copy ``data`` as ``appliance check`` does, scrub every payload checksum, and
    add what it finds to ``report``."""
    from appliance.engine.check import check  # late: the engine is only needed here

    scrub = check(data, repair=False)
    report.records = scrub.records
    report.payload_bytes = scrub.payload_bytes
    report.problems.extend(p.render() for p in scrub.problems)
    return report


def delete(target: Path, backup: str) -> None:
    """Remove one backup (complete or not); the others keep every file they share with it."""
    folder = target / mf.check_id(backup)
    with locked(target):
        if not folder.is_dir():
            raise NotFound(f"Backup '{backup}' is not found in {target}")
        remove_folder(folder)


def remove_folder(folder: Path) -> None:
    """Manifest first (the backup turns incomplete at once), then the files (links only)."""
    fs_ops.remove_file(folder / mf.MANIFEST_NAME, sync=True)
    fs_ops.remove_tree(folder)


def retention_victims(
    infos: list[BackupInfo], keep_last: int, max_age: float, now_us: int, keep: str = ""
) -> set[str]:
    """Complete backups beyond the newest ``keep_last`` or older than ``max_age`` seconds; the
    newest complete backup and ``keep`` always stay."""
    complete = [i for i in infos if i.complete]
    doomed: set[str] = set()
    if keep_last > 0:
        doomed.update(i.id for i in complete[:-keep_last])
    if max_age > 0:
        doomed.update(i.id for i in complete if now_us - i.cut_us > max_age * 1_000_000)
    if complete:
        doomed.discard(complete[-1].id)
    doomed.discard(keep)
    return doomed


def apply_retention(
    target: Path, keep_last: int, max_age: float, now_us: int | None = None, keep: str = ""
) -> list[str]:
    """Apply ``retention_victims`` and drop incomplete leftovers (a crashed backup: the caller
    holds the target lock, so none is in progress). Returns the ids removed."""
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    infos = list_backups(target)
    doomed = retention_victims(infos, keep_last, max_age, now_us, keep)
    doomed.update(i.id for i in infos if not i.complete and i.id != keep)
    for backup in sorted(doomed):
        remove_folder(target / backup)
    return sorted(doomed)
