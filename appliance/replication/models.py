"""Replication task settings: ReductStore 1.21's JSON, validation, and the legacy translation.

``ReplicationSettings`` is what the API, the provisioning and the ``.replications`` file share.
The legacy keys ReductStore's docs still show (``include``/``exclude`` label maps, ``each_n``,
``each_s``) are accepted and folded into ``when`` exactly as ReductStore migrates its own stored
tasks (spec replication §1.6 point 5), so a GET shows only the 1.21 form.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from appliance.engine.names import validate_bucket_name
from appliance.errors import UnprocessableEntity
from appliance.query.condition import compile_when
from appliance.query.values import parse_label_value

LEGACY_KEYS = ("include", "exclude", "each_n", "each_s")


class Mode(enum.StrEnum):
    """What a task does with new records: send them, log them only, or ignore them."""

    ENABLED = "enabled"
    PAUSED = "paused"
    DISABLED = "disabled"


class Compression(enum.StrEnum):
    """The ``Content-Encoding`` of batch bodies sent to the destination."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def _enum(kind: type[enum.StrEnum], value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return kind(value.lower())
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in kind)
    raise UnprocessableEntity(f"Invalid JSON: {what} must be one of {allowed}, got {value!r}")


def parse_mode(value: Any) -> Mode:
    """``enabled``/``paused``/``disabled`` (any case); 422 otherwise."""
    return _enum(Mode, value, "mode")  # type: ignore[no-any-return]


def parse_compression(value: Any) -> Compression:
    """``none``/``gzip``/``zstd`` (any case); 422 otherwise."""
    return _enum(Compression, value, "compression")  # type: ignore[no-any-return]


def normalise_host(value: Any) -> str:
    """An absolute http(s) URL ending in ``/`` (so a path prefix works); 422 otherwise."""
    if not isinstance(value, str):
        raise UnprocessableEntity(f"Invalid destination host '{value}'")
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise UnprocessableEntity(f"Invalid destination host '{value}'") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise UnprocessableEntity(f"Invalid destination host '{value}'")
    del port
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def host_port(host: str) -> tuple[str, int]:
    """The host name and the port (or the scheme's default) of a normalised URL."""
    parts = urlsplit(host)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


def _typed(value: str) -> Any:
    """The literal a stored label ``value`` compares equal to.

    Labels are typed when a condition reads them (``"4"`` is the number 4, and a number never
    equals a string), so ``include: {n: "4"}`` becomes ``$eq [&n, 4]``. ReductStore emits the
    string and such a filter then never matches; old scripts must keep working here.
    """
    return parse_label_value(value)


def legacy_when(
    when: Mapping[str, Any] | None,
    include: Mapping[str, str] | None = None,
    exclude: Mapping[str, str] | None = None,
    each_n: int | None = None,
    each_s: float | None = None,
) -> dict[str, Any] | None:
    """``when`` with the legacy filters folded in, as ReductStore migrates them."""
    result: dict[str, Any] | None = dict(when) if when is not None else None
    if each_s:
        result = {**(result or {}), "$each_t": each_s}
    if each_n:
        result = {**(result or {}), "$each_n": each_n}
    conditions: list[Any] = [
        {"$and": [{"$has": k}, {"$eq": [f"&{k}", _typed(v)]}]} for k, v in (include or {}).items()
    ]
    excludes = [
        {"$or": [{"$not": [{"$has": k}]}, {"$ne": [f"&{k}", _typed(v)]}]}
        for k, v in (exclude or {}).items()
    ]
    if excludes:
        # A record is dropped only when *every* exclude label matches (ReductStore).
        conditions.append(excludes[0] if len(excludes) == 1 else {"$or": excludes})
    if not conditions:
        return result
    label_cond = conditions[0] if len(conditions) == 1 else {"$and": conditions}
    if result:
        return {"$and": [label_cond, result]}
    return label_cond


def _labels_map(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()
    ):
        raise UnprocessableEntity(f"Invalid JSON: '{key}' must be an object of label values")
    return {k: str(v) for k, v in value.items()}


def _number(value: Any, key: str, *, integer: bool) -> Any:
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < 0 or not math.isfinite(value):
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise UnprocessableEntity(f"Invalid JSON: '{key}' must be {kind}")
    return value


