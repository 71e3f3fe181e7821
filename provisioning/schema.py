"""The JSON Schema of the provisioning YAML, generated from the pydantic models.

Generated, never hand-written, so it cannot drift from what the loader accepts; the few rules
pydantic cannot express from a validator function (bucket and token names as mapping keys) are
added here. Editors use it through ``# yaml-language-server: $schema=...`` or their settings;
``appliance provision schema`` prints it.
"""

from __future__ import annotations

import json
from typing import Any

from provisioning.models import _BUCKET_NAME, INIT_TOKEN_NAME, ProvisioningFile

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one provisioning file."""
    result: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT}
    result.update(ProvisioningFile.model_json_schema(mode="validation"))
    properties = result["properties"]
    properties["buckets"]["propertyNames"] = {"pattern": _BUCKET_NAME.pattern}
    properties["tokens"]["propertyNames"] = {"minLength": 1, "not": {"const": INIT_TOKEN_NAME}}
    # The loader reads an empty section (``buckets:``) and a bucket with no settings
    # (``sensor-data:``) as empty; say so, or editors would flag valid files.
    bucket = properties["buckets"]["additionalProperties"]
    properties["buckets"]["additionalProperties"] = {"anyOf": [bucket, {"type": "null"}]}
    for section in ("instance", "buckets", "tokens", "replications"):
        properties[section] = {"anyOf": [properties[section], {"type": "null"}]}
    return result


def render() -> str:
    """The schema as indented JSON text."""
    return json.dumps(schema(), indent=2) + "\n"
