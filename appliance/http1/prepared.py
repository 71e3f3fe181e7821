"""Response header blocks checked ahead, off the event loop.

A batched read's response carries a header per record (~90). The one-pass functions of
``response_head`` check and write them on the event loop, three passes over columns
(Hypercorn's build, h11's ``normalize_and_validate``, the writer): ~110 µs a response, while
the client waits. But those headers are built in a worker thread before the request for
them even comes (``api.queries.encode_batch``).

``prepare`` runs there for the batches built as pairs (a v2 batch of one entry is written there
as lines instead, checked by its distinct values, and made into pairs with ``prepare`` only if
the ASGI path sends it: ``queries.EncodedBatch``): it checks the pairs as h11 and Hypercorn
would (the same byte classes and rules as ``response_head``), and when they pass it marks the
first pair as a ``PreparedPair`` that carries the block: the pairs after it, their names and
values, and the header lines as h11's writer would write them. On the event loop, the functions
of ``response_head`` that see a list starting with such a pair and going on with the very pairs
of its block check only the headers added after the block (the response's own: length, type,
``x-reduct-last``, the common and CORS headers, Hypercorn's date) with the stock code, and join
the block's lines with theirs. Anything else (a block that did not pass, a list changed since)
goes the way it went before, so the bytes sent, and any error, are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.http1.headers import (
    INDEXED_NAMES,
    bytes_columns,
    names_are_tokens,
    values_are_clean,
)

Pair = tuple[bytes, bytes]
_INDEXED_SET = frozenset(INDEXED_NAMES)


@dataclass(frozen=True, slots=True)
class PreparedBlock:
    """Header pairs checked ahead: the pairs after the first, all names and values, and
    the lines (``name: value`` CRLF each) h11's writer would write for them."""

    rest: list[Pair]
    names: tuple[bytes, ...]
    values: tuple[bytes, ...]
    lines: bytes


class PreparedPair(tuple):  # type: ignore[type-arg]
    """The first (name, value) pair of a checked block; ``block`` is the block."""

    block: PreparedBlock


def prepare(pairs: list[Pair]) -> bool:
    """Check ``pairs`` (``bytes`` names and values) as h11 and Hypercorn would send them and,
    if all pass, mark ``pairs[0]`` as a ``PreparedPair`` carrying the block; True if marked.

    Passing takes lower-case token names, none that h11 or Hypercorn look up by name
    (``INDEXED_NAMES``: framing and connection headers stay with the stock code), and values
    ``values_are_clean`` accepts. The list may be appended to afterwards.
    """
    columns = bytes_columns(pairs)
    if columns is None:
        return False
    names, values = columns
    joined = b"".join(names)
    if (
        not names_are_tokens(names)
        or joined != joined.lower()
        or not _INDEXED_SET.isdisjoint(names)
        or not values_are_clean(values)
    ):
        return False
    lines = b"\r\n".join(map(b": ".join, pairs)) + b"\r\n"
    first = PreparedPair(pairs[0])
    first.block = PreparedBlock(pairs[1:], names, values, lines)
    pairs[0] = first
    return True


def prepared_block(headers: object) -> PreparedBlock | None:
    """The block ``headers`` (a list) starts with, if it still holds the block's pairs."""
    if type(headers) is not list or not headers:
        return None
    first = headers[0]
    if type(first) is not PreparedPair:
        return None
    block = first.block
    if headers[1 : len(block.names)] != block.rest:
        return None
    return block
