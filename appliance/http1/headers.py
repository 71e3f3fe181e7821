"""h11 header lists built as columns, and the byte classes of h11's header grammar (issue 15).

h11 keeps headers as a list of (raw name, lower-case name, value) triples and answers every
lookup (``get_comma_header``: framing, keep-alive, 100-continue, upgrade) with a Python loop
over all of them; a batched write carries 1,000 headers, a batched read's response ~90.
``IndexedHeaders`` is h11's ``Headers`` built from columns in C: it iterates over ready
(name, value) pairs, builds h11's triples only if something asks for them, keeps each header
as one encoded line for the response writer, and keeps the values of the few names h11 and
Hypercorn look up, so ``indexed_get_comma_header`` answers without a loop.

The byte classes are derived from h11's own patterns (``h11._abnf``) at import, so a check
against them is h11's check.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from h11._abnf import OWS, field_name, field_value
from h11._headers import CONTENT_LENGTH_MAX_DIGITS, Headers, get_comma_header

# The names h11 (framing, keep-alive, 100-continue, upgrade, the Host check) and Hypercorn
# look up by name; their values are kept lower-cased, as get_comma_header lower-cases them.
INDEXED_NAMES = (
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
)
_INDEXED_SET = frozenset(INDEXED_NAMES)


def _bytes_where(pattern: str, template: bytes) -> bytes:
    """The single bytes ``c`` for which ``template % c`` fully matches h11's ``pattern``."""
    compiled = re.compile(pattern.encode("ascii"))
    return bytes(c for c in range(256) if compiled.fullmatch(template % bytes([c])))


# A name is valid when deleting the token bytes from it leaves nothing; a field value may hold
# any byte but the FORBIDDEN ones (NUL, CR, LF and the other ``\s`` but SP and HTAB), and OWS
# only inside (h11 strips it around a received value, and refuses it around a sent one).
TOKEN_BYTES = _bytes_where(field_name, b"%s")
FORBIDDEN_BYTES = tuple(
    bytes([c]) for c in range(256) if c not in _bytes_where(field_value, b"a%sa")
)
OWS_BYTES = _bytes_where(OWS, b"%s")
_FORBIDDEN_RE = re.compile(b"[" + re.escape(b"".join(FORBIDDEN_BYTES)) + b"]")
# Up to this length one regex search beats a memchr per forbidden byte (0.6 against 2 µs).
_SHORT_TEXT = 256


_PAIRS_ONLY = {2}
_BYTES_ONLY = {bytes}


def bytes_columns(headers: object) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    """The names and values of a non-empty list of (``bytes``, ``bytes``) pairs, else None."""
    if type(headers) is not list or not headers:
        return None
    try:
        if set(map(len, headers)) != _PAIRS_ONLY:
            return None
        raw_names, values = zip(*headers)
    except (TypeError, ValueError):
        return None  # not pairs
    if set(map(type, raw_names)) != _BYTES_ONLY or set(map(type, values)) != _BYTES_ONLY:
        return None
    return raw_names, values


def names_are_tokens(raw_names: tuple[bytes, ...]) -> bool:
    """Whether every name is a non-empty token (h11's field-name), checked in C."""
    return b"" not in raw_names and not b"".join(raw_names).translate(None, TOKEN_BYTES)


def has_forbidden(text: bytes) -> bool:
    """Whether ``text`` holds a byte no field value may hold (NUL, CR, LF, VT, FF)."""
    if len(text) <= _SHORT_TEXT:
        return _FORBIDDEN_RE.search(text) is not None
    for forbidden in FORBIDDEN_BYTES:  # a memchr each: the class regex is ~80x slower on KiBs
        if forbidden in text:
            return True
    return False


# A value with OWS at its start or end, seen in the values joined by LF.
_OWS_AT_EDGES = tuple(
    pattern % bytes([c]) for c in OWS_BYTES for pattern in (b"\n%s", b"%s\n")
)


