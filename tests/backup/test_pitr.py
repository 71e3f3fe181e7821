"""Point-in-time recovery, model-checked: random writes, label updates, record, entry and
bucket removals over time with the journal on, base backups and archive shipping in between;
then restores to many random instants, each compared with a model of the state at that instant."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest

from appliance.backup import pitr, snapshot
from appliance.backup.targets import FolderTarget
from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import NotFound

State = tuple[frozenset[str], dict[tuple[str, str, int], tuple[bytes, dict[str, str]]]]


def observe(data: Path) -> State:
    """Bucket names and every record (payload, labels) of a stopped data folder."""
    store = Storage.open(EngineOptions(data_path=data, read_only=True))
    try:
        records = {}
        for bucket in store.bucket_names():
            b = store.get_bucket(bucket)
            for entry in b.entry_names():
                e = b.get_entry(entry)
                for meta in e.iter_records(0, 2**64 - 1):
                    records[(bucket, entry, meta.timestamp)] = (e.read_payload(meta), dict(meta.labels))
        return frozenset(store.bucket_names()), records
    finally:
        store.close()


class World:
    """The storage under test, its model, and the model's history by journal time."""

    def __init__(self, data: Path, target: FolderTarget, rng: random.Random) -> None:
        self.data = data
        self.target = target
        self.rng = rng
        self.storage = Storage.open(EngineOptions(data_path=data, min_free_space=0, journal=True))
        self.buckets: set[str] = set()
        self.records: dict[tuple[str, str, int], tuple[bytes, dict[str, str]]] = {}
        self.history: list[tuple[int, State]] = []
        self.bases: list[int] = []

    def _committed(self) -> None:
        position = self.storage.journal_position()
        assert position is not None
        self.history.append((position[1], (frozenset(self.buckets), copy.deepcopy(self.records))))

    def step(self) -> None:
        rng = self.rng
        keys = sorted(self.records)
        roll = rng.random()
        if not self.buckets or (roll < 0.05 and len(self.buckets) < 4):
            name = f"b{rng.randrange(6)}"
            if name in self.buckets:
                return
            self.storage.create_bucket(name, BucketSettings(max_block_records=rng.choice([4, 16])))
            self.buckets.add(name)
        elif roll < 0.55:
            bucket = rng.choice(sorted(self.buckets))
            entry = rng.choice(["a", "b", "c/d"])
            ts = rng.randrange(1, 400)
            if (bucket, entry, ts) in self.records:
                return
            payload = os.urandom(rng.choice([0, 10, 300, 5000]))
            labels = {"k": str(rng.randrange(3))} if rng.random() < 0.7 else {}
            self.storage.get_bucket(bucket).write_record(entry, ts, payload, "x/y", labels)
            self.records[(bucket, entry, ts)] = (payload, labels)
        elif roll < 0.7 and keys:
            key = rng.choice(keys)
            payload, labels = self.records[key]
            new = {k: v for k, v in labels.items() if rng.random() < 0.5}
            new["u"] = str(rng.randrange(100))
            remove = set(labels) - set(new)
            self.storage.get_bucket(key[0]).get_entry(key[1]).update_labels(key[2], new, remove)
            self.records[key] = (payload, new)
        elif roll < 0.82 and keys:
            doomed = rng.sample(keys, min(len(keys), rng.randrange(1, 4)))
            by_entry: dict[tuple[str, str], list[int]] = {}
            for b, e, ts in doomed:
                by_entry.setdefault((b, e), []).append(ts)
            for (b, e), tss in by_entry.items():  # one journal frame per entry: one state each
                self.storage.get_bucket(b).get_entry(e).remove_records(tss)
                for ts in tss:
                    del self.records[(b, e, ts)]
                self._committed()
            return
        elif roll < 0.88 and keys:
            b, e, _ = rng.choice(keys)
            self.storage.get_bucket(b).remove_entry(e)
            gone = [k for k in self.records if k[0] == b and (k[1] == e or k[1].startswith(e + "/"))]
            for k in gone:
                del self.records[k]
        elif roll < 0.91 and len(self.buckets) > 1:
            b = rng.choice(sorted(self.buckets))
            self.storage.remove_bucket(b)
            self.buckets.discard(b)
            for k in [k for k in self.records if k[0] == b]:
                del self.records[k]
        elif roll < 0.95:
            self.storage.compact()
            return
        elif roll < 0.98:
            staged = snapshot.stage(self.storage, self.data, None)
            made = self.target.publish(staged, instance="t", generation=0, buckets=None)
            self.bases.append(made.cut_us)
            return
        else:
            pitr.ship(self.storage.rotate_journal(), self.target)
            return
        self._committed()


