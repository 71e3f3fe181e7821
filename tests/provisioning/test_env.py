"""Env groups are read as ReductStore reads them: incomplete or invalid groups are reported."""

from __future__ import annotations

from datetime import UTC, datetime

from appliance.engine.models import QuotaType
from provisioning.env import load_env_groups


def test_env_bucket_group_reads_every_field() -> None:
    groups = load_env_groups(
        {
            "RS_BUCKET_1_NAME": "bucket1",
            "RS_BUCKET_1_QUOTA_TYPE": "FIFO",
            "RS_BUCKET_1_QUOTA_SIZE": "1GB",
            "RS_BUCKET_1_MAX_BLOCK_SIZE": "1MiB",
            "RS_BUCKET_1_MAX_BLOCK_RECORDS": "1000",
        }
    )
    spec = groups.buckets["bucket1"]
    assert spec.quota_type is QuotaType.FIFO
    assert spec.quota_size == 1_000_000_000
    assert spec.max_block_size == 1_048_576
    assert spec.max_block_records == 1000
    assert groups.origins[("bucket", "bucket1")] == "RS_BUCKET_1_NAME"
    assert groups.problems == ()


def test_env_bucket_with_only_a_name_leaves_every_setting_unset() -> None:
    spec = load_env_groups({"RS_BUCKET_A_NAME": "a"}).buckets["a"]
    assert spec.model_dump() == {
        "quota_type": None,
        "quota_size": None,
        "max_block_size": None,
        "max_block_records": None,
    }


def test_env_invalid_values_are_treated_as_unset_and_reported() -> None:
    groups = load_env_groups(
        {
            "RS_BUCKET_A_NAME": "a",
            "RS_BUCKET_A_QUOTA_TYPE": "fifo",  # case-sensitive in ReductStore
            "RS_BUCKET_A_QUOTA_SIZE": "ten gigs",
            "RS_BUCKET_A_MAX_BLOCK_SIZE": " 1MB",  # no leading whitespace (bytesize)
            "RS_BUCKET_A_MAX_BLOCK_RECORDS": "1e3",
        }
    )
    spec = groups.buckets["a"]
    assert spec.model_dump(exclude_none=True) == {}
    text = "\n".join(groups.problems)
    for name in ("QUOTA_TYPE", "QUOTA_SIZE", "MAX_BLOCK_SIZE", "MAX_BLOCK_RECORDS"):
        assert f"RS_BUCKET_A_{name}=" in text
    assert len(groups.problems) == 4


def test_env_group_id_is_the_greedy_unanchored_capture() -> None:
    groups = load_env_groups(
        {
            "RS_BUCKET_SENSOR_DATA_NAME": "sensor-data",
            "RS_BUCKET_SENSOR_DATA_QUOTA_SIZE": "5KB",
            "X_RS_BUCKET_B_NAME": "b",  # unanchored: found, ID "B"
            "RS_BUCKET_B_MAX_BLOCK_RECORDS": "7",
        }
    )
    assert groups.buckets["sensor-data"].quota_size == 5000
    assert groups.buckets["b"].max_block_records == 7


def test_env_group_names_are_case_sensitive() -> None:
    groups = load_env_groups({"rs_bucket_a_name": "a", "RS_TOKEN_A_name": "t"})
    assert groups.buckets == {} and groups.tokens == {}


def test_env_empty_or_invalid_bucket_name_skips_the_group() -> None:
    groups = load_env_groups({"RS_BUCKET_A_NAME": "", "RS_BUCKET_B_NAME": "bad name"})
    assert groups.buckets == {}
    assert any("RS_BUCKET_A_NAME is empty" in p for p in groups.problems)
    assert any("RS_BUCKET_B_NAME" in p and "invalid bucket name" in p for p in groups.problems)


def test_env_fields_without_a_name_are_an_incomplete_group() -> None:
    groups = load_env_groups(
        {"RS_BUCKET_X_QUOTA_SIZE": "1GB", "RS_TOKEN_Y_VALUE": "secret", "RS_TOKEN_Y_READ": "a"}
    )
    assert groups.buckets == {} and groups.tokens == {}
    assert any(
        p.startswith("RS_BUCKET_X_QUOTA_SIZE is set but RS_BUCKET_X_NAME is not")
        for p in groups.problems
    )
    assert any(p.startswith("RS_TOKEN_Y_READ is set but RS_TOKEN_Y_NAME") for p in groups.problems)
    # The secret itself never appears in a report.
    assert not any("secret" in p for p in groups.problems)


