"""Backups on S3 (moto's ThreadedMotoServer on 127.0.0.1): content-addressed incremental
objects, list/verify/delete/retention, restore, and an S3 backup through the running app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed")

from appliance.backup import restore, snapshot  # noqa: E402
from appliance.backup.s3target import OBJECTS, S3Target  # noqa: E402
from appliance.backup.targets import open_target  # noqa: E402
from appliance.engine import Storage  # noqa: E402
from tests.backends.test_s3 import BUCKET, REGION, moto_endpoint  # noqa: E402,F401
from tests.backup.conftest import read_all  # noqa: E402
from tests.backup.test_snapshot import write  # noqa: E402


@pytest.fixture
def s3_target(moto_endpoint: str) -> Iterator[S3Target]:  # noqa: F811
    """A target on its own prefix of the moto bucket."""
    url = f"s3://{BUCKET}/bk-{uuid.uuid4().hex}?endpoint={moto_endpoint}&region={REGION}"
    target = open_target(url)
    assert isinstance(target, S3Target)
    yield target
    target.close()


def backup(storage: Storage, data: Path, target: S3Target):  # type: ignore[no-untyped-def]
    staged = snapshot.stage(storage, data, None)
    return target.publish(staged, instance="t", generation=0, buckets=None)


def test_s3_backup_is_incremental_verifiable_restorable(
    storage: Storage, data: Path, s3_target: S3Target, tmp_path: Path
) -> None:
    for ts in range(1, 100):
        write(storage, "b1", "e", ts, size=4000)
    first = backup(storage, data, s3_target)
    for ts in range(1000, 1016):  # two new full blocks
        write(storage, "b1", "e", ts, size=4000)
    second = backup(storage, data, s3_target)
    assert 16 * 4000 <= second.new_bytes < 16 * 4000 + 8 * 4000 + 4096
    assert [i.id for i in s3_target.list_backups()] == [first.id, second.id]
    assert s3_target.verify(first.id).ok
    restored = tmp_path / "restored"
    restore.restore(s3_target, second.id, restored)
    assert len(read_all(restored)) == 115
    # Delete the first: its private objects go, the second stays whole.
    before = len(list(s3_target.backend.list(OBJECTS)))
    s3_target.delete(first.id)
    assert len(list(s3_target.backend.list(OBJECTS))) < before
    assert s3_target.verify(second.id).ok


def test_s3_verify_finds_a_flipped_byte(storage: Storage, data: Path, s3_target: S3Target) -> None:
    for ts in range(1, 20):
        write(storage, "b1", "e", ts)
    made = backup(storage, data, s3_target)
    rel = next(f.path for f in made.files if f.path.endswith(".blk"))
    key = OBJECTS + str(made.extra["objects"][rel])  # type: ignore[index]
    raw = bytearray(s3_target.backend.read(key))
    raw[5] ^= 0x40
    s3_target.backend.write(key, bytes(raw))
    report = s3_target.verify(made.id)
    assert any(rel in p and "checksum mismatch" in p for p in report.problems), report.problems


def test_s3_incomplete_backup_is_listed_and_retention_keeps_last(
    storage: Storage, data: Path, s3_target: S3Target
) -> None:
    ids = []
    for i in range(3):
        write(storage, "b1", "e", i + 1)
        ids.append(backup(storage, data, s3_target).id)
    s3_target.backend.write("backups/20300101T000000000000Z/started", b"{}")
    infos = {i.id: i for i in s3_target.list_backups()}
    assert not infos["20300101T000000000000Z"].complete
    assert s3_target.apply_retention(keep_last=1, max_age=0, keep="") == ids[:2]
    assert s3_target.verify(ids[2]).ok


def test_point_in_time_restore_from_an_s3_archive(s3_target: S3Target, tmp_path: Path) -> None:
    from appliance.backup import pitr
    from appliance.engine.models import EngineOptions

    data = tmp_path / "live"
    store = Storage.open(EngineOptions(data_path=data, min_free_space=0, journal=True))
    store.create_bucket("b")
    base = s3_target.publish(snapshot.stage(store, data, None), instance="t", generation=0, buckets=None)
    for ts in range(1, 11):
        store.get_bucket("b").write_record("e", ts, b"p%d" % ts, "x", {})
    _, at = store.journal_position()  # type: ignore[misc]
    store.get_bucket("b").remove_entry("e")
    pitr.ship(store.rotate_journal(), s3_target)
    store.close()
    assert s3_target.list_archive()
    result = pitr.restore_to_time(s3_target, at, tmp_path / "r")
    assert result.base == base.id and result.applied == 10 and not result.failed
    assert {k[2] for k in read_all(tmp_path / "r")} == set(range(1, 11))