def values_are_clean(values: tuple[bytes, ...] | list[bytes]) -> bool:
    """Whether h11 would send every value as it is: no forbidden byte (a LF included) and no
    OWS at either end; checked on the values joined by LF, in C."""
    joined = b"\n".join(values)
    first, last = joined[:1], joined[-1:]
    if (
        joined.count(b"\n") != len(values) - 1  # a value with a LF
        or has_forbidden(joined.replace(b"\n", b""))
        or (first and first in OWS_BYTES)
        or (last and last in OWS_BYTES)
    ):
        return False
    for edge in _OWS_AT_EDGES:  # a memmem each (``any`` over a generator: ~1 µs an item)
        if edge in joined:
            return False
    return True


def index_values(
    names: list[bytes], values: tuple[bytes, ...] | list[bytes]
) -> dict[bytes, list[bytes]] | None:
    """The lower-cased values of ``INDEXED_NAMES`` in order, or None where h11's own
    normalisation would do something (a ``Transfer-Encoding``; a ``Content-Length`` repeated,
    or not plain digits)."""
    indexed: dict[bytes, list[bytes]] = {name: [] for name in INDEXED_NAMES}
    for name in _INDEXED_SET.intersection(names):
        found = indexed[name]
        at = -1
        for _ in range(names.count(name)):
            at = names.index(name, at + 1)
            found.append(values[at].lower())
    if indexed[b"transfer-encoding"]:
        return None
    lengths = indexed[b"content-length"]
    if lengths and (
        len(lengths) > 1
        or not lengths[0].isdigit()
        or len(lengths[0]) > CONTENT_LENGTH_MAX_DIGITS
    ):
        return None
    return indexed


class IndexedHeaders(Headers):
    """h11's ``Headers`` kept as columns (raw names, lower-case names, values) plus the
    lower-cased values of ``INDEXED_NAMES``; h11's triples and the (name, value) pairs are
    built on first use."""

    __slots__ = ("_raw_names", "_names", "_values", "_pairs", "_full", "_indexed", "_lines")

    def __init__(
        self,
        raw_names: tuple[bytes, ...],
        names: list[bytes],
        values: tuple[bytes, ...] | list[bytes],
        indexed: dict[bytes, list[bytes]],
        lines: bytes | None = None,
    ) -> None:
        self._raw_names = raw_names
        self._names = names
        self._values = values
        self._pairs: list[tuple[bytes, bytes]] | None = None
        self._full: list[tuple[bytes, bytes, bytes]] | None = None
        self._indexed = indexed
        self._lines = lines  # the encoded lines, when known already

    @property  # type: ignore[override]
    def _full_items(self) -> list[tuple[bytes, bytes, bytes]]:
        """h11's (raw name, name, value) list, built on first use."""
        if self._full is None:
            self._full = list(zip(self._raw_names, self._names, self._values))
        return self._full

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The (lower-case name, value) pairs, built on first use."""
        if self._pairs is None:
            self._pairs = list(zip(self._names, self._values))
        return self._pairs

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """The (lower-case name, value) pairs, as h11's ``Headers`` yields them."""
        return iter(self.pairs())

    def __len__(self) -> int:
        """The number of headers."""
        return len(self._names)

    def __bool__(self) -> bool:
        """Whether there is any header."""
        return bool(self._names)

    def __getitem__(self, idx: int) -> tuple[bytes, bytes]:  # type: ignore[override]
        """The (lower-case name, value) pair at ``idx``."""
        return self.pairs()[idx]

    def encoded_lines(self) -> bytes | None:
        """The headers as sent (``raw-name: value`` CRLF each, in order), or None when a
        ``Host`` is among them (h11 writes it first)."""
        if self._indexed[b"host"]:
            return None
        if self._lines is not None:
            return self._lines
        if not self._names:
            return b""
        return b"\r\n".join(map(b": ".join, zip(self._raw_names, self._values))) + b"\r\n"


def indexed_get_comma_header(headers: Headers, name: bytes) -> list[bytes]:
    """h11's ``get_comma_header``, answered from ``IndexedHeaders``' index when it has
    ``name``; the same list h11's loop would build."""
    if type(headers) is IndexedHeaders:
        values = headers._indexed.get(name)
        if values is not None:
            out = []
            for value in values:  # already lower-cased
                for part in value.split(b","):
                    part = part.strip()
                    if part:
                        out.append(part)
            return out
    return get_comma_header(headers, name)
