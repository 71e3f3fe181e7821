"""ReductStore's provisioning env groups: ``RS_BUCKET_<ID>_*`` and ``RS_TOKEN_<ID>_*``.

Read exactly as ReductStore reads them (spec reductstore-config §1, §4.1, §4.2):

- groups are found by an unanchored, greedy, case-sensitive regex over every variable name
  (``RS_BUCKET_(.*)_NAME``); the captured text is the ``<ID>``; the other fields are read by
  their exact names ``RS_BUCKET_<ID>_QUOTA_TYPE`` etc.;
- nothing here is fatal: an unparsable value is treated as unset, an incomplete group (a token
  without ``_VALUE``, fields without ``_NAME``) is skipped, and each case is reported;
- ``QUOTA_TYPE`` is ``NONE|FIFO|HARD`` (case-sensitive), sizes use ``appliance.units`` (as
  the RS_* settings do; a size that is not a whole number of bytes is invalid, not truncated),
  ``MAX_BLOCK_RECORDS`` is a plain decimal, ``FULL_ACCESS`` is strictly ``true``/``false``,
  ``READ``/``WRITE`` are comma lists with empty items dropped and no trimming, ``EXPIRES_AT`` is
  RFC 3339 with an offset.

Where ReductStore is silent we report instead of guessing silently: two IDs with the same NAME
(ReductStore keeps one at random; we keep the first ID in sorted order and say so) and an object
that fails validation (bad bucket name, bad permission item: ReductStore logs the create error).
``RS_REPLICATION_*`` groups are read by ``provisioning.replications`` and ``RS_LIFECYCLE_*``
groups by ``provisioning.lifecycles``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from appliance.engine.models import QuotaType
from appliance.units import SIZE_FORM, parse_size
from provisioning.lifecycles import LifecycleSpec, load_lifecycle_env
from provisioning.models import BucketSpec, TokenSpec, check_bucket_name, check_token_name
from provisioning.replications import (
    REPLICATION_FIELDS,
    ReplicationSpec,
    load_env_replications,
)

BUCKET_FIELDS = ("NAME", "QUOTA_TYPE", "QUOTA_SIZE", "MAX_BLOCK_SIZE", "MAX_BLOCK_RECORDS")
TOKEN_FIELDS = ("NAME", "VALUE", "FULL_ACCESS", "READ", "WRITE", "EXPIRES_AT")
_BUCKET_GROUP = re.compile(r"RS_BUCKET_(.*)_NAME")
_TOKEN_GROUP = re.compile(r"RS_TOKEN_(.*)_NAME")
_U64 = re.compile(r"^\+?[0-9]+$")  # Rust's u64::from_str
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_QUOTA_TYPES = {q.value: q for q in QuotaType}


@dataclass(frozen=True)
class EnvGroups:
    """Buckets and tokens declared by env groups, where each came from, and what was skipped."""

    buckets: Mapping[str, BucketSpec] = field(default_factory=dict)
    tokens: Mapping[str, TokenSpec] = field(default_factory=dict)
    origins: Mapping[tuple[str, str], str] = field(default_factory=dict)  # -> "RS_..._NAME"
    problems: tuple[str, ...] = ()
    replications: Mapping[str, ReplicationSpec] = field(default_factory=dict)
    lifecycles: Mapping[str, LifecycleSpec] = field(default_factory=dict)  # provisioning.lifecycles

    @property
    def group_count(self) -> int:
        """How many groups were accepted."""
        return len(self.buckets) + len(self.tokens) + len(self.replications) + len(self.lifecycles)


def load_env_groups(environ: Mapping[str, str]) -> EnvGroups:
    """Every ``RS_BUCKET_<ID>_*`` and ``RS_TOKEN_<ID>_*`` group of ``environ``."""
    problems: list[str] = []
    origins: dict[tuple[str, str], str] = {}
    buckets = _buckets(environ, origins, problems)
    tokens = _tokens(environ, origins, problems)
    problems += _orphans(environ, "RS_BUCKET_", BUCKET_FIELDS, _BUCKET_GROUP)
    problems += _orphans(environ, "RS_TOKEN_", TOKEN_FIELDS, _TOKEN_GROUP)
    replications = load_env_replications(environ)
    problems += replications.problems
    problems += _orphans(
        environ, "RS_REPLICATION_", REPLICATION_FIELDS, re.compile(r"RS_REPLICATION_(.*)_NAME")
    )
    for name, variable in replications.origins.items():
        origins[("replication", name)] = variable
    lifecycles = load_lifecycle_env(environ, origins, problems)
    return EnvGroups(
        buckets, tokens, origins, tuple(problems), replications=replications.specs,
        lifecycles=lifecycles,
    )


def _groups(environ: Mapping[str, str], pattern: re.Pattern[str]) -> list[tuple[str, str, str]]:
    """``(id, variable, name)`` for each variable the group regex finds, sorted by id."""
    found = []
    for variable in environ:
        match = pattern.search(variable)
        if match:
            found.append((match.group(1), variable, environ[variable]))
    return sorted(found)


def _buckets(
    environ: Mapping[str, str], origins: dict[tuple[str, str], str], problems: list[str]
) -> dict[str, BucketSpec]:
    buckets: dict[str, BucketSpec] = {}
    for group_id, variable, name in _groups(environ, _BUCKET_GROUP):
        if not name:
            problems.append(f"{variable} is empty: bucket group skipped")
            continue
        if name in buckets:
            problems.append(
                f"{variable}: bucket '{name}' is already defined by "
                f"{origins[('bucket', name)]}; this group is ignored"
            )
            continue
        if not _valid_name(check_bucket_name, name, variable, problems):
            continue
        prefix = f"RS_BUCKET_{group_id}_"
        values: dict[str, Any] = {
            "quota_type": _quota_type(environ, prefix + "QUOTA_TYPE", problems),
            "quota_size": _size(environ, prefix + "QUOTA_SIZE", problems),
            "max_block_size": _size(environ, prefix + "MAX_BLOCK_SIZE", problems),
            "max_block_records": _u64(environ, prefix + "MAX_BLOCK_RECORDS", problems),
        }
        spec = _validated(BucketSpec, values, variable, f"bucket '{name}'", problems)
        if spec is not None:
            buckets[name] = spec
            origins[("bucket", name)] = variable
    return buckets


def _tokens(
    environ: Mapping[str, str], origins: dict[tuple[str, str], str], problems: list[str]
) -> dict[str, TokenSpec]:
    tokens: dict[str, TokenSpec] = {}
    for group_id, variable, name in _groups(environ, _TOKEN_GROUP):
        prefix = f"RS_TOKEN_{group_id}_"
        value = environ.get(prefix + "VALUE", "")
        if not value:
            # ReductStore's words (cfg/provision/token.rs), so operators can grep for them.
            problems.append(f"Token '{name}' has no value. Drop it. ({prefix}VALUE is not set)")
            continue
        if not _valid_name(check_token_name, name, variable, problems):
            continue
        if name in tokens:
            problems.append(
                f"{variable}: token '{name}' is already defined by "
                f"{origins[('token', name)]}; this group is ignored"
            )
            continue
        values: dict[str, Any] = {
            "value": value,
            "full_access": _strict_bool(environ, prefix + "FULL_ACCESS", problems),
            "read": _list(environ, prefix + "READ"),
            "write": _list(environ, prefix + "WRITE"),
            "expires_at": _expires_at(environ, prefix + "EXPIRES_AT", name, problems),
        }
        spec = _validated(TokenSpec, values, variable, f"token '{name}'", problems)
        if spec is not None:
            tokens[name] = spec
            origins[("token", name)] = variable
    return tokens


def _valid_name(check: Callable[[str], str], name: str, variable: str, problems: list[str]) -> bool:
    try:
        check(name)
    except ValueError as exc:
        problems.append(f"{variable}: {exc}: group skipped")
        return False
    return True


def _validated(
    model: type[BucketSpec] | type[TokenSpec],
    values: dict[str, Any],
    variable: str,
    what: str,
    problems: list[str],
) -> Any:
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        problems.append(f"{variable}: {what} is invalid ({reasons}): group skipped")
        return None


def _quota_type(environ: Mapping[str, str], variable: str, problems: list[str]) -> Any:
    raw = environ.get(variable)
    if raw is None:
        return None
    if raw not in _QUOTA_TYPES:
        problems.append(f"{variable}={raw!r} is invalid (expected NONE, FIFO or HARD): unset")
        return None
    return _QUOTA_TYPES[raw]


def _size(environ: Mapping[str, str], variable: str, problems: list[str]) -> int | None:
    raw = environ.get(variable)
    if raw is None:
        return None
    try:
        if raw != raw.lstrip():
            raise ValueError("leading whitespace")
        return parse_size(raw)
    except ValueError:
        problems.append(f"{variable}={raw!r} is invalid (expected {SIZE_FORM}): unset")
        return None


def _u64(environ: Mapping[str, str], variable: str, problems: list[str]) -> int | None:
    raw = environ.get(variable)
    if raw is None:
        return None
    if not _U64.match(raw) or int(raw) >= 2**64:
        problems.append(f"{variable}={raw!r} is invalid (expected a whole number): unset")
        return None
    return int(raw)


def _strict_bool(environ: Mapping[str, str], variable: str, problems: list[str]) -> bool:
    raw = environ.get(variable)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        problems.append(f"{variable}={raw!r} is invalid (expected true or false): false")
        return False
    return raw == "true"


def _list(environ: Mapping[str, str], variable: str) -> list[str]:
    return [item for item in environ.get(variable, "").split(",") if item]


def _expires_at(
    environ: Mapping[str, str], variable: str, name: str, problems: list[str]
) -> datetime | None:
    raw = environ.get(variable)
    if raw is None:
        return None
    try:
        if not _RFC3339.match(raw):
            raise ValueError(raw)
        return datetime.fromisoformat(raw.replace("z", "Z").replace("t", "T", 1))
    except ValueError:
        problems.append(f"Token '{name}' has invalid expiry date {raw!r}. Ignore it. ({variable})")
        return None


def _orphans(
    environ: Mapping[str, str], prefix: str, fields: tuple[str, ...], group: re.Pattern[str]
) -> list[str]:
    """Variables that look like a group field but belong to no group with a ``_NAME``."""
    ids = {match.group(1) for v in environ if (match := group.search(v))}
    found = []
    for variable in sorted(environ):
        if not variable.startswith(prefix):
            continue
        rest = variable[len(prefix) :]
        for suffix in fields[1:]:
            if rest.endswith("_" + suffix) and rest[: -len(suffix) - 1] not in ids:
                group_id = rest[: -len(suffix) - 1]
                found.append(
                    f"{variable} is set but {prefix}{group_id}_NAME is not: incomplete group "
                    "ignored"
                )
                break
    return found
