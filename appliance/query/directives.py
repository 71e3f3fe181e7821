"""Directives of a ``when`` object: the top-level ``#``-keys that tune a query, not filter it.

``#ctx_before`` / ``#ctx_after`` (records or a duration of context around matches),
``#select_labels`` (labels kept in the output), ``#ext`` (extension pipeline, stored raw) and the
batching overrides ``#batch_size``, ``#batch_records``, ``#batch_metadata_size``,
``#batch_timeout``, ``#record_timeout``, ``#io_timeout`` (spec §5.5, limits of §7.1). Numbers
are seconds / bytes / records; strings are durations (``"5s"``) or byte sizes (``"8MB"``).
Unknown directives and null values are 422, as in ReductStore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import UnprocessableEntity
from appliance.query.values import parse_duration_literal
from appliance.units import US_PER_SECOND, parse_duration, parse_size

__all__ = ["DIRECTIVE_NAMES", "Directives", "Window", "parse_directives"]

DIRECTIVE_NAMES = (
    "#ctx_before",
    "#ctx_after",
    "#select_labels",
    "#ext",
    "#batch_size",
    "#batch_records",
    "#batch_metadata_size",
    "#batch_timeout",
    "#record_timeout",
    "#io_timeout",
)


@dataclass(frozen=True, slots=True)
class Window:
    """Context around a match: a number of records or a span of time (exactly one is set)."""

    records: int | None = None
    duration_us: int | None = None


@dataclass(frozen=True, slots=True)
class Directives:
    """The parsed ``#``-keys of one query; ``None`` means "not given, use the default"."""

    ctx_before: Window | None = None
    ctx_after: Window | None = None
    select_labels: tuple[str, ...] | None = None
    ext: Any = None
    batch_size: int | None = None
    batch_records: int | None = None
    batch_metadata_size: int | None = None
    batch_timeout_seconds: float | None = None
    record_timeout_seconds: float | None = None
    io_timeout_seconds: float | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _single(key: str, value: Any) -> Any:
    # ReductStore keeps every directive as a list of values; one-element lists mean the same.
    if isinstance(value, list):
        if len(value) != 1:
            raise UnprocessableEntity(f"Directive '{key}' must have exactly one value")
        return value[0]
    return value


def _window(key: str, value: Any) -> Window:
    value = _single(key, value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Window(records=value)
    if isinstance(value, str):
        span = parse_duration_literal(value)
        if span is not None and span >= 0:
            return Window(duration_us=int(span))
    raise UnprocessableEntity(f"Directive '{key}' must be a number of records or a duration")


def _labels(key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise UnprocessableEntity(f"Directive '{key}' must be a list of label names")
    return tuple(items)


def _bytes(key: str, value: Any) -> int:
    value = _single(key, value)
    try:
        if isinstance(value, str) or _is_number(value):
            return parse_size(value)
    except ValueError:
        pass
    raise UnprocessableEntity(f"Directive '{key}' must be a number of bytes or a size")


def _count(key: str, value: Any) -> int:
    value = _single(key, value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise UnprocessableEntity(f"Directive '{key}' must be a number of records")


def _seconds(key: str, value: Any) -> float:
    value = _single(key, value)
    if isinstance(value, str):
        span = parse_duration_literal(value)
        if span is not None and span >= 0:
            return int(span) / US_PER_SECOND
    try:
        if isinstance(value, str) or _is_number(value):
            return parse_duration(value)  # also takes "1.5s" and bare numbers
    except ValueError:
        pass
    raise UnprocessableEntity(f"Directive '{key}' must be a number of seconds or a duration")


def _check_shape(key: str, value: Any) -> None:
    if value is None:
        raise UnprocessableEntity(f"Directive '{key}' cannot be null")
    if key == "#ext":
        return  # stored raw for the (absent) extension pipeline
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is None or isinstance(item, list | dict):
            # ReductStore only takes primitives (or one object) here; nested values are invalid.
            text = json.dumps(value, separators=(",", ":"))
            raise UnprocessableEntity(f"Directive '{key}' has an unsupported value: {text}")


def parse_directives(raw: Mapping[str, Any]) -> Directives:
    """Validate and type the ``#``-keys of a ``when`` object."""
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in DIRECTIVE_NAMES:
            raise UnprocessableEntity(f"Directive '{key}' is not supported")
        _check_shape(key, value)
        if key in ("#ctx_before", "#ctx_after"):
            fields[key[1:]] = _window(key, value)
        elif key == "#select_labels":
            fields["select_labels"] = _labels(key, value)
        elif key == "#ext":
            fields["ext"] = value
        elif key in ("#batch_size", "#batch_metadata_size"):
            fields[key[1:]] = _bytes(key, value)
        elif key == "#batch_records":
            fields["batch_records"] = _count(key, value)
        else:
            fields[f"{key[1:]}_seconds"] = _seconds(key, value)
    return Directives(**fields)
