"""Parsing and validation of request parameters: names, timestamps, lengths, labels, JSON.

The API validates names (spec §0.2) before anything reaches the engine, so ``..``, ``%2e%2e``
(decoded by the server before routing), NUL, ``$`` and over-long names are refused with 422
before any work is done; the rules themselves live once, in ``appliance.engine.names``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from appliance.engine import names
from appliance.engine.models import U64_MAX
from appliance.events import SYSTEM_BUCKET  # the instance's own events: protected
from appliance.errors import UnprocessableEntity

DEFAULT_CONTENT_TYPE = "application/octet-stream"
LABEL_PREFIX = b"x-reduct-label-"
U64_DIGITS = len(str(U64_MAX))
# serde_json's recursion limit: ReductStore refuses deeper JSON bodies the same way.
MAX_JSON_DEPTH = 128
_CONTAINERS = frozenset({dict, list})
JSON_TOO_DEEP = f"Invalid JSON: recursion limit exceeded (at most {MAX_JSON_DEPTH} levels)"


@lru_cache(maxsize=4096)
def bucket_name(name: str) -> str:
    """``name`` if it is a valid bucket name (or ``$system``, readable), else 422
    (``engine.names`` decides, cached)."""
    if name == SYSTEM_BUCKET:
        return name
    return names.validate_bucket_name(name)


def user_bucket_name(name: str) -> str:
    """A name a client may create or rename a bucket to: ``$system`` is the instance's, 422."""
    if name == SYSTEM_BUCKET:
        raise UnprocessableEntity(names.BUCKET_NAME_MESSAGE)
    return bucket_name(name)


@lru_cache(maxsize=8192)
def entry_name(name: str) -> str:
    """``name`` if it is a valid entry name (``a/b`` or ``[a/]$meta``), else 422 (cached)."""
    return names.validate_entry_name(name)




def parse_u64(value: str) -> int | None:
    """``value`` as an unsigned 64-bit integer, or None."""
    if not value.isdigit() or not value.isascii():
        return None
    # int() of thousands of digits is slow and past 4,300 digits a ValueError: a u64 has
    # at most 20 significant digits, leading zeros aside.
    digits = value.lstrip("0") or "0"
    if len(digits) > U64_DIGITS:
        return None
    number = int(digits)
    return number if number <= U64_MAX else None


def timestamp(args: Mapping[str, str], name: str = "ts") -> int:
    """The required ``ts`` query parameter (422 if missing or not a u64)."""
    raw = args.get(name)
    if raw is None:
        raise UnprocessableEntity(f"'{name}' parameter is required")
    value = parse_u64(raw)
    if value is None:
        raise UnprocessableEntity(f"'{name}' must be an unix timestamp in microseconds")
    return value


def optional_timestamp(args: Mapping[str, str], name: str) -> int | None:
    """An optional timestamp query parameter (422 if present but not a u64)."""
    raw = args.get(name)
    if raw is None:
        return None
    value = parse_u64(raw)
    if value is None:
        raise UnprocessableEntity(f"'{name}' must be an unix timestamp in microseconds")
    return value


# From this many headers (a batched write has one a record) a lookup goes by the names column.
COLUMN_LOOKUP_FROM = 32


def header(raw_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case bytes) in ASGI raw headers."""
    if type(raw_headers) is list and len(raw_headers) >= COLUMN_LOOKUP_FROM:
        # 1,000 headers: a ``list.index`` in C instead of a loop lower-casing each name
        # (~0.12 µs a header); exact when every name is lower-case, as servers hand them over.
        names = [key for key, _ in raw_headers]
        joined = b"".join(names)
        if joined == joined.lower():
            try:
                return raw_headers[names.index(name)][1]  # type: ignore[no-any-return]
            except ValueError:
                return None
    for key, value in raw_headers:
        if key == name or key.lower() == name:
            return value
    return None


def content_length(raw_headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The declared body length (``content-length``, else ``x-reduct-content-length``)."""
    raw = header(raw_headers, b"content-length")
    if raw is None:
        raw = header(raw_headers, b"x-reduct-content-length")
    if raw is None:
        raise UnprocessableEntity("content-length header is required")
    value = parse_u64(raw.decode("latin1").strip())
    if value is None:
        raise UnprocessableEntity("content-length header must be a number")
    return value


def decode_value(raw: bytes) -> str:
    """A header value as text: UTF-8 when valid (round-trips on output), else Latin-1."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin1")


def labels(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``x-reduct-label-<name>`` headers as ``{name: value}`` (names lower-cased)."""
    result: dict[str, str] = {}
    for key, value in raw_headers:
        key = key.lower()
        if key.startswith(LABEL_PREFIX) and len(key) > len(LABEL_PREFIX):
            result[key[len(LABEL_PREFIX) :].decode("latin1")] = decode_value(value).strip()
    return result


def content_type(raw_headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's content type, defaulting to ``application/octet-stream``."""
    raw = header(raw_headers, b"content-type")
    if not raw:
        return DEFAULT_CONTENT_TYPE
    return raw.decode("latin1").strip() or DEFAULT_CONTENT_TYPE


def json_body(body: bytes, *, allow_empty: bool = False) -> Any:
    """Decode a JSON body; 422 ``Invalid JSON: ...`` when malformed or nested too deep."""
    if allow_empty and not body.strip():
        return None
    try:
        value = json.loads(body)
    except RecursionError:
        raise UnprocessableEntity(JSON_TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnprocessableEntity(f"Invalid JSON: {exc}") from None
    check_depth(value)
    return value


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """422 if ``value`` nests arrays/objects deeper than ``limit`` (checked without recursion,
    so the check itself cannot overflow the stack that a deep tree would later). A container
    holding only scalars costs one C-level pass, so a flat 1 MiB array is cheap."""
    if type(value) not in _CONTAINERS:
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item
        kinds = set(map(type, children))
        if dict in kinds or list in kinds:
            if depth >= limit:
                raise UnprocessableEntity(JSON_TOO_DEEP)
            stack.extend((c, depth + 1) for c in children if type(c) in _CONTAINERS)


def check_json_nesting(body: bytes) -> None:
    """422 if ``body`` is JSON nested too deep; other JSON errors are left to the
    caller's own parser (which words them its own way)."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise UnprocessableEntity(JSON_TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError):
        return
    check_depth(value)


def json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """Decode a JSON object body; 422 if it is malformed or not an object."""
    value = json_body(body, allow_empty=allow_empty)
    if value is None and allow_empty:
        return {}
    if not isinstance(value, dict):
        raise UnprocessableEntity("Invalid JSON: expected an object")
    return value


def opt_u64(obj: Mapping[str, Any], key: str) -> int | None:
    """Optional unsigned integer field of a JSON object (422 on a wrong type)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise UnprocessableEntity(
            f"Invalid JSON: invalid type for `{key}`, expected an unsigned integer"
        )
    return value


def opt_bool(obj: Mapping[str, Any], key: str) -> bool | None:
    """Optional boolean field of a JSON object (422 on a wrong type)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise UnprocessableEntity(f"Invalid JSON: invalid type for `{key}`, expected a boolean")
    return value


def new_name(body: bytes) -> str:
    """The ``new_name`` of a rename body."""
    obj = json_object(body)
    value = obj.get("new_name")
    if not isinstance(value, str):
        raise UnprocessableEntity("Invalid JSON: missing field `new_name`")
    return value
