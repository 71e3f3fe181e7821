"""Discovering buckets and entries in a data folder (spec engine §2 notes).

Buckets are the first-level folders of the data path whose names are valid bucket names.
Entries are folders below a bucket (recursively) whose relative path is a valid entry name and
that hold a ``blocks.idx``, a ``.wal`` folder or block descriptors, or have no sub-folders.
Folders starting with ``.`` (``.wal``, ``.quarantine``, ...) are never buckets or entries, and a
folder with an invalid name is reported and skipped instead of being trusted as a path.
"""

from __future__ import annotations

from pathlib import Path

from appliance.engine.entry_folder import INDEX_FILE, META_SUFFIX, WAL_DIR
from appliance.engine.names import is_bucket_name, is_entry_name
from appliance.engine.report import RecoveryReport


def scan_buckets(data_path: Path, report: RecoveryReport) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every bucket folder, sorted by name."""
    found: list[tuple[str, Path]] = []
    for path in sorted(data_path.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        if not is_bucket_name(path.name):
            report.add("not_a_bucket", path, "folder name is not a valid bucket name", "skipped")
            continue
        found.append((path.name, path))
    return found


def scan_entries(bucket_path: Path, report: RecoveryReport) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every entry folder in a bucket, sorted by name."""
    found: list[tuple[str, Path]] = []
    pending = [bucket_path]
    while pending:
        folder = pending.pop()
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            name = path.relative_to(bucket_path).as_posix()
            if not is_entry_name(name):
                report.add("not_an_entry", path, "folder name is not a valid entry name", "skipped")
                continue
            if _is_entry_folder(path):
                found.append((name, path))
            pending.append(path)
    return sorted(found)


def _is_entry_folder(path: Path) -> bool:
    """Holds an index, a WAL or descriptors (a lost index must not hide a parent entry's
    data), or has no sub-folders at all (an entry that never got a block)."""
    if (path / INDEX_FILE).exists() or (path / WAL_DIR).is_dir():
        return True
    has_children = False
    for child in path.iterdir():
        if child.name.endswith(META_SUFFIX):
            return True
        if child.is_dir() and not child.name.startswith("."):
            has_children = True
    return not has_children
