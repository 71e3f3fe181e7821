"""Where backups go: a folder, or an S3 prefix (``s3://bucket/prefix``); one interface.

``open_target(raw)`` picks the kind from the text. Both keep the same contract (issue 12 §1):
a backup is complete exactly when its manifest exists; each backup restores on its own; deleting
one never breaks another; unchanged files are stored once (hard links in a folder, objects
named by their SHA-256 on S3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from appliance.backup import folder as ft
from appliance.backup import manifest as mf
from appliance.backup.files import copy_prefix
from appliance.backup.snapshot import Staged, publish
from appliance.engine import fs_ops
from appliance.errors import UnprocessableEntity

ARCHIVE_DIR = "archive"


class Target(Protocol):
    """A place that holds backups."""

    name: str

    def list_backups(self) -> list[ft.BackupInfo]:
        """Every backup, oldest first, incomplete ones included."""

    def load(self, backup: str) -> mf.Manifest:
        """The manifest of a complete backup (404 if missing or incomplete)."""

    def verify(self, backup: str) -> ft.VerifyReport:
        """Check every file against the manifest and scrub the data."""

    def delete(self, backup: str) -> None:
        """Remove one backup."""

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclude other writers (publish, delete, retention) of this target."""

    def publish(
        self, staged: Staged, *, instance: str, generation: int, buckets: list[str] | None
    ) -> mf.Manifest:
        """Store a staged cut as a complete backup (call with the lock held)."""

    def apply_retention(self, keep_last: int, max_age: float, keep: str) -> list[str]:
        """Drop backups beyond the policy (call with the lock held); the ids removed."""

    def fetch(self, manifest: mf.Manifest, record: mf.FileRecord, dst: Path) -> None:
        """Copy one file of a backup to the new local file ``dst``."""

    def put_archive(self, name: str, path: Path) -> None:
        """Store one journal segment of the continuous archive."""

    def list_archive(self) -> list[str]:
        """Names of the archived journal segments."""

    def get_archive(self, name: str) -> bytes:
        """The bytes of one archived segment."""

    def delete_archive(self, name: str) -> None:
        """Remove one archived segment."""

    def close(self) -> None:
        """Release clients."""


class FolderTarget:
    """Backups in a local folder (``folder.py``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def list_backups(self) -> list[ft.BackupInfo]:
        """Every backup in the folder."""
        return ft.list_backups(self.path)

    def load(self, backup: str) -> mf.Manifest:
        """The manifest of a complete backup."""
        return ft.load(self.path, backup)[1]

    def verify(self, backup: str) -> ft.VerifyReport:
        """Manifest check and scrub, in place."""
        return ft.verify(self.path, backup)

    def delete(self, backup: str) -> None:
        """Remove one backup folder."""
        ft.delete(self.path, backup)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The folder's flock."""
        with ft.locked(self.path):
            yield

    def publish(
        self, staged: Staged, *, instance: str, generation: int, buckets: list[str] | None
    ) -> mf.Manifest:
        """Copy or share the staged files into ``<folder>/<id>/``."""
        return publish(staged, self.path, instance=instance, generation=generation, buckets=buckets)

    def apply_retention(self, keep_last: int, max_age: float, keep: str) -> list[str]:
        """The retention policy on the folder."""
        return ft.apply_retention(self.path, keep_last, max_age, keep=keep)

    def fetch(self, manifest: mf.Manifest, record: mf.FileRecord, dst: Path) -> None:
        """Copy (never link) one file out of the backup."""
        copy_prefix(self.path / manifest.id / mf.DATA_DIR / record.path, dst)

    def put_archive(self, name: str, path: Path) -> None:
        """Store one journal segment in ``<folder>/archive/`` (copied, fsynced, renamed)."""
        folder = self.path / ARCHIVE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (name + fs_ops.TMP_SUFFIX)
        fs_ops.remove_file(tmp)
        copy_prefix(path, tmp)
        fs_ops.replace(tmp, folder / name)

    def list_archive(self) -> list[str]:
        """Names of the archived journal segments."""
        folder = self.path / ARCHIVE_DIR
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.endswith(fs_ops.TMP_SUFFIX))

    def get_archive(self, name: str) -> bytes:
        """The bytes of one archived segment."""
        return fs_ops.read_file(self.path / ARCHIVE_DIR / name)

    def delete_archive(self, name: str) -> None:
        """Remove one archived segment."""
        fs_ops.remove_file(self.path / ARCHIVE_DIR / name)

    def close(self) -> None:
        """Nothing to release."""


def open_target(raw: str) -> Target:
    """The target named by ``raw``: ``s3://bucket/prefix[?endpoint=URL&region=R]`` or a folder."""
    raw = raw.strip()
    if not raw:
        raise UnprocessableEntity("No backup target: set RS_BACKUP_TARGET or give a target")
    if raw.startswith("s3://"):
        from appliance.backup.s3target import S3Target

        return S3Target.from_url(raw)
    if "://" in raw:
        raise UnprocessableEntity(f"Backup target {raw}: use a folder path or s3://bucket/prefix")
    return FolderTarget(Path(raw))
