"""Response headers validated and written in one pass (issue 15).

A batched read answers with ~90 headers (one per record). On its way out each header was
handled one by one four times: Hypercorn's ``build_and_validate_headers`` (``bytes(name).strip()``
per header), h11's ``normalize_and_validate`` in ``Response.__init__`` (two regex
``fullmatch``es per header), ``get_comma_header`` three times (a loop each) and h11's
``write_headers`` (one ``%`` format and one ``write`` per header).

- ``fast_normalize_and_validate`` keeps h11's validation but runs it over columns in C: the
  names joined and checked as tokens with one ``translate``, the values joined with a LF
  between them (a byte no value may hold) and checked for forbidden bytes and for OWS at
  either end; a value with ``\\r\\n`` can never go out raw. It builds ``IndexedHeaders``.
- ``make_response_writer`` writes such headers as one ``bytes`` (``IndexedHeaders.encoded_lines``).
- ``fast_build_and_validate_headers`` is Hypercorn's function with the per-header loop in C.

Everything else (str or other non-``bytes`` names and values, a ``Transfer-Encoding``, a
repeated or odd ``Content-Length``, a ``Host``, any header h11 would refuse) goes to the
stock function, so the result, or the exception, is exactly h11's or Hypercorn's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from appliance.http1.headers import (
    IndexedHeaders,
    bytes_columns,
    index_values,
    names_are_tokens,
    values_are_clean,
)
from appliance.http1.prepared import PreparedBlock, prepared_block

# Below this many headers h11's and Hypercorn's loops cost less than the one pass's set-up
# (measured: ~5-9 µs more for 5-8 headers, ~175 µs less for 90).
ONE_PASS_FROM = 16

Normalize = Callable[..., Any]
Writer = Callable[[Any, Callable[[bytes], Any]], None]


def _columns(headers: Any) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    """The names and values of a list of ``ONE_PASS_FROM`` or more ``bytes`` pairs, else
    None."""
    if type(headers) is not list or len(headers) < ONE_PASS_FROM:
        return None
    return bytes_columns(headers)


def make_normalize(stock: Normalize) -> Normalize:
    """h11's ``normalize_and_validate`` for the events the server builds, checking a list of
    ``bytes`` pairs in one pass; anything else (and ``_parsed=True``) goes to ``stock``."""

    def fast_normalize_and_validate(headers: Any, _parsed: bool = False) -> Any:
        """h11's ``normalize_and_validate``, in C for lists of ``bytes`` pairs."""
        block = None if _parsed else prepared_block(headers)
        if block is not None:
            checked = _with_block(block, headers, stock)
            if checked is not None:
                return checked
        columns = None if _parsed else _columns(headers)
        if columns is None:
            return stock(headers, _parsed=_parsed)
        raw_names, values = columns
        if not names_are_tokens(raw_names):
            return stock(headers, _parsed=_parsed)
        if not values_are_clean(values):
            return stock(headers, _parsed=_parsed)
        names = b"\n".join(raw_names).lower().split(b"\n")  # tokens hold no LF
        indexed = index_values(names, values)
        if indexed is None:
            return stock(headers, _parsed=_parsed)
        return IndexedHeaders(raw_names, names, values, indexed)

    fast_normalize_and_validate.stock = stock  # type: ignore[attr-defined]
    return fast_normalize_and_validate


def _with_block(block: PreparedBlock, headers: list[Any], stock: Normalize) -> Any:
    """``IndexedHeaders`` of a block checked ahead plus the headers after it, these checked
    by h11's own function (which raises as it would); None where the headers after it need
    h11's framing rules (a ``Transfer-Encoding``, an odd or repeated ``Content-Length``)."""
    count = len(block.names)
    tail = stock(headers[count:])._full_items
    tail_names = [name for _, name, _ in tail]
    tail_values = [value for _, _, value in tail]
    indexed = index_values(tail_names, tail_values)
    if indexed is None:
        return None
    lines = block.lines + b"".join([b"%s: %s\r\n" % (raw, value) for raw, _, value in tail])
    return IndexedHeaders(
        block.names + tuple(raw for raw, _, _ in tail), [*block.names, *tail_names],
        block.values + tuple(tail_values), indexed, lines,
    )


def make_response_writer(stock: Writer) -> Writer:
    """h11's ``write_any_response`` writing ``IndexedHeaders`` as one ``bytes``."""

    def write_any_response(response: Any, write: Callable[[bytes], Any]) -> None:
        """h11's ``write_any_response``: the status line, the headers, the blank line."""
        headers = response.headers
        lines = headers.encoded_lines() if type(headers) is IndexedHeaders else None
        if lines is None or response.http_version != b"1.1":
            stock(response, write)
            return
        status = str(response.status_code).encode("ascii")
        write(b"HTTP/1.1 %s %s\r\n%s\r\n" % (status, response.reason, lines))

    write_any_response.stock = stock  # type: ignore[attr-defined]
    return write_any_response


def make_build_headers(
    stock: Callable[[Iterable[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
) -> Callable[[Iterable[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]:
    """Hypercorn's ``build_and_validate_headers`` (no pseudo headers; names and values
    ``bytes``, stripped) with the loop in C for lists of ``bytes`` pairs."""

    def build_and_validate_headers(
        headers: Iterable[tuple[bytes, bytes]],
    ) -> list[tuple[bytes, bytes]]:
        """Hypercorn's ``build_and_validate_headers``, in C for lists of ``bytes`` pairs."""
        block = prepared_block(headers)
        if block is not None:  # checked ahead: only the headers after the block here
            count = len(block.names)
            return [*headers[:count], *stock(headers[count:])]
        columns = _columns(headers)
        if columns is None:
            return stock(headers)
        raw_names, values = columns
        # An empty name (Hypercorn's IndexError) or one starting with ":" (its ValueError):
        # Hypercorn says so.
        if b"" in raw_names or b"\n:" in b"\n" + b"\n".join(raw_names):
            return stock(headers)
        return list(zip(map(bytes.strip, raw_names), map(bytes.strip, values)))

    build_and_validate_headers.stock = stock  # type: ignore[attr-defined]
    return build_and_validate_headers

