"""``Content-Encoding: gzip|zstd`` request bodies of batch writes (what replication sends).

The body is decoded while it streams, never whole: compressed input is fed in small slices so
one slice cannot expand into more than a few MiB, and the decoded size is bounded by what the
batch headers declare (the sum of the record lengths). Damaged or truncated data is 422
``Invalid <encoding> body``, a body that decodes to more than declared is 422, an unknown
encoding is 422 (ReductStore answers such requests with a client error, never 500).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from appliance.errors import UnprocessableEntity

SUPPORTED = ("gzip", "zstd")
GZIP_SLICE = 16 * 1024  # input bytes per zlib call (its output is capped separately)
ZSTD_SLICE = 1024  # zstd's worst case expansion per input byte is large: feed it little
MAX_OUT = 1024 * 1024


def content_encoding(headers: Mapping[str, str]) -> str | None:
    """The body's encoding (None for none/identity); 422 for one we cannot decode."""
    value = headers.get("content-encoding", "").strip().lower()
    if value in ("", "identity"):
        return None
    if value not in SUPPORTED:
        raise UnprocessableEntity(
            f"Unsupported content encoding '{value}': use gzip, zstd or none"
        )
    return value


class _Gzip:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        while data:
            if self._d.eof:
                raise zlib.error("data after the end of the gzip stream")
            out.append(self._d.decompress(data, MAX_OUT))
            data = self._d.unconsumed_tail
        return out

    def end(self) -> bytes:
        tail = self._d.flush()
        if not self._d.eof:
            raise zlib.error("the gzip stream is truncated")
        return tail


class _Zstd:
    def __init__(self) -> None:
        import zstandard

        self._d = zstandard.ZstdDecompressor().decompressobj()
        self.error: Any = zstandard.ZstdError

    def feed(self, data: bytes) -> list[bytes]:
        return [
            self._d.decompress(data[i : i + ZSTD_SLICE]) for i in range(0, len(data), ZSTD_SLICE)
        ]

    def end(self) -> bytes:
        if not self._d.eof:
            raise self.error("the zstd frame is truncated")
        return b""


async def decoded(
    chunks: AsyncIterator[bytes], encoding: str, limit: int
) -> AsyncIterator[bytes]:
    """Decode ``chunks``; 422 if the data is damaged or decodes to more than ``limit`` bytes."""
    decoder: Any = _Gzip() if encoding == "gzip" else _Zstd()
    errors: tuple[type[BaseException], ...] = (zlib.error,)
    if encoding == "zstd":
        errors = (decoder.error,)
    produced = 0

    def check(out: bytes) -> bytes:
        nonlocal produced
        produced += len(out)
        if produced > limit:
            raise UnprocessableEntity(
                f"The {encoding} body decodes to more than the {limit} bytes the headers declare"
            )
        return out

    try:
        async for chunk in chunks:
            for i in range(0, len(chunk), GZIP_SLICE):
                for out in decoder.feed(chunk[i : i + GZIP_SLICE]):
                    if check(out):
                        yield out
        tail = check(decoder.end())
    except errors as exc:
        raise UnprocessableEntity(f"Invalid {encoding} body: {exc}") from None
    if tail:
        yield tail
