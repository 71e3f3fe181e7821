"""Provisioned lifecycle policies: the ``lifecycles:`` YAML section and ``RS_LIFECYCLE_<ID>_*``.

Env groups follow ReductStore (config §4.4): ``_NAME``, ``_TYPE``, ``_BUCKET``, ``_OLDER_THAN``
are required, ``_INTERVAL``, ``_PROCESSING_INTERVAL``, ``_ENTRIES`` (comma list), ``_WHEN``
(JSON) and ``_MODE`` optional. An incomplete group, invalid JSON in ``_WHEN`` or an invalid
value drops the group with a problem line (the instance still starts). In YAML an invalid
policy is an error with file and line, like every other section. Settings are checked by
``appliance.lifecycle.policy`` (the API's rules); whether the bucket exists is checked when
the policy is applied (it may be provisioned in the same file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.errors import ApplianceError
from appliance.lifecycle.policy import LifecyclePolicy, parse_policy

__all__ = ["LIFECYCLE_FIELDS", "LifecycleSpec", "load_lifecycle_env"]

LIFECYCLE_FIELDS = (
    "NAME", "TYPE", "BUCKET", "OLDER_THAN", "INTERVAL", "PROCESSING_INTERVAL", "ENTRIES", "WHEN",
    "MODE",
)
_GROUP = re.compile(r"^RS_LIFECYCLE_(.*)_NAME$")


class LifecycleSpec(BaseModel):
    """A provisioned lifecycle policy (same fields as the API's settings object)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="delete")
    bucket: str
    older_than: str | int = Field(description="duration, at least 1h")
    interval: str | int | None = Field(default=None, description="duration, at least 10m")
    processing_interval: str | int | None = None
    entries: tuple[str, ...] = ()
    when: dict[str, Any] | None = None
    mode: str | None = Field(default=None, description="enabled, disabled or dry_run")

    @model_validator(mode="after")
    def _valid_policy(self) -> LifecycleSpec:
        try:
            self.policy()
        except ApplianceError as exc:
            raise ValueError(exc.message) from None
        return self

    def policy(self) -> LifecyclePolicy:
        """The validated policy (UnprocessableEntity if invalid)."""
        raw = self.model_dump(exclude_none=True)
        raw["entries"] = list(self.entries)
        return parse_policy(raw)


def load_lifecycle_env(
    environ: Mapping[str, str], origins: dict[tuple[str, str], str], problems: list[str]
) -> dict[str, LifecycleSpec]:
    """Every complete, valid ``RS_LIFECYCLE_<ID>_*`` group of ``environ``."""
    found: dict[str, LifecycleSpec] = {}
    for variable in sorted(environ):
        match = _GROUP.match(variable)
        if not match:
            continue
        prefix = f"RS_LIFECYCLE_{match.group(1)}_"
        name = environ[variable].strip()
        missing = [f for f in ("TYPE", "BUCKET", "OLDER_THAN") if not environ.get(prefix + f)]
        if not name or missing:
            what = ", ".join(prefix + f for f in (["NAME"] if not name else []) + missing)
            problems.append(f"{variable}: lifecycle group dropped, {what} not set")
            continue
        values: dict[str, Any] = {
            "type": environ[prefix + "TYPE"].strip().lower(),
            "bucket": environ[prefix + "BUCKET"].strip(),
            "older_than": environ[prefix + "OLDER_THAN"].strip(),
        }
        for key in ("INTERVAL", "PROCESSING_INTERVAL", "MODE"):
            if environ.get(prefix + key):
                values[key.lower()] = environ[prefix + key].strip()
        if environ.get(prefix + "ENTRIES"):
            values["entries"] = [
                e.strip() for e in environ[prefix + "ENTRIES"].split(",") if e.strip()
            ]
        if environ.get(prefix + "WHEN"):
            try:
                values["when"] = json.loads(environ[prefix + "WHEN"])
            except ValueError as exc:
                problems.append(f"{prefix}WHEN: invalid JSON ({exc}); lifecycle '{name}' dropped")
                continue
        try:
            found[name] = LifecycleSpec.model_validate(values)
        except ValueError as exc:
            detail = "; ".join(e["msg"] for e in getattr(exc, "errors", lambda: [])()) or str(exc)
            problems.append(f"{variable}: lifecycle '{name}' dropped: {detail}")
            continue
        origins[("lifecycle", name)] = variable
    return found