def test_env_token_group_reads_every_field() -> None:
    groups = load_env_groups(
        {
            "RS_TOKEN_1_NAME": "token1",
            "RS_TOKEN_1_VALUE": "TOKEN",
            "RS_TOKEN_1_FULL_ACCESS": "true",
            "RS_TOKEN_1_READ": "bucket1,,bucket2,",
            "RS_TOKEN_1_WRITE": "bucket1",
            "RS_TOKEN_1_EXPIRES_AT": "2030-01-01T00:00:00Z",
        }
    )
    spec = groups.tokens["token1"]
    assert spec.value.get_secret_value() == "TOKEN"
    assert spec.full_access is True
    assert spec.read == ("bucket1", "bucket2")  # empty items dropped
    assert spec.write == ("bucket1",)
    assert spec.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert groups.problems == ()


def test_env_token_without_value_is_dropped_with_reductstores_message() -> None:
    groups = load_env_groups(
        {"RS_TOKEN_1_NAME": "token1", "RS_TOKEN_2_NAME": "token2", "RS_TOKEN_2_VALUE": ""}
    )
    assert groups.tokens == {}
    assert sum("has no value. Drop it." in p for p in groups.problems) == 2


def test_env_token_full_access_is_strict_and_lists_are_not_trimmed() -> None:
    groups = load_env_groups(
        {
            "RS_TOKEN_A_NAME": "a",
            "RS_TOKEN_A_VALUE": "v",
            "RS_TOKEN_A_FULL_ACCESS": "TRUE",
            "RS_TOKEN_B_NAME": "b",
            "RS_TOKEN_B_VALUE": "v",
            "RS_TOKEN_B_READ": "x, y",  # " y" is not trimmed, so it is not a bucket name
        }
    )
    assert groups.tokens["a"].full_access is False
    assert any("RS_TOKEN_A_FULL_ACCESS='TRUE' is invalid" in p for p in groups.problems)
    assert "b" not in groups.tokens
    assert any("RS_TOKEN_B_NAME" in p and "invalid permission ' y'" in p for p in groups.problems)


def test_env_token_bad_expiry_is_ignored_and_reported() -> None:
    groups = load_env_groups(
        {
            "RS_TOKEN_A_NAME": "a",
            "RS_TOKEN_A_VALUE": "v",
            "RS_TOKEN_A_EXPIRES_AT": "2030-01-01",  # no time, no offset: not RFC 3339
            "RS_TOKEN_B_NAME": "b",
            "RS_TOKEN_B_VALUE": "v",
            "RS_TOKEN_B_EXPIRES_AT": "2030-01-01 10:00:00.5+02:00",
        }
    )
    assert groups.tokens["a"].expires_at is None
    assert any("Token 'a' has invalid expiry date" in p for p in groups.problems)
    assert groups.tokens["b"].expires_at == datetime(2030, 1, 1, 8, 0, 0, 500000, tzinfo=UTC)


def test_env_duplicate_names_keep_the_first_id_and_report_the_other() -> None:
    groups = load_env_groups(
        {
            "RS_BUCKET_B_NAME": "same",
            "RS_BUCKET_B_QUOTA_SIZE": "2",
            "RS_BUCKET_A_NAME": "same",
            "RS_BUCKET_A_QUOTA_SIZE": "1",
        }
    )
    assert groups.buckets["same"].quota_size == 1
    assert any(
        "RS_BUCKET_B_NAME: bucket 'same' is already defined by RS_BUCKET_A_NAME" in p
        for p in groups.problems
    )


def test_env_init_token_name_is_reserved() -> None:
    groups = load_env_groups({"RS_TOKEN_A_NAME": "init-token", "RS_TOKEN_A_VALUE": "v"})
    assert groups.tokens == {}
    assert any("reserved for RS_API_TOKEN" in p for p in groups.problems)


def test_env_incomplete_replication_group_is_dropped_with_reductstores_message() -> None:
    groups = load_env_groups({"RS_REPLICATION_R_NAME": "r"})
    assert len(groups.problems) == 1
    assert "Replication 'r' has no src bucket" in groups.problems[0]
    assert groups.replications == {}
