"""The settings of one lifecycle policy: parsed from the API's JSON, env groups or YAML.

Rules follow ReductStore 1.21 (spec §10, config §4.4): ``type`` ``delete`` (``compress`` is
refused: this server does not recompress stored records), ``bucket`` must exist, ``older_than``
at least 1 h, ``interval`` at least 10 min (default ``3600s``; an explicit JSON ``null`` is 422
as in ReductStore), ``processing_interval`` > 0 (unset: 24 × interval) is the span of record
time one run looks at, ``when`` is a query condition (``#ext`` refused), ``mode`` one of
``enabled``/``disabled``/``dry_run``. Durations keep the text they were given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import UnprocessableEntity
from appliance.query.values import parse_duration_literal

__all__ = ["MODES", "LifecyclePolicy", "parse_mode", "parse_policy"]

MODES = ("enabled", "disabled", "dry_run")
US_PER_SECOND = 1_000_000
MIN_OLDER_THAN_US = 3600 * US_PER_SECOND
MIN_INTERVAL_US = 600 * US_PER_SECOND
DEFAULT_INTERVAL = "3600s"


@dataclass(frozen=True)
class LifecyclePolicy:
    """One validated lifecycle policy (what ``GET /lifecycles/{name}`` shows as settings)."""

    bucket: str
    older_than: str
    type: str = "delete"
    entries: tuple[str, ...] = ()
    interval: str = DEFAULT_INTERVAL
    processing_interval: str | None = None
    when: Mapping[str, Any] | None = None
    mode: str = "enabled"

    @property
    def older_than_us(self) -> int:
        """``older_than`` in µs."""
        return _us(self.older_than)

    @property
    def interval_seconds(self) -> float:
        """Seconds between two runs."""
        return _us(self.interval) / US_PER_SECOND

    @property
    def processing_us(self) -> int:
        """Span of record time one run processes (default 24 × interval)."""
        if self.processing_interval is None:
            return 24 * _us(self.interval)
        return _us(self.processing_interval)

    def with_mode(self, mode: str) -> LifecyclePolicy:
        """The same policy in another mode."""
        return replace(self, mode=parse_mode(mode))

    def to_json(self) -> dict[str, Any]:
        """ReductStore's settings object."""
        return {
            "type": self.type,
            "bucket": self.bucket,
            "entries": list(self.entries),
            "older_than": self.older_than,
            "interval": self.interval,
            "processing_interval": self.processing_interval,
            "when": None if self.when is None else dict(self.when),
            "mode": self.mode,
        }


def _us(text: str) -> int:
    value = parse_duration_literal(text)
    assert value is not None  # validated by parse_policy
    return int(value)


def _duration(obj: Mapping[str, Any], key: str, minimum_us: int, label: str) -> str:
    raw = obj.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = f"{raw}s"  # a bare number of seconds, as env values often are
    if not isinstance(raw, str):
        raise UnprocessableEntity(f"Invalid JSON: '{key}' must be a duration string like '1h'")
    value = parse_duration_literal(raw.strip())
    if value is None:
        raise UnprocessableEntity(f"Invalid duration '{raw}' in '{key}'")
    if int(value) < minimum_us:
        raise UnprocessableEntity(f"'{key}' must be at least {label}")
    return raw.strip()


def parse_mode(value: Any) -> str:
    """A valid mode or 422."""
    if value not in MODES:
        raise UnprocessableEntity(
            f"Invalid JSON: unknown variant `{value}`, expected one of `enabled`, `disabled`, "
            "`dry_run`"
        )
    return str(value)


def parse_policy(obj: Any) -> LifecyclePolicy:
    """Validate a settings object (API JSON, env group or YAML as a dict); 422 if invalid."""
    if not isinstance(obj, Mapping):
        raise UnprocessableEntity("Invalid JSON: expected a lifecycle settings object")
    kind = obj.get("type")
    if kind is None:
        raise UnprocessableEntity("Invalid JSON: missing field `type`")
    kind = str(kind).lower()
    if kind == "compress":
        raise UnprocessableEntity(
            "Lifecycle type 'compress' is not supported by this server; use 'delete'"
        )
    if kind != "delete":
        raise UnprocessableEntity(
            f"Invalid JSON: unknown variant `{kind}`, expected `delete` or `compress`"
        )
    bucket = obj.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise UnprocessableEntity("Invalid JSON: missing field `bucket`")
    if "older_than" not in obj or obj["older_than"] is None:
        raise UnprocessableEntity("Invalid JSON: missing field `older_than`")
    older_than = _duration(obj, "older_than", MIN_OLDER_THAN_US, "1h")
    if "interval" in obj and obj["interval"] is None:
        raise UnprocessableEntity("Invalid JSON: 'interval' must be a duration string, not null")
    interval = DEFAULT_INTERVAL
    if "interval" in obj:
        interval = _duration(obj, "interval", MIN_INTERVAL_US, "10m")
    processing = None
    if obj.get("processing_interval") is not None:
        processing = _duration(obj, "processing_interval", 1, "1us")
    entries = obj.get("entries") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UnprocessableEntity("Invalid JSON: 'entries' must be a list of entry names")
    when = obj.get("when")
    if when is not None:
        _check_when(when)
    mode = parse_mode(obj.get("mode") or "enabled")
    return LifecyclePolicy(
        bucket=bucket,
        older_than=older_than,
        type=kind,
        entries=tuple(entries),
        interval=interval,
        processing_interval=processing,
        when=when,
        mode=mode,
    )


def _check_when(when: Any) -> None:
    from appliance.query.condition import compile_when

    if not isinstance(when, dict):
        raise UnprocessableEntity("Invalid JSON: 'when' must be an object")
    if "#ext" in when:
        raise UnprocessableEntity("Extensions ('#ext') are not allowed in a lifecycle condition")
    compile_when(when)  # 422 with the query language's message if invalid
