"""What ``appliance cp`` copies: time range, entries, labels, ``when`` and a per-entry limit.

``--start``/``--stop`` and ``when`` go to the source (the server filters), entry globs are
matched here against the source's entry list with the server's own rules
(``appliance.query.patterns``), and ``--include``/``--exclude`` are applied here to the labels
each record arrives with. They are not turned into ``when``: a ``when`` constant is typed
(``"5s"`` is a duration, ``"1"`` an integer), so exact string equality of label values (what
ReductStore's removed ``include``/``exclude`` query fields did) can only be checked here.
``--limit`` therefore counts records after those filters, per entry (as ``reduct-cli``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.errors import ApplianceError
from appliance.query.condition import compile_when
from appliance.units import US_PER_SECOND


class FilterError(ValueError):
    """A filter argument that cannot be understood (the message says which and why)."""


def parse_time(text: str, option: str) -> int:
    """µs since the epoch from an integer or an ISO 8601 instant (naive means UTC)."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"{option} {text!r} is neither µs since the epoch nor an ISO 8601 time "
            "(e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds
    if micros < 0:
        raise FilterError(f"{option} {text!r} is before 1970")
    return micros


def parse_labels(items: Sequence[str], option: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}``; FilterError for an item without ``=`` or name."""
    labels = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise FilterError(f"{option} {item!r} must look like label=value")
        labels[name.strip()] = value
    return labels


def parse_when(text: str | None) -> dict[str, Any] | None:
    """The ``--when`` JSON object, validated as the server would (FilterError if not)."""
    if text is None:
        return None
    try:
        when = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilterError(f"--when is not valid JSON: {exc}") from None
    if not isinstance(when, dict):
        raise FilterError('--when must be a JSON object, e.g. \'{"&score": {"$gt": 10}}\'')
    try:
        # Checked here with the server's own compiler, so a typo stops the copy before the
        # destination bucket is created, with one message instead of one per entry.
        compile_when(when)
    except ApplianceError as exc:
        raise FilterError(f"--when is not a valid condition: {exc.public_message}") from None
    return when


@dataclass(frozen=True, slots=True)
class CopyFilter:
    """Everything that selects records; built once from the command line."""

    start: int | None = None
    stop: int | None = None
    entries: tuple[str, ...] = ()
    include: Mapping[str, str] = field(default_factory=dict)
    exclude: Mapping[str, str] = field(default_factory=dict)
    when: Mapping[str, Any] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.stop is not None and self.start >= self.stop:
            raise FilterError("--start must be before --stop")
        if self.limit is not None and self.limit < 1:
            raise FilterError("--limit must be at least 1")

    def accepts(self, labels: Mapping[str, str]) -> bool:
        """True when the labels have every include pair and not all of the exclude pairs."""
        if any(labels.get(k) != v for k, v in self.include.items()):
            return False
        return not (self.exclude and all(labels.get(k) == v for k, v in self.exclude.items()))
