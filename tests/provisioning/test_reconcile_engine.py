"""reconcile() against the real storage engine on a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, QuotaType
from appliance.errors import ConfigError
from provisioning.merge import load_desired
from provisioning.reconcile import reconcile
from provisioning.state import ProvisioningState
from tests.provisioning.fakes import FakeTokens

DEFAULTS = BucketSettings(QuotaType.NONE, 0, 64_000_000, 1024)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[object]:
    store = Storage.open(EngineOptions(data_path=tmp_path / "data", bucket_defaults=DEFAULTS))
    yield store
    store.close()


def apply(storage: object, tmp_path: Path, text: str, state: ProvisioningState) -> object:
    path = tmp_path / "prov.yaml"
    path.write_text(text)
    desired = load_desired({}, path)
    return reconcile(desired, storage, FakeTokens(), state, bucket_defaults=DEFAULTS)  # type: ignore[arg-type]


def test_engine_buckets_are_created_updated_and_persisted(storage: object, tmp_path: Path) -> None:
    state = ProvisioningState()
    apply(storage, tmp_path, "buckets:\n  a: {quota_type: FIFO, quota_size: 10MB}\n", state)
    bucket = storage.get_bucket("a")  # type: ignore[attr-defined]
    assert bucket.settings == BucketSettings(QuotaType.FIFO, 10_000_000, 64_000_000, 1024)
    result = apply(storage, tmp_path, "buckets:\n  a: {max_block_records: 16}\n", state)
    assert result.updated_buckets == ["a"]  # type: ignore[attr-defined]
    # Unset fields kept the bucket's current values.
    assert storage.get_bucket("a").settings == BucketSettings(  # type: ignore[attr-defined]
        QuotaType.FIFO, 10_000_000, 64_000_000, 16
    )
    storage.close()  # type: ignore[attr-defined]
    reopened = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        assert reopened.get_bucket("a").settings.max_block_records == 16
    finally:
        reopened.close()


def test_engine_quota_below_stored_data_is_refused_before_any_change(
    storage: object, tmp_path: Path
) -> None:
    state = ProvisioningState()
    apply(storage, tmp_path, "buckets:\n  a: {}\n", state)
    bucket = storage.get_bucket("a")  # type: ignore[attr-defined]
    for ts in range(1, 11):
        bucket.write_record("sensor", ts, b"x" * 10_000, "application/octet-stream", {})
    stored = bucket.info().size
    assert stored > 100_000
    with pytest.raises(ConfigError, match=rf"FIFO quota_size 50000 is below the {stored} bytes"):
        apply(
            storage,
            tmp_path,
            "buckets:\n  a: {quota_type: FIFO, quota_size: 50KB}\n  b: {}\n",
            state,
        )
    assert storage.bucket_names() == ["a"]  # type: ignore[attr-defined]
    assert bucket.settings.quota_type is QuotaType.NONE
    assert bucket.info().size == stored  # FIFO never got the chance to drop anything


def test_engine_unprovisioned_bucket_keeps_its_data(storage: object, tmp_path: Path) -> None:
    state = ProvisioningState()
    apply(storage, tmp_path, "buckets:\n  a: {}\n", state)
    storage.get_bucket("a").write_record("e", 1, b"data", "text/plain", {})  # type: ignore[attr-defined]
    result = apply(storage, tmp_path, "buckets: {}\n", state)
    assert result.unprovisioned_buckets == ["a"]  # type: ignore[attr-defined]
    assert not state.is_bucket_provisioned("a")
    entry = storage.get_bucket("a").get_entry("e")  # type: ignore[attr-defined]
    assert entry.read_payload(entry.get_record(1)) == b"data"


def test_engine_invalid_bucket_name_from_env_never_reaches_the_engine(
    storage: object, tmp_path: Path
) -> None:
    desired = load_desired({"RS_BUCKET_A_NAME": "$$$$$"}, None)
    assert desired.buckets == {}
    reconcile(desired, storage, FakeTokens(), ProvisioningState())  # type: ignore[arg-type]
    assert storage.bucket_names() == []  # type: ignore[attr-defined]
