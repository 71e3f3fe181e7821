"""YAML files: substitution, folder merge, and one-line errors with file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from appliance.engine.models import QuotaType
from appliance.errors import ConfigError
from appliance.settings import InstanceRole
from provisioning.yaml_loader import fingerprint, load_yaml, parse_text, substitute

ISSUE_EXAMPLE = """\
instance:
  role: PRIMARY
  lock_file: {ttl: 45s, timeout: 0}
buckets:
  sensor-data: {quota_type: FIFO, quota_size: 10GB, max_block_records: 1024}
tokens:
  ingest: {value: "${INGEST_TOKEN}", full_access: false, write: [sensor-data]}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_text(textwrap.dedent(text), "/etc/app/prov.yaml", environ or {})
    message = str(info.value)
    assert "\n" not in message, "errors are one log line"
    return message


def test_yaml_issue_example_loads_with_typed_values() -> None:
    document, origins = parse_text(ISSUE_EXAMPLE, "prov.yaml", {"INGEST_TOKEN": "s3cret"})
    assert document.instance.role is InstanceRole.PRIMARY
    assert document.instance.lock_file is not None
    assert document.instance.lock_file.ttl == 45.0
    assert document.instance.lock_file.timeout == 0.0
    bucket = document.buckets["sensor-data"]
    assert bucket.quota_type is QuotaType.FIFO
    assert bucket.quota_size == 10_000_000_000
    assert bucket.max_block_records == 1024
    token = document.tokens["ingest"]
    assert token.value.get_secret_value() == "s3cret"
    assert token.write == ("sensor-data",)
    assert origins == {("bucket", "sensor-data"): "prov.yaml:5", ("token", "ingest"): "prov.yaml:7"}


def test_yaml_unknown_key_names_file_line_field_and_allowed_keys() -> None:
    message = error_of(
        """\
        buckets:
          a:
            quota_type: FIFO
            quota_sise: 10GB
        """
    )
    assert message == (
        "/etc/app/prov.yaml:4: buckets.a.quota_sise: unknown key (allowed: quota_type, "
        "quota_size, max_block_size, max_block_records)"
    )


def test_yaml_unknown_top_level_section_is_rejected() -> None:
    message = error_of("bucket:\n  a: {}\n")
    assert message.startswith("/etc/app/prov.yaml:1: bucket: unknown key (allowed: version,")


def test_yaml_wrong_types_are_reported_each_with_its_line() -> None:
    message = error_of(
        """\
        buckets:
          a:
            quota_type: fifo
          b:
            max_block_records: "12"
        tokens:
          t:
            full_access: "true"
            value: x
        """
    )
    assert message == (
        "/etc/app/prov.yaml:3: buckets.a.quota_type: Input should be 'NONE', 'FIFO' or 'HARD' "
        "(got 'fifo'); "
        "/etc/app/prov.yaml:5: buckets.b.max_block_records: Input should be a valid integer "
        "(got '12'); "
        "/etc/app/prov.yaml:8: tokens.t.full_access: Input should be a valid boolean (got 'true')"
    )


def test_yaml_bad_size_and_duration_literals_name_the_accepted_form() -> None:
    message = error_of(
        """\
        instance:
          lock_file:
            ttl: soon
        buckets:
          a: {quota_size: 10XB}
        """
    )
    assert "/etc/app/prov.yaml:3: instance.lock_file.ttl: expected a number of seconds" in message
    assert "(got 'soon')" in message
    assert "/etc/app/prov.yaml:5: buckets.a.quota_size: unknown unit 'XB'" in message


def test_yaml_missing_required_key_points_at_its_parent() -> None:
    message = error_of("tokens:\n  reader:\n    read: [a]\n")
    assert message == "/etc/app/prov.yaml:2: tokens.reader.value: required key is missing"


def test_yaml_invalid_names_and_permissions_are_rejected() -> None:
    message = error_of(
        "buckets:\n  'bad name': {}\ntokens:\n  t:\n    value: v\n    read: [ok, 'a b']\n"
    )
    assert "/etc/app/prov.yaml:2: buckets.bad name: invalid bucket name 'bad name'" in message
    assert "/etc/app/prov.yaml:6: tokens.t.read[1]: invalid permission 'a b'" in message


def test_yaml_syntax_error_has_a_line() -> None:
    message = error_of("buckets:\n  a: {quota_size: 1\n  b: {}\n")
    assert message.startswith("/etc/app/prov.yaml:")
    assert "invalid YAML" in message


def test_yaml_duplicate_key_is_an_error_not_a_silent_override() -> None:
    message = error_of("buckets:\n  a: {}\n  a: {quota_size: 1}\n")
    assert message == "/etc/app/prov.yaml:3: buckets.a: duplicate key (first at line 2)"


def test_yaml_unquoted_reference_in_flow_mapping_gets_a_hint() -> None:
    message = error_of("tokens:\n  t: {value: ${V}}\n", {"V": "x"})
    assert message.startswith("/etc/app/prov.yaml:2: invalid YAML:")
    assert message.endswith('(inside {...} or [...], quote references: "${VAR}")')


def test_yaml_document_must_be_a_mapping() -> None:
    assert error_of("- a\n- b\n") == "/etc/app/prov.yaml:1: the document must be a mapping"


def test_yaml_empty_document_and_empty_sections_are_empty() -> None:
    document, _ = parse_text("", "p.yaml", {})
    assert document.buckets == {} and document.tokens == {}
    document, _ = parse_text("buckets:\n  a:\ntokens:\ninstance:\n", "p.yaml", {})
    assert document.buckets["a"].model_dump(exclude_none=True) == {}


