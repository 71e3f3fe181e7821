"""Unit tests of the lifecycle runner, policy parsing and provisioning merge (no HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord
from appliance.errors import UnprocessableEntity
from appliance.lifecycle import runner
from appliance.lifecycle.policy import parse_policy

HOUR = 3600 * 1_000_000
NOW = 1_000 * HOUR


def test_chunks_cut_at_block_boundaries_and_size() -> None:
    chunks = list(runner._chunks([1, 2, 3, 10, 11, 12, 13, 20], [0, 10, 20], 3))
    assert chunks == [[1, 2, 3], [10, 11, 12], [13], [20]]
    assert list(runner._chunks([], [0], 3)) == []


def test_policy_defaults_and_durations() -> None:
    policy = parse_policy({"type": "DELETE", "bucket": "b", "older_than": "1d 12h"})
    assert (policy.type, policy.interval, policy.mode, policy.entries) == ("delete", "3600s",
                                                                            "enabled", ())
    assert policy.older_than_us == 36 * HOUR and policy.processing_us == 24 * HOUR
    assert parse_policy({"type": "delete", "bucket": "b", "older_than": 7200}).older_than == "7200s"
    with pytest.raises(UnprocessableEntity, match="processing_interval"):
        parse_policy({"type": "delete", "bucket": "b", "older_than": "1h",
                      "processing_interval": "0s"})


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    s = Storage.open(EngineOptions(data_path=tmp_path, integrity_checks=False))
    s.create_bucket("b", BucketSettings(max_block_records=4))
    bucket = s.get_bucket("b")
    bucket.write_batch("e", [NewRecord(NOW - h * HOUR, b"x", labels={"odd": str(h % 2)})
                             for h in range(20, 0, -1)])
    yield s
    s.close()


def test_run_removes_by_age_and_condition_then_dry_run_counts(storage: Storage) -> None:
    policy = parse_policy({"type": "delete", "bucket": "b", "older_than": "10h",
                           "when": {"&odd": {"$eq": 1}}})
    cursors: dict[str, int] = {}
    report = runner.run_policy(storage, policy, cursors, NOW)
    # Ages 20..10 h are old enough (10 h exactly is not: ts < now - older_than); odd ones go.
    assert report.removed == 5 and report.errors == []
    entry = storage.get_bucket("b").get_entry("e")
    assert entry.info().record_count == 15
    assert cursors["e"] == NOW - 10 * HOUR
    dry = parse_policy({"type": "delete", "bucket": "b", "older_than": "1h", "mode": "dry_run"})
    report = runner.run_policy(storage, dry, {}, NOW)
    assert (report.matched, report.removed) == (14, 0)
    assert entry.info().record_count == 15


def test_run_on_a_missing_bucket_reports_it(storage: Storage) -> None:
    policy = parse_policy({"type": "delete", "bucket": "gone", "older_than": "1h"})
    report = runner.run_policy(storage, policy, {}, NOW)
    assert report.errors == ["Bucket 'gone' is not found"]


def test_lifecycle_defined_by_env_and_yaml_is_refused(tmp_path: Path) -> None:
    from appliance.errors import ConfigError
    from provisioning import load_desired

    path = tmp_path / "p.yaml"
    path.write_text("lifecycles:\n  x: {type: delete, bucket: b, older_than: 2d}\n")
    environ = {"RS_LIFECYCLE_A_NAME": "x", "RS_LIFECYCLE_A_TYPE": "delete",
               "RS_LIFECYCLE_A_BUCKET": "b", "RS_LIFECYCLE_A_OLDER_THAN": "1d"}
    with pytest.raises(ConfigError) as info:
        load_desired(environ, path)
    assert str(info.value) == f"lifecycle 'x' is defined by RS_LIFECYCLE_A_NAME and by {path}:2"
