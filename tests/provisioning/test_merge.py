"""Env groups + YAML → one desired state; an object defined in both places is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from provisioning.env import load_env_groups
from provisioning.merge import load_desired, merge
from provisioning.yaml_loader import load_yaml


def test_merge_bucket_in_env_and_yaml_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("# buckets of the plant\n\nbuckets:\n  x: {quota_type: FIFO}\n")
    env = {"RS_BUCKET_A_NAME": "x"}
    with pytest.raises(ConfigError) as info:
        load_desired(env, path)
    assert str(info.value) == f"bucket 'x' is defined by RS_BUCKET_A_NAME and by {path}:4"


def test_merge_token_in_env_and_yaml_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("tokens:\n  t: {value: a}\n")
    env = {"RS_TOKEN_T1_NAME": "t", "RS_TOKEN_T1_VALUE": "b"}
    with pytest.raises(
        ConfigError, match=f"^token 't' is defined by RS_TOKEN_T1_NAME and by {path}:2$"
    ):
        load_desired(env, path)


def test_merge_distinct_objects_are_united_with_their_origins(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("instance: {role: PRIMARY}\nbuckets:\n  from-yaml: {}\n")
    env = {"RS_BUCKET_A_NAME": "from-env", "RS_TOKEN_X_NAME": "incomplete"}
    desired = load_desired(env, path)
    assert set(desired.buckets) == {"from-env", "from-yaml"}
    assert desired.origin("bucket", "from-env") == "RS_BUCKET_A_NAME"
    assert desired.origin("bucket", "from-yaml") == f"{path}:3"
    assert desired.source == f"env (1 groups) + {path}"
    assert desired.instance.role is not None and desired.instance.role.value == "PRIMARY"
    assert any("Token 'incomplete' has no value" in w for w in desired.warnings)
    assert desired.fingerprint is not None
    assert desired.summary() == "2 buckets, 0 tokens"


def test_merge_without_yaml_is_env_only() -> None:
    desired = load_desired({"RS_BUCKET_A_NAME": "a"}, None)
    assert list(desired.buckets) == ["a"] and desired.source == "env (1 groups)"
    assert load_desired({}, None).source == "none"


def test_merge_is_pure_over_loaded_sources(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("buckets:\n  b: {}\n")
    desired = merge(load_env_groups({"RS_BUCKET_A_NAME": "a"}), load_yaml(path, {}))
    assert sorted(desired.buckets) == ["a", "b"]
