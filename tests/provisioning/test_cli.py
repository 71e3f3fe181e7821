"""``appliance provision schema|validate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.main import main
from provisioning.schema import schema


def test_cli_provision_schema_prints_the_generated_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["provision", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema()


def test_cli_provision_validate_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {}\n  b: {}\ntokens:\n  t: {value: '${T}'}\n")
    monkeypatch.setenv("T", "secret")
    monkeypatch.setenv("RS_BUCKET_X_NAME", "from-env")
    assert main(["provision", "validate", str(path)]) == 0
    assert capsys.readouterr().out == "ok: 3 buckets, 1 tokens\n"


def test_cli_provision_validate_counts_lifecycles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {}\nlifecycles:\n  l: {type: delete, bucket: a, "
                    "older_than: 2d}\n")
    for key, value in {"RS_LIFECYCLE_E_NAME": "e", "RS_LIFECYCLE_E_TYPE": "delete",
                       "RS_LIFECYCLE_E_BUCKET": "a", "RS_LIFECYCLE_E_OLDER_THAN": "1d"}.items():
        monkeypatch.setenv(key, value)
    assert main(["provision", "validate", str(path)]) == 0
    assert capsys.readouterr().out == "ok: 1 buckets, 0 tokens, 2 lifecycles\n"


def test_cli_provision_validate_error_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a:\n    quota_type: fifo\n")
    assert main(["provision", "validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"appliance provision validate: {path}:3: buckets.a.quota_type: "
        "Input should be 'NONE', 'FIFO' or 'HARD' (got 'fifo')\n"
    )


def test_cli_provision_validate_missing_secret_and_ci_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "prov.yaml"
    path.write_text("tokens:\n  t:\n    value: ${NOT_SET_ANYWHERE}\n")
    assert main(["provision", "validate", str(path)]) == 1
    assert "environment variable NOT_SET_ANYWHERE is not set" in capsys.readouterr().err
    assert main(["provision", "validate", "--allow-missing-vars", str(path)]) == 0
    assert capsys.readouterr().out == "ok: 0 buckets, 1 tokens\n"


def test_cli_provision_validate_reports_env_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("")
    monkeypatch.setenv("RS_TOKEN_A_NAME", "a")
    assert main(["provision", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "warning: Token 'a' has no value. Drop it." in captured.err
    assert captured.out == "ok: 0 buckets, 0 tokens\n"


def test_cli_provision_requires_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["provision"])
    assert info.value.code == 2