@pytest.mark.parametrize("seed", [1, 2])
def test_restore_to_random_instants_matches_the_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    target = FolderTarget(tmp_path / "backups")
    world = World(tmp_path / "data", target, rng)
    for _ in range(6):
        world.step()
    staged = snapshot.stage(world.storage, world.data, None)
    first = target.publish(staged, instance="t", generation=0, buckets=None)
    world.bases.append(first.cut_us)
    for _ in range(350):
        world.step()
    pitr.ship(world.storage.rotate_journal(), target)
    world.storage.close()
    history = [h for h in world.history if h[0] > first.cut_us]
    assert len(history) > 100 and len(world.bases) > 3 and len(target.list_archive()) > 2
    picks = sorted(rng.sample(range(len(history)), 6)) + [len(history) - 1]
    for n, i in enumerate(picks):
        start = history[i][0]
        end = history[i + 1][0] - 1 if i + 1 < len(history) else start + 1000
        at = rng.randint(start, max(start, end))
        out = tmp_path / f"restored-{n}"
        result = pitr.restore_to_time(target, at, out)
        assert not result.failed, result.failed
        assert observe(out) == history[i][1], f"state at {at} (step {i}, base {result.base})"
    # The first backup's own instant: its state, with nothing replayed after it.
    before = [h for h in world.history if h[0] <= first.cut_us][-1][1]
    assert observe_restored(target, first.cut_us, tmp_path / "at-cut") == before
    with pytest.raises(NotFound, match="no complete full backup"):
        pitr.restore_to_time(target, first.cut_us - 1, tmp_path / "too-early")


def observe_restored(target: FolderTarget, at: int, out: Path) -> State:
    """Restore to ``at`` and observe the result."""
    pitr.restore_to_time(target, at, out)
    return observe(out)


def test_undo_a_bucket_removed_by_mistake(tmp_path: Path) -> None:
    target = FolderTarget(tmp_path / "backups")
    data = tmp_path / "data"
    storage = Storage.open(EngineOptions(data_path=data, min_free_space=0, journal=True))
    storage.create_bucket("precious")
    target.publish(snapshot.stage(storage, data, None), instance="t", generation=0, buckets=None)
    for ts in range(1, 50):
        storage.get_bucket("precious").write_record("e", ts, b"v%d" % ts, "x", {"n": str(ts)})
    _, before_removal = storage.journal_position()  # type: ignore[misc]
    storage.remove_bucket("precious")
    pitr.ship(storage.rotate_journal(), target)
    storage.close()
    pitr.restore_to_time(target, before_removal, tmp_path / "r")
    buckets, records = observe(tmp_path / "r")
    assert buckets == {"precious"} and len(records) == 49
    assert records[("precious", "e", 7)] == (b"v7", {"n": "7"})


def test_parse_time() -> None:
    assert pitr.parse_time("1700000000000000") == 1_700_000_000_000_000
    assert pitr.parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000_000
    assert pitr.parse_time("2023-11-14T22:13:20") == 1_700_000_000_000_000
    with pytest.raises(Exception, match="not a time"):
        pitr.parse_time("yesterday")


def test_parse_time_is_exact_to_the_microsecond() -> None:
    from appliance.backup.manifest import iso

    for us in (1_796_574_281_547_066, 1_700_000_000_000_001, 1_999_999_999_999_999):
        assert pitr.parse_time(iso(us)) == us


def test_archive_segments_no_backup_needs_are_pruned(tmp_path: Path) -> None:
    target = FolderTarget(tmp_path / "backups")
    data = tmp_path / "data"
    storage = Storage.open(EngineOptions(data_path=data, min_free_space=0, journal=True))
    storage.create_bucket("b")
    ids = []
    for round_ in range(3):
        ids.append(target.publish(snapshot.stage(storage, data, None), instance="t", generation=0, buckets=None).id)
        storage.get_bucket("b").write_record("e", round_ + 1, b"x", "x", {})
        pitr.ship(storage.rotate_journal(), target)
    storage.close()
    assert len(target.list_archive()) == 3
    assert pitr.prune_archive(target) == []  # the oldest backup needs them all
    from appliance.backup import folder as ft

    ft.delete(target.path, ids[0])
    assert len(pitr.prune_archive(target)) == 1
    assert len(target.list_archive()) == 2
    pitr.restore_to_time(target, 4_000_000_000_000_000, tmp_path / "r")  # continuous from ids[1]
    assert len(observe(tmp_path / "r")[1]) == 3
