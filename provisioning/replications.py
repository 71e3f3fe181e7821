"""Provisioned replication tasks: the ``replications:`` YAML section and the
``RS_REPLICATION_<ID>_*`` env groups (spec reductstore-config §4.3), kept in one module so the
other object kinds stay untouched.

Env groups are read as ReductStore reads them: ``RS_REPLICATION_(.*)_NAME`` finds a group; a
group without ``SRC_BUCKET``, ``DST_BUCKET`` or a valid ``DST_HOST``, or with an invalid ``MODE``
or ``COMPRESSION``, is dropped (reported, never fatal); ``ENTRIES`` is a comma list (no
trimming); ``WHEN`` is JSON (invalid JSON is reported and ignored, as ReductStore ignores it);
the deprecated ``INCLUDE_<label>``, ``EXCLUDE_<label>``, ``EACH_N`` and ``EACH_S`` are folded
into ``when``. The YAML form uses the same field names in lower case, with ``include``/``exclude``
as label maps and ``${VAR}`` for the token. An unset mode keeps the persisted one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from appliance.errors import ApplianceError
from appliance.replication.models import ReplicationSettings

REPLICATION_FIELDS = (
    "NAME", "SRC_BUCKET", "DST_BUCKET", "DST_HOST", "DST_TOKEN", "ENTRIES", "DST_PREFIX", "WHEN",
    "MODE", "COMPRESSION", "EACH_N", "EACH_S",
)
_GROUP = re.compile(r"RS_REPLICATION_(.*)_NAME")
_U64 = re.compile(r"^\+?[0-9]+$")


class ReplicationSpec(BaseModel):
    """A provisioned replication task (YAML ``replications.<name>`` / ``RS_REPLICATION_*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src_bucket: str = Field(description="local bucket to replicate (must exist)")
    dst_bucket: str = Field(description="bucket at the destination (created when missing)")
    dst_host: str = Field(description="destination URL, e.g. http://central:8383")
    dst_token: SecretStr | None = Field(default=None, description="write ${VAR}, not the secret")
    entries: tuple[str, ...] = Field(default=(), description="entry patterns: *, **, !exclude")
    dst_prefix: str = ""
    when: dict[str, Any] | None = Field(default=None, description="condition, as in queries")
    mode: Literal["enabled", "paused", "disabled"] | None = Field(
        default=None, description="unset keeps the persisted mode (enabled for a new task)"
    )
    compression: Literal["none", "gzip", "zstd"] = "none"
    include: dict[str, str] = Field(default_factory=dict, description="deprecated: use when")
    exclude: dict[str, str] = Field(default_factory=dict, description="deprecated: use when")
    each_n: int | None = Field(default=None, ge=0, description="deprecated: $each_n in when")
    each_s: float | None = Field(default=None, ge=0, description="deprecated: $each_t in when")

    @model_validator(mode="after")
    def _valid_settings(self) -> ReplicationSpec:
        try:
            self.to_settings()
        except ApplianceError as exc:
            raise ValueError(exc.message) from None
        return self

    def to_settings(self) -> ReplicationSettings:
        """The task settings this spec declares (legacy filters folded into ``when``)."""
        data = self.model_dump(exclude={"dst_token", "mode"})
        data["dst_token"] = self.dst_token.get_secret_value() if self.dst_token else None
        data["entries"] = list(self.entries)
        data["mode"] = self.mode or "enabled"
        return ReplicationSettings.from_json(data)


class ReplicationProvisioner(Protocol):
    """What reconcile needs from the replication manager."""

    def provision_replications(
        self, desired: Mapping[str, tuple[ReplicationSettings, bool]], origins: Mapping[str, str]
    ) -> Any:
        """Create/update the tasks of ``desired`` (settings, mode given) and mark them; unmark
        the others. Returns an object with created/updated/unchanged/unprovisioned/errors."""


def desired_tasks(
    specs: Mapping[str, ReplicationSpec],
) -> dict[str, tuple[ReplicationSettings, bool]]:
    """``name -> (settings, mode given)`` for the manager."""
    return {name: (spec.to_settings(), spec.mode is not None) for name, spec in specs.items()}


@dataclass
class EnvReplications:
    """Tasks declared by ``RS_REPLICATION_*`` groups, where each came from, what was dropped."""

    specs: dict[str, ReplicationSpec] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_env_replications(environ: Mapping[str, str]) -> EnvReplications:
    """Every ``RS_REPLICATION_<ID>_*`` group of ``environ``."""
    out = EnvReplications()
    groups = sorted(
        (m.group(1), variable, environ[variable])
        for variable in environ
        if (m := _GROUP.search(variable))
    )
    for group_id, variable, name in groups:
        prefix = f"RS_REPLICATION_{group_id}_"
        if not name:
            out.problems.append(f"{variable} is empty: replication group skipped")
            continue
        if name in out.specs:
            out.problems.append(
                f"{variable}: replication '{name}' is already defined by {out.origins[name]}; "
                "this group is skipped"
            )
            continue
        spec = _env_spec(environ, prefix, name, out.problems)
        if spec is not None:
            out.specs[name] = spec
            out.origins[name] = variable
    return out


def _env_spec(
    environ: Mapping[str, str], prefix: str, name: str, problems: list[str]
) -> ReplicationSpec | None:
    def get(suffix: str) -> str | None:
        return environ.get(prefix + suffix)

    for required in ("SRC_BUCKET", "DST_BUCKET", "DST_HOST"):
        if not get(required):
            problems.append(
                f"Replication '{name}' has no {required.lower().replace('_', ' ')} "
                f"({prefix}{required}). Drop it."
            )
            return None
    data: dict[str, Any] = {
        "src_bucket": get("SRC_BUCKET"),
        "dst_bucket": get("DST_BUCKET"),
        "dst_host": get("DST_HOST"),
        "dst_token": get("DST_TOKEN") or None,
        "entries": [e for e in (get("ENTRIES") or "").split(",") if e],
        "dst_prefix": get("DST_PREFIX") or "",
    }
    for key in ("MODE", "COMPRESSION"):
        raw = get(key)
        if raw is not None:
            data[key.lower()] = raw.lower()
    when = get("WHEN")
    if when:
        try:
            data["when"] = json.loads(when)
        except ValueError:
            problems.append(f"{prefix}WHEN is not valid JSON: ignored")
    each_n, each_s = get("EACH_N"), get("EACH_S")
    if each_n is not None:
        if _U64.match(each_n):
            data["each_n"] = int(each_n)
        else:
            problems.append(f"{prefix}EACH_N={each_n!r} is invalid (expected a whole number)")
    if each_s is not None:
        try:
            data["each_s"] = float(each_s)
        except ValueError:
            problems.append(f"{prefix}EACH_S={each_s!r} is invalid (expected seconds)")
    for kind in ("INCLUDE", "EXCLUDE"):
        marker = f"{prefix}{kind}_"
        labels = {v[len(marker) :]: environ[v] for v in sorted(environ) if v.startswith(marker)}
        if labels:
            data[kind.lower()] = labels
    try:
        return ReplicationSpec.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        reasons = "; ".join(
            str(e["msg"]).removeprefix("Value error, ") for e in getattr(exc, "errors", list)()
        ) or str(exc)
        problems.append(f"Replication '{name}' ({prefix}NAME) is invalid: {reasons}. Drop it.")
        return None
