"""A one-pass reader of HTTP/1 request heads for h11's server side (issue 15).

A batched v1 write carries one header per record, 1,000 a request. h11 0.16 reads a head
line by line in Python: splits it, strips each ``\\r``, runs a generator for obsolete line
folding, one regex ``fullmatch`` + ``groupdict`` per line, ``normalize_and_validate`` (a loop),
the ``Host`` count (a loop), and then ``get_comma_header`` five times per request, each a
loop over all the headers. That is ~2.8 µs per header.

``make_reader`` builds a replacement for h11's ``(CLIENT, IDLE)`` reader that works on
whole columns in C instead: one ``split`` into lines, one ``map(bytes.partition)`` at the
first colon, the names checked as h11's token grammar by deleting the token bytes from all of
them joined (``translate``), the values stripped of OWS by one ``map(bytes.strip)`` and
checked for the bytes h11's field-value refuses in one joined string, the names lower-cased
by ``map(bytes.lower)``. The byte classes are derived from h11's own patterns
(``h11._abnf``) at import. The event is an ``h11.Request`` with ``IndexedHeaders``: h11's
``Headers`` that iterate over a ready list of pairs and keep the values of the few names h11
and Hypercorn look up (host, content-length, transfer-encoding, connection, expect, upgrade),
so ``indexed_get_comma_header`` answers without a loop. About 0.7 µs a header against h11's
2.8 (``tests/bench/bench_http1.py``).

Anything unusual goes to h11's own reader on the same, untouched bytes, so every error and
edge case is exactly h11's: bare ``\\n`` line ends, obsolete line folding, any line the
pattern does not match, a head that is only a blank line, ``Transfer-Encoding`` at all,
``Content-Length`` that is repeated or not plain digits, a missing or repeated ``Host``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import repeat
from typing import Any

import h11
from h11._abnf import request_line
from h11._receivebuffer import ReceiveBuffer, blank_line_regex

from appliance.http1.headers import (
    OWS_BYTES,
    IndexedHeaders,
    has_forbidden,
    index_values,
    names_are_tokens,
)

REQUEST_LINE_RE = re.compile(request_line.encode("ascii"))
Reader = Callable[[ReceiveBuffer], Any]


def split_lines(lines: list[bytes]) -> tuple[tuple[bytes, ...], list[bytes]] | None:
    """The raw names and values of header ``lines`` (CRLFs taken off), or None when a line
    is not h11's ``token ":" OWS field-value OWS``."""
    raw_names, colons, rests = zip(*map(bytes.partition, lines, repeat(b":")))
    # A line without a colon, an empty name, or a name with a non-token byte (a space before
    # the colon, an obs-fold line starting with one, a bare CR or LF).
    if b"" in colons or not names_are_tokens(raw_names):
        return None
    values = list(map(bytes.strip, rests, repeat(OWS_BYTES)))
    if has_forbidden(b"".join(values)):  # NUL, a bare CR or LF, VT, FF
        return None
    return raw_names, values


def make_reader(stock: Reader) -> Reader:
    """A ``(CLIENT, IDLE)`` reader for h11 that reads ordinary heads in one pass and hands
    anything else to ``stock`` (h11's own reader) on the same bytes."""
    request_cls = h11.Request
    new_request = object.__new__
    set_field = object.__setattr__

    def read_request_head(buf: ReceiveBuffer) -> Any:
        """h11's ``maybe_read_from_IDLE_client``, in one pass for ordinary heads."""
        data = buf._data
        if data[:1] == b"\n" or data[:2] == b"\r\n":
            return stock(buf)  # an empty head: h11's error
        found = blank_line_regex.search(data, buf._multiple_lines_search)
        if found is None:
            return stock(buf)  # incomplete (or obviously invalid): h11 decides and remembers
        end = found.end()
        if data[end - 4 : end] != b"\r\n\r\n":
            return stock(buf)  # a bare LF ends a line near the end
        head = bytes(data[:end])
        first = head.find(b"\r\n")
        line = REQUEST_LINE_RE.fullmatch(head, 0, first)
        if line is None:
            return stock(buf)
        http_version = line.group("http_version")
        if end - first > 4:  # a header line or more
            columns = split_lines(head[first + 2 : end - 4].split(b"\r\n"))
            if columns is None:
                return stock(buf)
            raw_names, values = columns
            names = list(map(bytes.lower, raw_names))
        else:
            raw_names, names, values = (), [], []
        indexed = index_values(names, values)
        if indexed is None:
            return stock(buf)
        hosts = len(indexed[b"host"])
        if hosts > 1 or (hosts == 0 and http_version == b"1.1"):
            return stock(buf)  # h11's "Missing mandatory Host" or "Found multiple Host"
        del data[:end]
        buf._next_line_search = 0
        buf._multiple_lines_search = 0
        # What h11's Request.__init__ checks was checked above: the method and target by the
        # request-line pattern they come from, Host here, Content-Length by index_values.
        request = new_request(request_cls)
        set_field(request, "method", line.group("method"))
        set_field(request, "target", line.group("target"))
        set_field(request, "http_version", http_version)
        set_field(request, "headers", IndexedHeaders(raw_names, names, values, indexed))
        return request

    read_request_head.stock = stock  # type: ignore[attr-defined]
    return read_request_head
