"""Provisioned replication tasks: ``RS_REPLICATION_<ID>_*`` groups, the ``replications:`` YAML
section, ``appliance provision validate``, and reconcile against a running app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ConfigError
from provisioning import load_desired, load_env_groups
from tests.api.conftest import Harness

API = "/api/v1"
GROUP = {
    "RS_REPLICATION_1_NAME": "r",
    "RS_REPLICATION_1_SRC_BUCKET": "src",
    "RS_REPLICATION_1_DST_BUCKET": "dst",
    "RS_REPLICATION_1_DST_HOST": "http://127.0.0.1:8383",
}


def test_env_group_with_every_field_and_legacy_filters() -> None:
    env = {
        **GROUP,
        "RS_REPLICATION_1_DST_TOKEN": "t",
        "RS_REPLICATION_1_ENTRIES": "a,b/**,!b/tmp",
        "RS_REPLICATION_1_DST_PREFIX": "edge",
        "RS_REPLICATION_1_WHEN": '{"&x": {"$gt": 1}}',
        "RS_REPLICATION_1_MODE": "PAUSED",
        "RS_REPLICATION_1_COMPRESSION": "Zstd",
        "RS_REPLICATION_1_INCLUDE_kind": "cam",
        "RS_REPLICATION_1_EXCLUDE_bad": "1",
        "RS_REPLICATION_1_EACH_N": "3",
    }
    groups = load_env_groups(env)
    assert groups.problems == ()
    settings = groups.replications["r"].to_settings()
    assert settings.dst_host == "http://127.0.0.1:8383/"
    assert settings.entries == ("a", "b/**", "!b/tmp")
    assert (settings.mode.value, settings.compression.value) == ("paused", "zstd")
    assert settings.dst_token == "t" and settings.dst_prefix == "edge"
    assert settings.when == {"$and": [
        {"$and": [
            {"$and": [{"$has": "kind"}, {"$eq": ["&kind", "cam"]}]},
            {"$or": [{"$not": [{"$has": "bad"}]}, {"$ne": ["&bad", 1]}]},
        ]},
        {"&x": {"$gt": 1}, "$each_n": 3},
    ]}


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({"RS_REPLICATION_1_SRC_BUCKET": ""}, "Replication 'r' has no src bucket"),
        ({"RS_REPLICATION_1_DST_HOST": "nowhere"}, "Invalid destination host 'nowhere'"),
        ({"RS_REPLICATION_1_MODE": "sometimes"}, "Replication 'r' (RS_REPLICATION_1_NAME) is invalid"),
        ({"RS_REPLICATION_1_COMPRESSION": "lz4"}, "Replication 'r' (RS_REPLICATION_1_NAME) is invalid"),
    ],
)
def test_env_group_dropped_with_a_reason(patch: dict[str, str], problem: str) -> None:
    groups = load_env_groups({**GROUP, **patch})
    assert groups.replications == {}
    assert any(problem in p for p in groups.problems), groups.problems


def test_env_when_that_is_not_json_is_reported_and_ignored() -> None:
    groups = load_env_groups({**GROUP, "RS_REPLICATION_1_WHEN": "{oops"})
    assert groups.replications["r"].when is None
    assert any("RS_REPLICATION_1_WHEN is not valid JSON" in p for p in groups.problems)


def test_yaml_section_with_a_token_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "replications:\n"
        "  r:\n"
        "    src_bucket: src\n"
        "    dst_bucket: dst\n"
        "    dst_host: http://central:8383\n"
        "    dst_token: ${TOK}\n"
        "    include: {kind: cam}\n"
    )
    desired = load_desired({"TOK": "secret"}, path)
    settings = desired.replications["r"].to_settings()
    assert settings.dst_token == "secret"
    assert settings.when == {"$and": [{"$has": "kind"}, {"$eq": ["&kind", "cam"]}]}
    assert desired.origin("replication", "r") == f"{path}:2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    dst_bucket: dst\n    dst_host: http://c\n", ":2: replications.r.src_bucket: required"),
        ("    src_bucket: s\n    dst_bucket: d\n    dst_host: bad\n",
         ":2: replications.r: Invalid destination host 'bad'"),
        ("    src_bucket: s\n    dst_bucket: d\n    dst_host: http://c\n    mode: later\n",
         ":6: replications.r.mode:"),
        ("    src_bucket: s\n    dst_bucket: d\n    dst_host: http://c\n    colour: red\n",
         ":6: replications.r.colour: unknown key"),
        ("    src_bucket: s\n    dst_bucket: d\n    dst_host: http://c\n    when: {$bad: 1}\n",
         "Invalid replication condition"),
    ],
)
def test_yaml_errors_name_file_line_and_field(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("replications:\n  r:\n" + body)
    with pytest.raises(ConfigError) as exc:
        load_desired({}, path)
    assert message in str(exc.value)


def test_env_and_yaml_defining_one_task_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("replications:\n  r: {src_bucket: s, dst_bucket: d, dst_host: 'http://c'}\n")
    with pytest.raises(ConfigError, match="replication 'r' is defined by RS_REPLICATION_1_NAME"):
        load_desired(GROUP, path)


def test_provision_validate_covers_replications(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("replications:\n  r: {src_bucket: s, dst_bucket: d, dst_host: 'ftp://c'}\n")
    cmd = [sys.executable, "-m", "appliance", "provision", "validate", str(path)]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Invalid destination host 'ftp://c'" in bad.stderr
    path.write_text("replications:\n  r: {src_bucket: s, dst_bucket: d, dst_host: 'http://c'}\n")
    good = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "1 replications" in good.stdout


async def test_provisioned_task_in_app_409_mode_allowed_kept_on_removal(
    harness_factory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    task = "replications:\n  r: {src_bucket: src, dst_bucket: d, dst_host: 'http://127.0.0.1:9'}\n"
    path.write_text("buckets:\n  src: {}\n" + task)
    h: Harness = await harness_factory(provisioning_path=path)
    c = h.client
    info = (await (await c.get(API + "/replications/r")).get_json())["info"]
    assert info["is_provisioned"] is True
    status = (await (await c.get(API + "/info")).get_json())["provisioning"]
    assert status["replications"] == ["r"] and status["ok"] is True
    body = {"src_bucket": "src", "dst_bucket": "x", "dst_host": "http://127.0.0.1:9"}
    r = await c.put(API + "/replications/r", json=body)
    assert (r.status_code, r.headers["x-reduct-error"]) == (
        409, "Can't update provisioned replication 'r'")
    r = await c.delete(API + "/replications/r")
    assert (r.status_code, r.headers["x-reduct-error"]) == (
        409, "Can't remove provisioned replication 'r'")
    assert (await c.patch(API + "/replications/r/mode", json={"mode": "paused"})).status_code == 200
    # a reload that changes the task updates it, keeping the mode set through the API
    path.write_text("buckets:\n  src: {}\n" + task.replace("d,", "d2,"))
    assert h.services.provisioner is not None
    # (the file watcher may apply it first: only the outcome is checked)
    await h.services.workers.run(h.services.provisioner.reload_once)
    detail = await (await c.get(API + "/replications/r")).get_json()
    assert (detail["settings"]["dst_bucket"], detail["info"]["mode"]) == ("d2", "paused")
    # gone from the YAML: kept (with its backlog), no longer protected
    path.write_text("buckets:\n  src: {}\n")
    await h.services.workers.run(h.services.provisioner.reload_once)
    info = (await (await c.get(API + "/replications/r")).get_json())["info"]
    assert info["is_provisioned"] is False
    assert (await c.delete(API + "/replications/r")).status_code == 200


async def test_provisioned_task_with_a_missing_source_is_an_error_not_fatal(
    harness_factory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "replications:\n  r: {src_bucket: nope, dst_bucket: d, dst_host: 'http://127.0.0.1:9'}\n"
    )
    h: Harness = await harness_factory(provisioning_path=path)
    assert (await h.client.get(API + "/replications/r")).status_code == 404
    assert "Source bucket 'nope' for replication 'r' does not exist" in (
        h.services.provisioning.last_error or "")
