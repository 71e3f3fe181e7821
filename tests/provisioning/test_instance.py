"""YAML ``instance:`` keys map to Settings fields; env wins; changes report "requires restart"."""

from __future__ import annotations

from appliance.settings import InstanceRole, Settings, load_settings
from provisioning.instance import (
    YAML_KEYS,
    as_environ,
    describe_change,
    env_overridden,
    instance_overrides,
    restart_required,
)
from provisioning.models import InstanceSpec
from provisioning.yaml_loader import parse_text

YAML = """\
instance:
  role: PRIMARY
  name: edge-7
  lock_file: {ttl: 45s, timeout: 0, polling_interval: 5s, failure_action: proceed}
  engine:
    compaction_interval: 2m
    replica_update_interval: 10
    enable_integrity_checks: false
    sync_writes: true
    max_storage_size: 1GB
    min_free_space: 64MiB
  defaults:
    bucket: {quota_type: FIFO, quota_size: 1GB, max_block_size: 1MB, max_block_records: 10}
"""


def overrides() -> dict[str, object]:
    document, _ = parse_text(YAML, "p.yaml", {})
    return instance_overrides(document.instance)


def test_instance_every_yaml_key_is_a_settings_field() -> None:
    assert set(YAML_KEYS) <= set(Settings.model_fields)
    assert YAML_KEYS["lock_file_ttl"] == "instance.lock_file.ttl"
    assert YAML_KEYS["instance_role"] == "instance.role"
    assert YAML_KEYS["engine_enable_integrity_checks"] == "instance.engine.enable_integrity_checks"


def test_instance_overrides_use_settings_names_and_parsed_values() -> None:
    assert overrides() == {
        "instance_role": "PRIMARY",
        "instance_name": "edge-7",
        "lock_file_ttl": 45.0,
        "lock_file_timeout": 0.0,
        "lock_file_polling_interval": 5.0,
        "lock_file_failure_action": "proceed",
        "engine_compaction_interval": 120.0,
        "engine_replica_update_interval": 10.0,
        "engine_enable_integrity_checks": False,
        "engine_sync_writes": True,
        "engine_max_storage_size": 1_000_000_000,
        "engine_min_free_space": 64 * 1024 * 1024,
        "defaults_bucket_quota_type": "FIFO",
        "defaults_bucket_quota_size": 1_000_000_000,
        "defaults_bucket_max_block_size": 1_000_000,
        "defaults_bucket_max_block_records": 10,
    }
    assert instance_overrides(InstanceSpec()) == {}


def test_instance_as_environ_feeds_load_settings_and_env_wins() -> None:
    layered = {**as_environ(overrides()), "RS_LOCK_FILE_TTL": "5"}
    settings = load_settings(layered)
    assert settings.instance_role is InstanceRole.PRIMARY
    assert settings.lock_file_ttl == 5.0  # the explicit variable wins over YAML
    assert settings.engine_compaction_interval == 120.0
    assert settings.engine_enable_integrity_checks is False
    assert settings.defaults_bucket_max_block_records == 10


def test_instance_env_overridden_lists_shadowed_keys() -> None:
    assert env_overridden(overrides(), {"RS_LOCK_FILE_TTL": "5", "RS_PORT": "1"}) == [
        "lock_file_ttl"
    ]


def test_restart_required_reports_changed_fields_only() -> None:
    old = {"lock_file_ttl": 45.0, "instance_role": "PRIMARY"}
    assert restart_required(old, dict(old)) == []
    assert restart_required(old, {"lock_file_ttl": 60.0, "instance_role": "PRIMARY"}) == [
        "lock_file_ttl"
    ]
    # Removing a key means "back to the default": a change unless it already was the default.
    assert restart_required(old, {"instance_role": "PRIMARY"}) == ["lock_file_ttl"]
    assert restart_required({}, {"lock_file_ttl": 30.0}) == []  # 30 s is the default
    assert restart_required({}, {"instance_role": "STANDALONE"}) == []


def test_restart_required_skips_fields_an_env_variable_sets() -> None:
    changed = restart_required(
        {"lock_file_ttl": 45.0}, {"lock_file_ttl": 60.0}, {"RS_LOCK_FILE_TTL": "10"}
    )
    assert changed == []


def test_describe_change_names_yaml_key_variable_and_values() -> None:
    text = describe_change("lock_file_ttl", {}, {"lock_file_ttl": 45.0})
    assert text == "instance.lock_file.ttl (RS_LOCK_FILE_TTL) 30.0 -> 45.0"
