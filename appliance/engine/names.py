"""Bucket and entry names: the only gate between client-supplied names and filesystem paths.

A bucket name is one path segment of ``[A-Za-z0-9_-]``; an entry name is ``/``-separated segments
of the same alphabet, optionally ending in the system segment ``$meta`` (attachment entries,
spec api §11). Anything else — ``..``, ``.``-prefixed segments, absolute paths, NUL, empty
segments, ``$``-prefixed user buckets — is refused with 422 and ReductStore's messages, so a
validated name can be joined to the data path without escaping it (spec api §0.2).
"""

from __future__ import annotations

import re

from appliance.errors import UnprocessableEntity

META_SEGMENT = "$meta"

BUCKET_NAME_MESSAGE = "Bucket or entry name can contain only letters, digests and [-,_] symbols"
ENTRY_EMPTY_MESSAGE = "Entry name must be non-empty and must not contain empty path segments"
ENTRY_CHARS_MESSAGE = (
    "Entry name can contain only letters, digits and [-,_,/] symbols or end with '/$meta'"
)

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
# Buckets the instance itself owns (``$system``: events): created only with
# ``Storage.create_bucket(..., internal=True)``, never by a client name; loaded at startup.
INTERNAL_BUCKETS = frozenset({"$system"})


def validate_bucket_name(name: str) -> str:
    """Return ``name`` if it is a valid user bucket name, else raise 422."""
    if not isinstance(name, str) or _BUCKET.fullmatch(name) is None:
        raise UnprocessableEntity(BUCKET_NAME_MESSAGE)
    return name


def is_bucket_name(name: str) -> bool:
    """True if ``name`` is a valid bucket folder name (used when scanning the data path)."""
    return name in INTERNAL_BUCKETS or _BUCKET.fullmatch(name) is not None


def validate_entry_name(name: str) -> str:
    """Return ``name`` if it is a valid entry name (``a/b/c`` or ``[parent/]$meta``), else 422."""
    if not isinstance(name, str) or not name:
        raise UnprocessableEntity(ENTRY_EMPTY_MESSAGE)
    segments = name.split("/")
    if any(not segment for segment in segments):
        raise UnprocessableEntity(ENTRY_EMPTY_MESSAGE)
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == META_SEGMENT and i == last:
            continue
        if _SEGMENT.fullmatch(segment) is None:
            raise UnprocessableEntity(ENTRY_CHARS_MESSAGE)
    return name


def is_entry_name(name: str) -> bool:
    """True if ``name`` is a valid entry name (used when scanning a bucket folder)."""
    try:
        validate_entry_name(name)
    except UnprocessableEntity:
        return False
    return True


def is_meta_entry(name: str) -> bool:
    """True for system attachment entries (``$meta`` and ``<parent>/$meta``)."""
    return name == META_SEGMENT or name.endswith("/" + META_SEGMENT)


def parents(name: str) -> list[str]:
    """Proper ancestors of an entry, outermost first: ``a/b/c`` -> ``["a", "a/b"]``."""
    segments = name.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments))]


def is_same_or_descendant(name: str, ancestor: str) -> bool:
    """True if ``name`` is ``ancestor`` or lies below it (``a/b`` below ``a``, not ``ab``)."""
    return name == ancestor or name.startswith(ancestor + "/")
