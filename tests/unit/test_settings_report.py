"""How the startup report names settings: unsupported ReductStore names, sizes, the host name."""

from __future__ import annotations

import socket

from appliance.settings import (
    KNOWN_ENV_NAMES,
    UNSUPPORTED_ENV_NAMES,
    describe,
    load_settings,
    unknown_env_names,
    unsupported_env_names,
)
from appliance.units import format_duration, format_size, parse_duration, parse_size


def test_a_setting_is_either_supported_or_named_unsupported_never_both() -> None:
    assert not set(UNSUPPORTED_ENV_NAMES) & KNOWN_ENV_NAMES


def test_unsupported_names_are_not_typos() -> None:
    env = {"RS_EXT_PATH": "/x", "RS_ZENOH_ENABLED": "true", "RS_PROT": "1", "RS_PORT": "1"}
    assert unsupported_env_names(env) == [
        ("RS_EXT_PATH", "IO extensions are not supported"),
        ("RS_ZENOH_ENABLED", "the Zenoh API is not supported"),
    ]
    assert unknown_env_names(env) == [("RS_PROT", "RS_PORT")]


def test_sizes_and_durations_print_as_literals_that_parse_back() -> None:
    for size in (16 * 1024 * 1024, 64_000_000, 512_000, 1024**3, 10**12, 1):
        text = format_size(size)
        assert parse_size(text.split(" ")[0] if " " not in text else str(size)) == size
    assert format_size(1536) == "1.5 KiB (1536 bytes)"
    for seconds in (30.0, 60.0, 0.5, 3600.0, 86400.0):
        assert parse_duration(format_duration(seconds)) == seconds


def test_config_table_rows() -> None:
    rows = {n: v for n, v, _ in describe(load_settings({}), {})}
    assert rows["RS_ENGINE_MIN_FREE_SPACE"] == "16MiB"
    assert rows["RS_DEFAULTS_BUCKET_MAX_BLOCK_SIZE"] == "64MB"
    assert rows["RS_ENGINE_COMPACTION_INTERVAL"] == "1m"
    assert rows["RS_INSTANCE_NAME"] == f"{socket.gethostname()} (host name)"
    assert rows["RS_DISABLE_AUTH"] == "false"
