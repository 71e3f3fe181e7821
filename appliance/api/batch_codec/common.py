"""What batch protocols v1 and v2 share: header names, the label grammar, names' percent
encoding, unsigned integers and error texts (ReductStore's, byte for byte).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.errors import ApplianceError, UnprocessableEntity

DEFAULT_CONTENT_TYPE = "application/octet-stream"
V1_TIME_PREFIX = "x-reduct-time-"
V1_ERROR_PREFIX = "x-reduct-error-"
V2_PREFIX = "x-reduct-"
ENTRIES_HEADER = "x-reduct-entries"
START_TS_HEADER = "x-reduct-start-ts"
LABELS_HEADER = "x-reduct-labels"

U64_LIMIT = 2**64
_U64_DIGITS = len(str(U64_LIMIT - 1))
_UINT = re.compile(r"\+?[0-9]+")  # Rust's unsigned `parse` grammar (a leading '+' is allowed)
_TCHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_COMPUTED_LABEL = "Label names must not start with '@': reserved for computed labels"
INVALID_HEADER = "Invalid batched header"


class RecordLike(Protocol):
    """What the read encoders need of a record (``appliance.engine.models.RecordMeta`` fits)."""

    @property
    def timestamp(self) -> int: ...  # noqa: D102
    @property
    def size(self) -> int: ...  # noqa: D102
    @property
    def content_type(self) -> str: ...  # noqa: D102
    @property
    def labels(self) -> Mapping[str, str]: ...  # noqa: D102
    @property
    def entry(self) -> str: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class LabelUpdate:
    """A label patch: labels to set (or overwrite) and labels to remove."""

    set: Mapping[str, str] = field(default_factory=dict)
    remove: frozenset[str] = frozenset()

    @classmethod
    def from_values(cls, values: Mapping[str, str | None]) -> LabelUpdate:
        """Build from ``{name: value}`` where an empty value or None means "remove"."""
        return cls(
            set={k: v for k, v in values.items() if v},
            remove=frozenset(k for k, v in values.items() if not v),
        )


def parse_uint(text: str) -> int | None:
    if not _UINT.fullmatch(text):
        return None
    # A u64 has at most 20 significant digits; int() of a 45,000-digit header would raise.
    digits = text.lstrip("+").lstrip("0") or "0"
    if len(digits) > _U64_DIGITS:
        return None
    number = int(digits)
    return number if number < U64_LIMIT else None


def format_label_value(value: str) -> str:
    return f'"{value}"' if "," in value else value


def error_value(err: ApplianceError) -> str:
    # The client-safe text: a corruption error's full message names server paths.
    return f"{err.status},{err.public_message}"


def _resolve_label(raw: str, label_names: list[str] | None) -> str:
    index = parse_uint(raw) if label_names is not None else None
    if index is not None:
        if index >= len(label_names or ()):
            raise UnprocessableEntity(f"Label index '{raw}' is out of range")
        return (label_names or [])[index]
    if raw.startswith("@"):
        raise UnprocessableEntity(_COMPUTED_LABEL)
    return raw


def parse_labels(
    raw: str, label_names: list[str] | None = None, *, v1: bool = False
) -> list[tuple[str, str]]:
    """``k=v,k2="a,b",k3=`` -> [(k, v), (k2, "a,b"), (k3, "")]; an empty value means delete.

    A quoted value runs to the next quote, commas included. v1 stops quietly at a part
    without ``=``; v2 rejects it. Keys index ``label_names`` when that dictionary is given.
    """
    pairs: list[tuple[str, str]] = []
    rest = raw.strip()
    while rest:
        if "=" not in rest:
            if v1:
                break
            raise UnprocessableEntity(INVALID_HEADER)
        raw_key, tail = rest.split("=", 1)
        key = _resolve_label(raw_key.strip(), label_names)
        if tail.startswith('"'):
            if '"' not in tail[1:]:
                raise UnprocessableEntity(INVALID_HEADER)
            value, rest = tail[1:].split('"', 1)
            rest = rest.lstrip(",").strip()
        elif "," in tail:
            value, rest = tail.split(",", 1)
            rest = rest.strip()
        else:
            value, rest = tail, ""
        pairs.append((key, value.strip()))
    return pairs


def format_rows(line: bytes, first: Sequence[Any], second: Sequence[Any],
                third: Sequence[Any]) -> bytes:
    """``line`` (a ``%`` format of three values) for each row of the three columns, joined,
    with one formatting for all of them: a batch's header lines at one Python step."""
    count = len(first)
    flat: list[Any] = [None] * (3 * count)
    flat[0::3] = first
    flat[1::3] = second
    flat[2::3] = third
    return (line * count) % tuple(flat)


def header_pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines (``name: value`` CRLF each, names without ``:``) as (name, value) pairs."""
    return [tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n")[:-1]]  # type: ignore[misc]


# -- percent encoding of names -----------------------------------------------------------------


def encode_name(name: str) -> str:
    """Percent-encode every byte that is not an HTTP tchar (``/`` -> ``%2F``, ``$`` stays)."""
    return "".join(chr(b) if b in _TCHARS else f"%{b:02X}" for b in name.encode())


def decode_name(encoded: str) -> str:
    """Undo ``encode_name``; only ``%XX`` is translated, so a raw ``/`` is accepted too."""
    try:
        raw = encoded.encode("latin-1")  # header values arrive as latin-1 decoded bytes
    except UnicodeEncodeError:
        raw = encoded.encode()
    decoded = bytearray()
    pos = 0
    while pos < len(raw):
        if raw[pos] == ord("%"):
            pair = raw[pos + 1 : pos + 3]
            if len(pair) != 2 or not all(chr(c) in "0123456789abcdefABCDEF" for c in pair):
                raise UnprocessableEntity(f"Invalid entry encoding in header name: '{encoded}'")
            decoded.append(int(pair, 16))
            pos += 3
        else:
            decoded.append(raw[pos])
            pos += 1
    try:
        return decoded.decode()
    except UnicodeDecodeError:
        raise UnprocessableEntity(f"Entry name is not valid UTF-8 in header '{encoded}'") from None
