"""The ``Backend`` protocol: named files under a root, plus the key rules every backend enforces.

A backend stores opaque bytes under ``/``-separated relative keys such as
``bucket/entry/1700000000000000.blk``. It knows nothing about records, blocks or leases; the
engine, the lease and the backups build on these few operations (ARCHITECTURE.md §4).

Guarantees every backend gives (checked by ``tests/backends/contract.py``):

- ``read``/``stat``/``download`` of a missing key raise ``ObjectNotFound`` and nothing else.
- ``write``/``upload`` are atomic: a reader sees the old bytes or the new bytes, never a mix.
- ``delete`` of a missing key is a no-op; ``list`` is recursive and sorted by key, and never
  shows a backend's own temporary or lock files.
- ``create_if_absent`` and ``replace_if_unchanged`` are the two conditional writes a lease needs
  (``spec/leases.md``): at most one of several racing callers wins; losers get
  ``PreconditionFailed``.
- The etag changes whenever the content changes. Where ``etag_changes_on_every_write`` is true
  (memory, filesystem) it also changes on an identical rewrite. On S3 the etag is the server's
  ETag, an MD5 of the content, because that is the only value ``If-Match`` compares; a lease on
  S3 must therefore put a counter or nonce in every write (ours does: ``renew_seq``).
- No ``OSError`` or botocore exception escapes; see ``backends.errors``.

The methods are synchronous and may block on I/O; async callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from backends.errors import InvalidKey

# Suffixes of the files a backend keeps next to the data. Keys may not end in them, so that
# ``list`` can hide them without ever hiding a caller's object.
TEMP_SUFFIX = ".backend-tmp"
LOCK_SUFFIX = ".cas-lock"
RESERVED_SUFFIXES = (TEMP_SUFFIX, LOCK_SUFFIX)

# S3's limit on key length; applied everywhere so a dataset can move between backends.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a backend knows about one stored object."""

    key: str
    size: int
    mtime: float  # seconds since the epoch, by the storage's clock
    etag: str  # opaque; compare for equality only


@runtime_checkable
class Backend(Protocol):
    """Named files under a root: atomic writes, streaming transfer, listing, conditional writes."""

    name: str
    etag_changes_on_every_write: bool

    def init(self) -> None:
        """Prepare the root (create it, or check it is reachable); safe to call twice."""
        ...

    def close(self) -> None:
        """Release clients and handles; safe to call twice."""
        ...

    def read(self, key: str) -> bytes:
        """Return the whole object; raise ObjectNotFound if it does not exist."""
        ...

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""
        ...

    def upload(self, key: str, local_path: Path) -> ObjectInfo:
        """Store the content of a local file, streamed, atomically."""
        ...

    def download(self, key: str, local_path: Path) -> ObjectInfo:
        """Fetch an object into a local file, streamed, via a temp file renamed into place."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix`` (non-empty); return the count."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, recursively, sorted by key."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Return size, mtime and etag; raise ObjectNotFound if the key does not exist."""
        ...

    def create_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Create the object only if no object has the key; else raise PreconditionFailed."""
        ...

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> ObjectInfo:
        """Replace the object only if its etag is still ``etag``; else raise PreconditionFailed."""
        ...


def validate_key(key: str, *, backend: str) -> str:
    """Return ``key`` if it is a valid relative name, else raise InvalidKey saying why."""
    problem = _key_problem(key)
    if problem is None and not key:
        problem = "is empty"
    if problem is None and key.rsplit("/", 1)[-1].endswith(RESERVED_SUFFIXES):
        problem = f"ends with a suffix reserved for backend files {RESERVED_SUFFIXES}"
    if problem is not None:
        raise InvalidKey(f"invalid key: {problem}", backend=backend, key=key)
    return key


def validate_prefix(prefix: str, *, backend: str) -> str:
    """Return ``prefix`` if it could start a valid key ("" and a trailing "/" are fine)."""
    # The last segment may be partial ("bucket/ent", ".lo"), so only complete segments are checked.
    problem = _key_problem(prefix, partial=True)
    if problem is not None:
        raise InvalidKey(f"invalid prefix: {problem}", backend=backend, key=prefix)
    return prefix


def refuse_empty_prefix(prefix: str, *, backend: str) -> None:
    """``delete_prefix``'s guard: an empty prefix would delete everything (InvalidKey)."""
    if not prefix:
        raise InvalidKey(
            "delete_prefix needs a non-empty prefix (refusing to delete everything)",
            backend=backend,
            key=prefix,
        )


def _key_problem(key: str, *, partial: bool = False) -> str | None:
    """Say what is wrong with ``key`` (None if nothing), the rules shared by keys and prefixes."""
    if not isinstance(key, str):
        return f"must be a str, not {type(key).__name__}"
    if "\x00" in key:
        return "contains a NUL character"
    if key.startswith("/"):
        return "starts with '/' (keys are relative to the backend's root)"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (lone surrogate)"
    if len(encoded) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if not key:
        return None
    segments = key.split("/")
    for index, segment in enumerate(segments):
        if partial and index == len(segments) - 1:
            break
        if segment == "":
            return "has an empty segment ('//')"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
    return None
