"""Restoring a backup into a data folder (issue 12 §2): whole, one bucket, or one entry.

The folder must not be held by a running instance (``instance.stopped``). Every file is
*copied* (a restored folder never shares an inode with the backup) and checked against the
manifest's CRC32C as it is copied; a mismatch stops the restore naming the file. The folder is
marked restored first (``.restored``), so even a restore cut short leaves an instance that
starts read-only instead of one that accepts writes over half a data set.

- whole: the folder must be empty or missing (nothing already stored is overwritten);
- ``bucket``: that bucket's folder is replaced by the backup's, the rest is left as it is;
- ``bucket`` + ``entry``: that entry (with its sub-entries) is replaced; the bucket's settings
  come from the backup when the bucket does not exist yet.

``plan`` says what would change (``--dry-run``) without touching anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.backup import instance
from appliance.backup import manifest as mf
from appliance.backup.files import crc_prefix, sync_tree, walk_files
from appliance.backup.snapshot import AUTH_FILE
from appliance.engine import fs_ops
from appliance.engine.bucket import SETTINGS_FILE
from appliance.errors import Conflict, CorruptionError, NotFound

if TYPE_CHECKING:
    from appliance.backup.targets import Target

RESTORE_TMP = ".restore-tmp"


@dataclass
class Plan:
    """What a restore adds, replaces and removes (relative paths in the data folder)."""

    backup: str
    add: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    bytes: int = 0

    def render(self) -> str:
        """One line per change, then a summary."""
        lines = [f"add {p}" for p in self.add]
        lines += [f"replace {p}" for p in self.replace]
        lines += [f"remove {p}" for p in self.remove]
        lines.append(
            f"restore of backup {self.backup}: {len(self.add)} file(s) added, "
            f"{len(self.replace)} replaced, {len(self.remove)} removed, {self.bytes} byte(s) copied"
        )
        return "\n".join(lines)


def _scope(found: mf.Manifest, bucket: str | None, entry: str | None) -> tuple[str, list[mf.FileRecord]]:
    """The folder prefix restored and the backup's files under it."""
    if bucket is None:
        return "", list(found.files)
    prefix = f"{bucket}/" if entry is None else f"{bucket}/{entry}/"
    files = [f for f in found.files if f.path.startswith(prefix)]
    if not files:
        what = f"bucket '{bucket}'" if entry is None else f"entry '{entry}' of bucket '{bucket}'"
        raise NotFound(f"Backup {found.id} holds no {what}")
    return prefix, files


def _target(target: Target | Path) -> Target:
    from appliance.backup.targets import FolderTarget

    return FolderTarget(target) if isinstance(target, Path) else target


def plan(
    target: Target | Path,
    backup: str,
    data: Path,
    bucket: str | None = None,
    entry: str | None = None,
) -> Plan:
    """What ``restore`` would do (nothing is changed)."""
    found = _target(target).load(backup)
    prefix, files = _scope(found, bucket, entry)
    result = Plan(found.id)
    if bucket is None:
        existing = [rel for rel, _ in walk_files(data)] if data.is_dir() else []
        stored = [r for r in existing if not r.startswith(".") or r == AUTH_FILE]
        if stored:
            raise Conflict(
                f"data folder {data} is not empty: restore a whole backup into an empty folder, "
                "or one bucket with --bucket"
            )
    current = {}
    if prefix and (data / prefix).is_dir():
        current = {f"{prefix}{rel}": path for rel, path in walk_files(data / prefix)}
    wanted = {f.path: f for f in files}
    if entry is not None and not (data / bucket / SETTINGS_FILE).exists():  # type: ignore[operator]
        settings = next((f for f in found.files if f.path == f"{bucket}/{SETTINGS_FILE}"), None)
        if settings is not None:
            wanted[settings.path] = settings
    for rel, record in sorted(wanted.items()):
        path = data / rel
        if rel not in current and not path.exists():
            result.add.append(rel)
        elif path.stat().st_size != record.size or crc_prefix(path, path.stat().st_size) != record.crc32c:
            result.replace.append(rel)
        else:
            continue
        result.bytes += record.size
    result.remove = sorted(rel for rel in current if rel not in wanted)
    return result


def restore(
    target: Target | Path,
    backup: str,
    data: Path,
    bucket: str | None = None,
    entry: str | None = None,
) -> Plan:
    """Restore ``backup`` (or one bucket / entry of it) into ``data``; marks it read-only."""
    target = _target(target)
    with instance.stopped(data):
        result = plan(target, backup, data, bucket, entry)
        found = target.load(backup)
        prefix, files = _scope(found, bucket, entry)
        instance.mark_restored(data, found.id)
        tmp = data / RESTORE_TMP
        fs_ops.remove_tree(tmp)
        tmp.mkdir()
        wanted = list(files)
        settings = f"{bucket}/{SETTINGS_FILE}"
        if entry is not None and settings in result.add:
            wanted += [f for f in found.files if f.path == settings]
        for record in wanted:
            dst = tmp / record.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            target.fetch(found, record, dst)
            size = dst.stat().st_size
            if size != record.size or crc_prefix(dst, size) != record.crc32c:
                fs_ops.remove_tree(tmp)
                raise CorruptionError(
                    f"backup {found.id} is damaged: file {record.path} does not match its "
                    "manifest; restore stopped (run `appliance backup verify`)",
                    path=f"{target.name}:{record.path}",
                )
        sync_tree(tmp)
        _swap_in(tmp, data, prefix)
        fs_ops.remove_tree(tmp)
        fs_ops.fsync_dir(data)
    return result


def _swap_in(tmp: Path, data: Path, prefix: str) -> None:
    """Move the copied tree into place: whole folder, or replace the bucket/entry folder."""
    if not prefix:
        for child in sorted(tmp.iterdir()):
            fs_ops.rename_dir(child, data / child.name)
        return
    scope = prefix.rstrip("/")
    old = data / RESTORE_TMP / ".old"
    if (data / scope).exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        fs_ops.rename_dir(data / scope, old)
    (data / scope).parent.mkdir(parents=True, exist_ok=True)
    fs_ops.rename_dir(tmp / scope, data / scope)
    bucket = scope.split("/", 1)[0]
    settings = tmp / bucket / SETTINGS_FILE
    if settings.exists() and not (data / bucket / SETTINGS_FILE).exists():
        fs_ops.replace(settings, data / bucket / SETTINGS_FILE)
    fs_ops.remove_tree(old)
