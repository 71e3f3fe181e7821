"""RS_* settings: defaults, parsing, one-line errors, unknown-name warnings, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.settings import (
    InstanceRole,
    LockFailureAction,
    QuotaType,
    Settings,
    describe,
    load_settings,
    unknown_env_names,
)
from appliance.units import GB, MIB


def test_settings_defaults_match_reductstore() -> None:
    settings = load_settings({})
    assert settings.host == "0.0.0.0"
    assert settings.port == 8383
    assert settings.api_base_path == "/"
    assert settings.engine_enable_integrity_checks is True
    assert settings.engine_compaction_interval == 60.0
    assert settings.instance_role is InstanceRole.STANDALONE
    assert settings.lock_file_ttl == 30.0
    assert settings.lock_file_polling_interval == 10.0
    assert settings.lock_file_timeout == 60.0
    assert settings.lock_file_failure_action is LockFailureAction.ABORT
    assert settings.io_batch_max_records == 85
    assert settings.io_batch_max_size == 8_000_000
    assert settings.auth_enabled is False


def test_settings_parse_durations_sizes_and_enums() -> None:
    settings = load_settings(
        {
            "RS_ENGINE_COMPACTION_INTERVAL": "500ms",
            "RS_LOCK_FILE_TTL": "1m",
            "RS_ENGINE_MAX_STORAGE_SIZE": "10GB",
            "RS_DEFAULTS_BUCKET_MAX_BLOCK_SIZE": "64MiB",
            "RS_DEFAULTS_BUCKET_QUOTA_TYPE": "FIFO",
            "RS_INSTANCE_ROLE": "replica",
            "RS_LOCK_FILE_FAILURE_ACTION": "PROCEED",
            "RS_API_BASE_PATH": "reduct",
            "RS_DATA_PATH": "/tmp/x",
            "RS_ENGINE_ENABLE_INTEGRITY_CHECKS": "false",
        }
    )
    assert settings.engine_compaction_interval == 0.5
    assert settings.lock_file_ttl == 60.0
    assert settings.engine_max_storage_size == 10 * GB
    assert settings.defaults_bucket_max_block_size == 64 * MIB
    assert settings.defaults_bucket_quota_type is QuotaType.FIFO
    assert settings.instance_role is InstanceRole.REPLICA
    assert settings.lock_file_failure_action is LockFailureAction.PROCEED
    assert settings.api_base_path == "/reduct/"
    assert settings.data_path == Path("/tmp/x")
    assert settings.engine_enable_integrity_checks is False


@pytest.mark.parametrize(
    ("name", "value", "form"),
    [
        ("RS_PORT", "eighty", "integer"),
        ("RS_PORT", "70000", "65535"),
        ("RS_ENGINE_COMPACTION_INTERVAL", "soon", "30s, 500ms"),
        ("RS_ENGINE_MAX_STORAGE_SIZE", "huge", "64MB"),
        ("RS_INSTANCE_ROLE", "LEADER", "STANDALONE"),
        ("RS_LOCK_FILE_FAILURE_ACTION", "retry", "abort"),
        ("RS_HOST", "example.com", "IP address"),
        ("RS_ENGINE_ENABLE_INTEGRITY_CHECKS", "maybe", "bool"),
    ],
)
def test_bad_value_is_one_line_naming_variable_value_and_form(name: str, value: str, form: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert repr(value) in message
    assert form in message


def test_empty_token_means_auth_disabled_and_token_is_masked() -> None:
    assert load_settings({"RS_API_TOKEN": ""}).auth_enabled is False
    settings = load_settings({"RS_API_TOKEN": "s3cret"})
    assert settings.auth_enabled is True
    rows = {name: (value, source) for name, value, source in describe(settings, {"RS_API_TOKEN": "x"})}
    assert rows["RS_API_TOKEN"] == ("********", "env")
    assert "s3cret" not in repr(describe(settings))
    assert rows["RS_PORT"] == ("8383", "default")


def test_unknown_rs_names_are_reported_with_a_suggestion() -> None:
    env = {
        "RS_PROT": "1",
        "RS_BUCKET_1_NAME": "b",
        "RS_TOKEN_A_VALUE": "v",
        "RS_PORT": "1",
        "HOME": "/root",
        "RS_TOTALLY_NEW": "x",
    }
    assert unknown_env_names(env) == [("RS_PROT", "RS_PORT"), ("RS_TOTALLY_NEW", None)]


def test_settings_are_frozen_and_reject_unknown_fields() -> None:
    settings = Settings()
    with pytest.raises(Exception):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(Exception):
        Settings(no_such_field=1)  # type: ignore[call-arg]


def test_cors_origins_split_and_trimmed() -> None:
    assert load_settings({"RS_CORS_ALLOW_ORIGIN": " http://a, http://b ,"}).cors_origins == [
        "http://a",
        "http://b",
    ]