def check_when(when: Any) -> dict[str, Any] | None:
    """Validate a ``when`` object (strict mode); 422 ``Invalid replication condition``."""
    if when is None:
        return None
    if not isinstance(when, Mapping):
        raise UnprocessableEntity("Invalid replication condition: must be a JSON object")
    try:
        compile_when(when, strict=True)
    except UnprocessableEntity as exc:
        raise UnprocessableEntity(f"Invalid replication condition: {exc.message}") from None
    return dict(when)


@dataclass(frozen=True)
class ReplicationSettings:
    """One task's settings (``dst_token`` is kept here but never shown by ``to_json``)."""

    src_bucket: str
    dst_bucket: str
    dst_host: str
    dst_token: str | None = None
    entries: tuple[str, ...] = ()
    dst_prefix: str = ""
    when: dict[str, Any] | None = None
    mode: Mode = Mode.ENABLED
    compression: Compression = Compression.NONE

    @classmethod
    def from_json(cls, data: Any) -> ReplicationSettings:
        """Parse and validate ReductStore's settings JSON (legacy keys translated); 422."""
        if not isinstance(data, Mapping):
            raise UnprocessableEntity("Invalid JSON: expected an object")
        missing = [k for k in ("src_bucket", "dst_bucket", "dst_host") if data.get(k) is None]
        if missing:
            raise UnprocessableEntity(f"Invalid JSON: missing field `{missing[0]}`")
        for key in ("src_bucket", "dst_bucket"):
            if not isinstance(data[key], str) or not data[key]:
                raise UnprocessableEntity(f"Invalid JSON: '{key}' must be a non-empty string")
        try:
            validate_bucket_name(data["dst_bucket"])  # the destination would refuse it forever
        except UnprocessableEntity as exc:
            raise UnprocessableEntity(f"Invalid destination bucket: {exc.message}") from None
        entries = data.get("entries") or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UnprocessableEntity("Invalid JSON: 'entries' must be a list of strings")
        token = data.get("dst_token")
        if token is not None and not isinstance(token, str):
            raise UnprocessableEntity("Invalid JSON: 'dst_token' must be a string")
        prefix = data.get("dst_prefix") or ""
        if not isinstance(prefix, str):
            raise UnprocessableEntity("Invalid JSON: 'dst_prefix' must be a string")
        when = data.get("when")
        if when is not None and not isinstance(when, Mapping):
            raise UnprocessableEntity("Invalid replication condition: must be a JSON object")
        when = legacy_when(
            when,
            include=_labels_map(data.get("include"), "include"),
            exclude=_labels_map(data.get("exclude"), "exclude"),
            each_n=_number(data.get("each_n"), "each_n", integer=True),
            each_s=_number(data.get("each_s"), "each_s", integer=False),
        )
        return cls(
            src_bucket=data["src_bucket"],
            dst_bucket=data["dst_bucket"],
            dst_host=normalise_host(data["dst_host"]),
            dst_token=token or None,
            entries=tuple(entries),
            dst_prefix=prefix,
            when=check_when(when),
            mode=parse_mode(data.get("mode", "enabled")),
            compression=parse_compression(data.get("compression", "none")),
        )

    def to_json(self, *, with_token: bool = False) -> dict[str, Any]:
        """ReductStore's settings object; ``dst_token`` is null unless ``with_token``."""
        return {
            "src_bucket": self.src_bucket,
            "dst_bucket": self.dst_bucket,
            "dst_host": self.dst_host,
            "dst_token": self.dst_token if with_token else None,
            "entries": list(self.entries),
            "dst_prefix": self.dst_prefix,
            "when": self.when,
            "mode": self.mode.value,
            "compression": self.compression.value,
        }

    def with_mode(self, mode: Mode) -> ReplicationSettings:
        """A copy with another mode."""
        return replace(self, mode=mode)

    def keeping_token(self, old: ReplicationSettings) -> ReplicationSettings:
        """This update with the old token when it sends none (ReductStore's PUT rule)."""
        return self if self.dst_token is not None else replace(self, dst_token=old.dst_token)

    def dst_entry(self, entry: str) -> str:
        """The destination entry name: ``prefix/entry`` (the entry as is without a prefix)."""
        prefix = self.dst_prefix.strip("/")
        return f"{prefix}/{entry.lstrip('/')}" if prefix else entry
