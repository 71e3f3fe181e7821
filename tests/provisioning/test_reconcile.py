"""reconcile() against in-memory fakes: create/update, refusal before apply, never delete."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from appliance.engine.models import BucketSettings, QuotaType
from appliance.errors import ConfigError
from provisioning.merge import load_desired
from provisioning.models import DesiredState
from provisioning.reconcile import TokenPermissions, reconcile
from provisioning.state import ProvisioningState
from provisioning.yaml_loader import parse_text
from tests.provisioning.fakes import FakeStorage, FakeTokens

DEFAULTS = BucketSettings(QuotaType.NONE, 0, 1_000_000, 100)


def desired(text: str, env: dict[str, str] | None = None) -> DesiredState:
    document, origins = parse_text(text, "prov.yaml", env or {})
    return DesiredState(
        buckets=document.buckets,
        tokens=document.tokens,
        instance=document.instance,
        origins=origins,
        source="prov.yaml",
    )


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture
def tokens() -> FakeTokens:
    return FakeTokens()


@pytest.fixture
def state() -> ProvisioningState:
    return ProvisioningState(clock=lambda: 1_700_000_000.0)


def run(d: DesiredState, storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState) -> Any:
    return reconcile(d, storage, tokens, state, bucket_defaults=DEFAULTS)


def test_reconcile_creates_buckets_over_the_defaults_and_marks_them(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    result = run(
        desired("buckets:\n  a: {quota_type: FIFO, quota_size: 1KB}\n  b:\n"),
        storage,
        tokens,
        state,
    )
    assert result.created_buckets == ["a", "b"]
    assert storage.buckets["a"].settings == BucketSettings(QuotaType.FIFO, 1000, 1_000_000, 100)
    assert storage.buckets["b"].settings == DEFAULTS
    assert state.is_bucket_provisioned("a") and state.is_bucket_provisioned("b")
    assert not state.is_bucket_provisioned("c")
    assert state.to_json()["source"] == "prov.yaml"
    assert state.to_json()["last_reload"] == "2023-11-14T22:13:20.000Z"


def test_reconcile_update_keeps_current_values_of_unset_fields(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    storage.create_bucket("a", BucketSettings(QuotaType.HARD, 5000, 2048, 7))
    result = run(desired("buckets:\n  a: {max_block_records: 9}\n"), storage, tokens, state)
    assert result.updated_buckets == ["a"]
    assert storage.buckets["a"].settings == BucketSettings(QuotaType.HARD, 5000, 2048, 9)


def test_reconcile_twice_changes_nothing_the_second_time(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    d = desired("buckets:\n  a: {quota_size: 1}\ntokens:\n  t: {value: v, read: [a]}\n")
    run(d, storage, tokens, state)
    second = run(d, storage, tokens, state)
    assert not second.changed
    assert second.unchanged_buckets == ["a"] and second.unchanged_tokens == ["t"]
    assert storage.buckets["a"].updates == 0
    assert tokens.tokens["t"].generation == 1  # not replaced again: created_at stays


def test_reconcile_refuses_a_quota_below_stored_data_before_applying_anything(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    storage.create_bucket("full", BucketSettings(QuotaType.NONE, 0, 1000, 10))
    storage.buckets["full"].size = 5_000_000
    d = desired(
        "buckets:\n  new: {}\n  full: {quota_type: FIFO, quota_size: 1MB}\n"
        "tokens:\n  t: {value: v}\n"
    )
    with pytest.raises(ConfigError) as info:
        run(d, storage, tokens, state)
    assert str(info.value) == (
        "bucket 'full' (prov.yaml:3): FIFO quota_size 1000000 is below the 5000000 bytes "
        "already stored; raise the quota or remove data first"
    )
    assert "new" not in storage.buckets  # nothing applied
    assert storage.buckets["full"].settings.quota_type is QuotaType.NONE
    assert tokens.tokens == {}
    assert state.provisioned_buckets == frozenset()


def test_reconcile_unchanged_quota_slightly_exceeded_is_not_refused(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    # FIFO trims whole blocks, so a bucket can sit a little above its quota: no refusal at boot.
    storage.create_bucket("a", BucketSettings(QuotaType.FIFO, 1000, 1000, 10))
    storage.buckets["a"].size = 1200
    result = run(
        desired("buckets:\n  a: {quota_type: FIFO, quota_size: 1000}\n"), storage, tokens, state
    )
    assert result.unchanged_buckets == ["a"]


def test_reconcile_quota_none_is_never_refused(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    storage.create_bucket("a", BucketSettings(QuotaType.FIFO, 10_000, 1000, 10))
    storage.buckets["a"].size = 9000
    result = run(
        desired("buckets:\n  a: {quota_type: NONE, quota_size: 1}\n"), storage, tokens, state
    )
    assert result.updated_buckets == ["a"]


def test_reconcile_unprovision_never_deletes_and_says_so(
    storage: FakeStorage,
    tokens: FakeTokens,
    state: ProvisioningState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run(desired("buckets:\n  a: {}\n  b: {}\ntokens:\n  t: {value: v}\n"), storage, tokens, state)
    storage.buckets["a"].size = 123
    with caplog.at_level(logging.INFO, logger="provisioning"):
        result = run(desired("buckets:\n  b: {}\n"), storage, tokens, state)
    assert result.unprovisioned_buckets == ["a"] and result.unprovisioned_tokens == ["t"]
    assert storage.removed == [] and storage.buckets["a"].size == 123
    assert "t" in tokens.tokens and not tokens.tokens["t"].provisioned
    assert not state.is_bucket_provisioned("a") and state.is_bucket_provisioned("b")
    assert not state.is_token_provisioned("t")
    messages = [r.getMessage() for r in caplog.records]
    assert "bucket 'a' is no longer provisioned; its data is kept" in messages
    assert "token 't' is no longer provisioned; it is kept" in messages


def test_reconcile_tokens_are_replaced_when_their_definition_changes(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    text = "tokens:\n  t: {value: '${V}', write: [a], expires_at: 2030-01-01T00:00:00Z}\n"
    run(desired(text, {"V": "one"}), storage, tokens, state)
    token = tokens.tokens["t"]
    assert token.value == "one"
    assert token.permissions == TokenPermissions(False, (), ("a",))
    assert token.expires_at is not None and token.expires_at.year == 2030
    result = run(desired(text, {"V": "two"}), storage, tokens, state)
    assert result.provisioned_tokens == ["t"]
    assert tokens.tokens["t"].value == "two" and tokens.tokens["t"].generation == 2


def test_reconcile_reprovisions_a_token_the_store_no_longer_marks(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    d = desired("tokens:\n  t: {value: v}\n")
    run(d, storage, tokens, state)
    tokens.tokens["t"].provisioned = False  # e.g. the store was reloaded from disk
    assert run(d, storage, tokens, state).provisioned_tokens == ["t"]


def test_reconcile_unprovisions_tokens_marked_by_an_earlier_run_but_not_init_token(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    tokens.provision_token("old", "v", TokenPermissions(), None)  # marked before a restart
    tokens.provision_token("init-token", "v", TokenPermissions(True), None)
    result = run(desired("tokens: {}\n"), storage, tokens, state)
    assert result.unprovisioned_tokens == ["old"]
    assert tokens.tokens["init-token"].provisioned


def test_reconcile_one_failing_object_does_not_stop_the_others(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    storage.refuse.add("a")
    result = run(desired("buckets:\n  a: {}\n  b: {}\n"), storage, tokens, state)
    assert result.created_buckets == ["b"]
    assert result.errors == ["bucket 'a' (prov.yaml:2): Instance is a read-only replica"]
    assert not state.is_bucket_provisioned("a") and state.is_bucket_provisioned("b")
    status = state.to_json()
    assert status["ok"] is False and "read-only replica" in status["last_error"]


def test_reconcile_env_groups_end_to_end(
    storage: FakeStorage, tokens: FakeTokens, state: ProvisioningState
) -> None:
    d = load_desired(
        {
            "RS_BUCKET_1_NAME": "bucket1",
            "RS_BUCKET_1_QUOTA_TYPE": "HARD",
            "RS_BUCKET_1_QUOTA_SIZE": "1GB",
            "RS_TOKEN_1_NAME": "token1",
            "RS_TOKEN_1_VALUE": "TOKEN",
            "RS_TOKEN_1_FULL_ACCESS": "true",
        },
        None,
    )
    run(d, storage, tokens, state)
    assert storage.buckets["bucket1"].settings.quota_size == 1_000_000_000
    assert tokens.tokens["token1"].permissions.full_access
    assert state.to_json()["source"] == "env (2 groups)"
