"""Power loss on a POSIX-strict file system with ``sync_writes`` (issue 8 item 7).

The model is what POSIX promises and no more: a file keeps the bytes it had at its last
``fsync`` (none if it was never fsynced) and a folder keeps the names it had at its last
``fsync`` (none if never). ext4 in its default mode is kinder, so a SIGKILL test cannot show
a missing directory fsync; this recorder can. Every ``os.fsync`` in the process (only
``backends/durability.py`` calls it: ``test_durability_is_the_only_module_calling_fsync_or_rename``)
takes a snapshot of the file's bytes or the folder's names by inode. After the writes, the
"after power loss" tree is rebuilt from the snapshots alone, starting at the data folder, and
the engine is opened on it: every record acknowledged before the cut must be there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord


class StrictDisk:
    """Snapshots of what an fsync made durable, by inode."""

    def __init__(self, root: Path) -> None:
        self.root_inode = root.stat().st_ino
        self.files: dict[int, bytes] = {}
        self.dirs: dict[int, dict[str, tuple[int, bool]]] = {}
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        """Record the durable state of ``fd`` (the real fsync is not needed for the model)."""
        self.fsyncs += 1
        info = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(info.st_mode):
            names = {}
            with os.scandir(path) as it:
                for item in it:
                    names[item.name] = (item.inode(), item.is_dir(follow_symlinks=False))
            self.dirs[info.st_ino] = names
        else:
            with open(f"/proc/self/fd/{fd}", "rb") as handle:  # fd may be write-only
                self.files[info.st_ino] = handle.read()

    def rebuild(self, target: Path) -> None:
        """The tree a power loss now would leave, written to ``target``."""
        target.mkdir()
        self._rebuild(self.root_inode, target)

    def _rebuild(self, inode: int, target: Path) -> None:
        for name, (child, is_dir) in self.dirs.get(inode, {}).items():
            if is_dir:
                (target / name).mkdir()
                self._rebuild(child, target / name)
            else:
                (target / name).write_bytes(self.files.get(child, b""))


@pytest.fixture
def strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StrictDisk:
    """A data folder whose fsyncs are recorded (the folder itself exists durably, empty)."""
    data = tmp_path / "data"
    data.mkdir()
    disk = StrictDisk(data)
    monkeypatch.setattr(os, "fsync", disk.fsync)
    return disk


def payload(ts: int) -> bytes:
    """A distinct payload per timestamp."""
    return f"record {ts} ".encode() * (1 + ts % 7)


def test_power_loss_keeps_every_acknowledged_write(tmp_path: Path, strict: StrictDisk) -> None:
    """New buckets, nested entries, new blocks, WAL segments, label updates, compaction and
    removals under sync writes: everything acknowledged survives the rebuilt power-loss tree."""
    options = EngineOptions(data_path=tmp_path / "data", sync_writes=True)
    storage = Storage.open(options)
    acked: dict[tuple[str, str, int], tuple[bytes, dict[str, str]]] = {}
    try:
        bucket = storage.create_bucket("b", BucketSettings(max_block_records=3))
        for ts in range(1, 8):  # single writes into new blocks of a new entry
            bucket.write_record("plain", ts, payload(ts), "text/plain", {"n": str(ts)})
            acked[("b", "plain", ts)] = (payload(ts), {"n": str(ts)})
        records = [NewRecord(ts, payload(ts), "text/plain", {"k": "v"}) for ts in range(10, 30)]
        assert bucket.write_batch("deep/er/entry", records) == {}
        for ts in range(10, 30):
            acked[("b", "deep/er/entry", ts)] = (payload(ts), {"k": "v"})
        with bucket.begin_write("streamed", 100, 6, "text/plain", {}) as writer:
            writer.write(b"abc")
            writer.write(b"def")
        acked[("b", "streamed", 100)] = (b"abcdef", {})
        storage.compact()  # WAL -> descriptors and indexes, WAL segments deleted
        bucket.get_entry("plain").update_labels(3, {"n": "three"}, [])
        acked[("b", "plain", 3)] = (payload(3), {"n": "three"})
        bucket.get_entry("plain").remove_records([5])
        del acked[("b", "plain", 5)]
        other = storage.create_bucket("second")
        other.write_record("x", 1, b"last", "text/plain", {})
        acked[("second", "x", 1)] = (b"last", {})
        assert strict.fsyncs > 0
        strict.rebuild(tmp_path / "after")
    finally:
        storage.abandon()  # the "power loss": nothing more is written
    reopened = Storage.open(EngineOptions(data_path=tmp_path / "after", sync_writes=True))
    try:
        found = {}
        for name in reopened.bucket_names():
            b = reopened.get_bucket(name)
            for entry in b.entry_names():
                e = b.get_entry(entry)
                for meta in e.iter_records(0, 2**63):
                    found[(name, entry, meta.timestamp)] = (e.read_payload(meta), dict(meta.labels))
        assert reopened.get_bucket("b").settings.max_block_records == 3
    finally:
        reopened.close()
    missing = sorted(set(acked) - set(found))
    assert not missing, f"lost at power loss: {missing[:10]} ({len(missing)} of {len(acked)})"
    assert {key: found[key] for key in acked} == acked
    assert ("b", "plain", 5) not in found  # a removal survives too
