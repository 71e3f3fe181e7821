"""RS_REMOTE_* settings: required combinations, masking, YAML ``instance.remote``, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.settings import describe, load_settings
from provisioning.instance import YAML_KEYS, instance_overrides
from provisioning.models import InstanceSpec

S3 = {"RS_REMOTE_BACKEND_TYPE": "s3", "RS_REMOTE_BUCKET": "b", "RS_REMOTE_CACHE_PATH": "/c"}


def test_s3_uses_the_cache_as_the_data_folder_with_reductstore_defaults() -> None:
    settings = load_settings({**S3, "RS_DATA_PATH": "/ignored"})
    assert settings.remote_enabled and settings.data_path == Path("/c")
    assert settings.remote_cache_size == 1_000_000_000
    assert settings.remote_sync_interval == 60.0
    assert not load_settings({}).remote_enabled


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RS_REMOTE_BACKEND_TYPE": "s3", "RS_REMOTE_CACHE_PATH": "/c"}, "RS_REMOTE_BUCKET is required"),
        ({"RS_REMOTE_BACKEND_TYPE": "s3", "RS_REMOTE_BUCKET": "b"}, "RS_REMOTE_CACHE_PATH is required"),
        ({**S3, "RS_REMOTE_ACCESS_KEY": "k"}, "RS_REMOTE_SECRET_KEY"),
        ({"RS_REMOTE_BACKEND_TYPE": "gcs"}, "RS_REMOTE_BACKEND_TYPE='gcs'"),
        ({**S3, "RS_REMOTE_CACHE_SIZE": "lots"}, "RS_REMOTE_CACHE_SIZE"),
        ({**S3, "RS_REMOTE_DEFAULT_STORAGE_CLASS": "COLD"}, "not an S3 storage class"),
        ({**S3, "RS_REMOTE_DEFAULT_STORAGE_CLASS": "glacier"}, "cannot be read without a restore"),
        ({**S3, "RS_REMOTE_READ_TIMEOUT": "0"}, "RS_REMOTE_READ_TIMEOUT='0'"),
        ({**S3, "RS_REMOTE_CONNECT_TIMEOUT": "soon"}, "RS_REMOTE_CONNECT_TIMEOUT='soon'"),
    ],
)
def test_bad_combinations_are_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_storage_class_and_timeouts_are_read_and_shown() -> None:
    settings = load_settings(
        {**S3, "RS_REMOTE_DEFAULT_STORAGE_CLASS": "standard_ia", "RS_REMOTE_READ_TIMEOUT": "2s",
         "RS_REMOTE_CONNECT_TIMEOUT": "500ms"}
    )
    assert settings.remote_default_storage_class == "STANDARD_IA"
    assert (settings.remote_read_timeout, settings.remote_connect_timeout) == (2.0, 0.5)
    defaults = load_settings(S3)
    assert (defaults.remote_read_timeout, defaults.remote_connect_timeout) == (60.0, 5.0)
    rows = {name: shown for name, shown, _ in describe(settings, {})}
    assert rows["RS_REMOTE_READ_TIMEOUT"] == "2s" and rows["RS_REMOTE_CONNECT_TIMEOUT"] == "500ms"
    assert rows["RS_REMOTE_DEFAULT_STORAGE_CLASS"] == "STANDARD_IA"


def test_the_secret_key_is_masked() -> None:
    settings = load_settings({**S3, "RS_REMOTE_ACCESS_KEY": "k", "RS_REMOTE_SECRET_KEY": "s3cr3t"})
    rows = {name: shown for name, shown, _ in describe(settings, {})}
    assert rows["RS_REMOTE_SECRET_KEY"] == "********" and "s3cr3t" not in str(rows)
    assert "s3cr3t" not in repr(settings)


def test_yaml_instance_remote_sets_the_remote_settings() -> None:
    spec = InstanceSpec.model_validate(
        {"remote": {"backend_type": "s3", "bucket": "b", "cache_path": "/c", "cache_size": "5GB",
                    "sync_interval": "0s", "prefix": "site-a/"}}
    )
    overrides = instance_overrides(spec)
    assert overrides["remote_bucket"] == "b" and overrides["remote_prefix"] == "site-a/"
    assert YAML_KEYS["remote_cache_size"] == "instance.remote.cache_size"
    assert "remote_secret_key" not in YAML_KEYS  # secrets come from the environment only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"RS_REMOTE_CACHE_PATH": "{tmp}"}, "RS_REMOTE_BUCKET is required with RS_REMOTE_BACKEND_TYPE=s3"),
        ({"RS_REMOTE_BUCKET": "b"}, "RS_REMOTE_CACHE_PATH is required with RS_REMOTE_BACKEND_TYPE=s3"),
        ({"RS_REMOTE_BUCKET": "b", "RS_REMOTE_CACHE_PATH": "{tmp}",
          "RS_REMOTE_DEFAULT_STORAGE_CLASS": "DEEP_ARCHIVE"}, "RS_REMOTE_DEFAULT_STORAGE_CLASS"),
    ],
)
def test_startup_with_a_bad_remote_setting_exits_2_with_one_line(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    env = {"RS_REMOTE_BACKEND_TYPE": "s3", "RS_DISABLE_AUTH": "true", "PATH": "/usr/bin"}
    env.update({name: value.replace("{tmp}", str(tmp_path)) for name, value in extra.items()})
    done = subprocess.run(
        [sys.executable, "-m", "appliance"], env=env, capture_output=True, timeout=60, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr
