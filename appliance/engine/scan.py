"""Discovering buckets and entries in a data folder (spec engine §2 notes).

Buckets are the first-level folders of the data path whose names are valid bucket names;
entries are folders below a bucket (recursively) that hold a ``blocks.idx`` or have no
sub-folders, with a valid entry name as relative path. Folders starting with ``.`` (``.wal``,
``.quarantine``, ...) are never buckets or entries, and a folder with an invalid name is reported
and skipped instead of being trusted as a path.
"""

from __future__ import annotations

from pathlib import Path

from appliance.engine.entry_files import INDEX_FILE
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
            has_children = any(
                child.is_dir() and not child.name.startswith(".") for child in path.iterdir()
            )
            if (path / INDEX_FILE).exists() or not has_children:
                found.append((name, path))
            pending.append(path)
    return sorted(found)