def test_yaml_merge_keys_share_settings() -> None:
    text = """\
    buckets:
      a: &fifo {quota_type: FIFO, quota_size: 1GB}
      b:
        <<: *fifo
        quota_size: 2GB
    """
    document, _ = parse_text(textwrap.dedent(text), "p.yaml", {})
    assert document.buckets["b"].quota_type is QuotaType.FIFO
    assert document.buckets["b"].quota_size == 2_000_000_000


# --- ${VAR} substitution --------------------------------------------------------------------


def test_substitute_forms() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute("${A}", env) == "1"
    assert substitute("x-${A}-${A}", env) == "x-1-1"
    assert substitute("${MISSING:-dflt}", env) == "dflt"
    assert substitute("${EMPTY:-dflt}", env) == "dflt"  # shell semantics: empty uses default
    assert substitute("${A:-dflt}", env) == "1"
    assert substitute("${MISSING:-}", env) == ""
    assert substitute("$${A}", env) == "${A}"
    assert substitute("cost: 5$", env) == "cost: 5$"
    assert substitute("${MISSING}", env, keep_missing=True) == "${MISSING}"


@pytest.mark.parametrize("text", ["${}", "${1A}", "${A:?err}", "${A"])
def test_substitute_rejects_malformed_references(text: str) -> None:
    with pytest.raises(ValueError):
        substitute(text, {"A": "1"})


def test_yaml_missing_variable_without_default_names_it_and_where() -> None:
    message = error_of(ISSUE_EXAMPLE)
    assert message == (
        "/etc/app/prov.yaml:7: tokens.ingest.value: environment variable INGEST_TOKEN is not "
        "set (write ${INGEST_TOKEN:-default} to give a default)"
    )


def test_yaml_plain_substitution_is_typed_and_quoted_stays_a_string() -> None:
    text = """\
    buckets:
      ${SITE}-data:
        quota_size: ${QUOTA}
        max_block_records: ${RECORDS}
    tokens:
      t:
        value: "${NUMERIC_SECRET}"
        full_access: ${FULL}
    """
    env = {
        "SITE": "plant7",
        "QUOTA": "5MB",
        "RECORDS": "64",
        "NUMERIC_SECRET": "12345",
        "FULL": "true",
    }
    document, _ = parse_text(textwrap.dedent(text), "p.yaml", env)
    bucket = document.buckets["plant7-data"]
    assert bucket.quota_size == 5_000_000 and bucket.max_block_records == 64
    token = document.tokens["t"]
    assert token.value.get_secret_value() == "12345" and token.full_access is True


def test_yaml_substituted_value_cannot_inject_structure() -> None:
    document, _ = parse_text(
        "tokens:\n  t:\n    value: ${V}\n", "p.yaml", {"V": "x\n    full_access: true"}
    )
    assert document.tokens["t"].full_access is False
    assert document.tokens["t"].value.get_secret_value() == "x\n    full_access: true"


def test_yaml_errors_never_show_a_secret() -> None:
    message = error_of("tokens:\n  t:\n    value: ${SECRET}\n", {"SECRET": "987654"})
    assert "tokens.t.value" in message and "987654" not in message


# --- files and folders ----------------------------------------------------------------------


def test_load_yaml_single_file(tmp_path: Path) -> None:
    path = write(tmp_path / "prov.yaml", "buckets:\n  a: {}\n")
    loaded = load_yaml(path, {})
    assert list(loaded.document.buckets) == ["a"]
    assert loaded.origins[("bucket", "a")] == f"{path}:2"
    assert loaded.describe() == str(path)


def test_load_yaml_folder_merges_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "prov.d"
    folder.mkdir()
    # Written in reverse order: name order, not creation order, decides.
    write(
        folder / "20-site.yaml",
        """\
        instance:
          role: SECONDARY
          lock_file: {timeout: 0}
        buckets:
          site: {}
        """,
    )
    write(
        folder / "10-base.yaml",
        """\
        instance:
          role: PRIMARY
          lock_file: {ttl: 45s, timeout: 60}
        buckets:
          base: {}
        tokens:
          t: {value: v}
        """,
    )
    write(folder / "notes.txt", "not: [yaml")
    write(folder / ".10-base.yaml.swp", "garbage: [")
    loaded = load_yaml(folder, {})
    instance = loaded.document.instance
    assert instance.role is InstanceRole.SECONDARY
    assert instance.lock_file is not None
    assert (instance.lock_file.ttl, instance.lock_file.timeout) == (45.0, 0.0)
    assert set(loaded.document.buckets) == {"base", "site"}
    assert [p.name for p in loaded.files] == ["10-base.yaml", "20-site.yaml"]
    assert loaded.describe() == f"{folder} (2 files)"


def test_load_yaml_folder_same_bucket_twice_names_both_places(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "buckets:\n  x: {}\n")
    write(tmp_path / "b.yaml", "# second\nbuckets:\n  x: {}\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, {})
    assert str(info.value) == (
        f"bucket 'x' is defined by {tmp_path / 'a.yaml'}:2 and by {tmp_path / 'b.yaml'}:3"
    )


def test_load_yaml_error_in_second_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "buckets:\n  x: {}\n")
    bad = write(tmp_path / "b.yaml", "buckets:\n  y: {quota: 1}\n")
    with pytest.raises(ConfigError, match=f"^{bad}:2: buckets.y.quota: unknown key"):
        load_yaml(tmp_path, {})


def test_load_yaml_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml", {})


def test_fingerprint_changes_with_content_only(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "buckets: {}\n")
    first = fingerprint(path)
    path.write_text("buckets: {}\n")
    assert fingerprint(path) == first
    path.write_text("buckets: {a: {}}\n")
    assert fingerprint(path) != first
    assert fingerprint(tmp_path / "missing.yaml") is None
