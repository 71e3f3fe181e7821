"""The JSON Schema comes from the models; every example file validates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from appliance.units import parse_duration, parse_size
from provisioning.merge import load_desired
from provisioning.models import DURATION_PATTERN, SIZE_PATTERN
from provisioning.schema import render, schema

EXAMPLES = Path(__file__).resolve().parents[2] / "provisioning" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
SECRETS = {"INGEST_TOKEN": "i", "DASHBOARD_TOKEN": "d", "READER_TOKEN": "r", "CENTRAL_TOKEN": "c"}


def test_schema_is_json_with_every_section() -> None:
    document = json.loads(render())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(document["properties"]) == {
        "version", "instance", "buckets", "tokens", "replications", "lifecycles"}
    assert document["additionalProperties"] is False
    bucket = document["$defs"]["BucketSpec"]
    assert bucket["additionalProperties"] is False
    assert set(bucket["properties"]) == {
        "quota_type",
        "quota_size",
        "max_block_size",
        "max_block_records",
    }
    assert document["$defs"]["TokenSpec"]["required"] == ["value"]


@pytest.mark.parametrize(
    "literal", ["0", "1048576", "10GB", "64MB", "64mb", "1.5KiB", "4 MiB", "1k", "7B", "2TB"]
)
def test_schema_size_pattern_matches_what_the_loader_accepts(literal: str) -> None:
    assert re.match(SIZE_PATTERN, literal)
    parse_size(literal)


@pytest.mark.parametrize("literal", ["10XB", "ten", "-1", "1 G B"])
def test_schema_size_pattern_rejects_what_the_loader_rejects(literal: str) -> None:
    assert not re.match(SIZE_PATTERN, literal)
    with pytest.raises(ValueError):
        parse_size(literal)


@pytest.mark.parametrize("literal", ["0", "30", "45s", "500ms", "250us", "5m", "2min", "1h", "1d"])
def test_schema_duration_pattern_matches_what_the_loader_accepts(literal: str) -> None:
    assert re.match(DURATION_PATTERN, literal)
    parse_duration(literal)


def test_examples_cover_edge_standby_pair_and_replica() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {
        "edge-device.yaml",
        "hot-standby-primary.yaml",
        "hot-standby-secondary.yaml",
        "replica.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    desired = load_desired(SECRETS, path)
    assert desired.warnings == ()
    assert desired.instance.role is not None
    # Without the secrets it still validates in CI mode (--allow-missing-vars).
    load_desired({}, path, keep_missing_vars=True)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates_against_the_json_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema()).validate(yaml.safe_load(path.read_text()))


def test_json_schema_rejects_an_unknown_key() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema())
    assert not validator.is_valid({"buckets": {"a": {"quota_sise": 1}}})
    assert not validator.is_valid({"buckets": {"bad name": {}}})
    assert validator.is_valid({"buckets": {"a": None}, "tokens": None})


def test_hot_standby_pair_differs_only_in_role_and_comments() -> None:
    primary = load_desired(SECRETS, EXAMPLES / "hot-standby-primary.yaml")
    secondary = load_desired(SECRETS, EXAMPLES / "hot-standby-secondary.yaml")
    assert primary.buckets == secondary.buckets
    assert primary.tokens == secondary.tokens
    assert primary.instance.model_copy(update={"role": None}) == secondary.instance.model_copy(
        update={"role": None}
    )
