"""The permission model of spec §0.5: full access, or per-bucket read/write lists.

A list item grants a bucket when it equals the name, or when it ends with ``*`` and the bucket
starts with the prefix before it; wildcards never match internal ``$`` buckets. Write does not
imply read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import Forbidden, UnprocessableEntity

_ITEM = re.compile(r"^[*a-zA-Z0-9_\-]+$")


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a token may do: everything, or read/write on listed buckets."""

    full_access: bool = False
    read: tuple[str, ...] = field(default_factory=tuple)
    write: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, value: Any) -> Permissions:
        """Build from ReductStore's JSON object; ValueError if the shape is wrong."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError("permissions must be an object")
        full = value.get("full_access", False)
        if full is None:
            full = False
        if not isinstance(full, bool):
            raise ValueError("full_access must be a bool")
        return cls(full, _str_list(value.get("read")), _str_list(value.get("write")))

    def to_json(self) -> dict[str, Any]:
        """The permissions as ReductStore's JSON object."""
        return {"full_access": self.full_access, "read": list(self.read), "write": list(self.write)}

    def validate(self) -> None:
        """Raise 422 if an item is neither a bucket name nor a wildcard (``$`` names pass)."""
        for item in (*self.read, *self.write):
            if not item.startswith("$") and not _ITEM.match(item):
                raise UnprocessableEntity(
                    "Permission can contain only bucket names or wildcard '*', "
                    f"got '{item}'"
                )

    def renamed(self, old: str, new: str) -> Permissions:
        """A copy where exact mentions of bucket ``old`` become ``new``."""
        return Permissions(
            self.full_access,
            tuple(new if p == old else p for p in self.read),
            tuple(new if p == old else p for p in self.write),
        )

    def without(self, bucket: str) -> Permissions:
        """A copy with exact mentions of ``bucket`` removed."""
        return Permissions(
            self.full_access,
            tuple(p for p in self.read if p != bucket),
            tuple(p for p in self.write if p != bucket),
        )


def _str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("read and write must be lists of strings")
    return tuple(value)


def grants(items: Iterable[str], bucket: str) -> bool:
    """True if one of ``items`` names ``bucket`` or matches it as a ``prefix*`` wildcard."""
    internal = bucket.startswith("$")
    for item in items:
        if item == bucket:
            return True
        if not internal and item.endswith("*") and bucket.startswith(item[:-1]):
            return True
    return False


def can_read(name: str, perms: Permissions, bucket: str) -> bool:
    """True if the token may read ``bucket``."""
    return perms.full_access or grants(perms.read, bucket)


def require_full(name: str, perms: Permissions) -> None:
    """Raise 403 unless the token has full access."""
    if not perms.full_access:
        raise Forbidden(f"Token '{name}' doesn't have full access")


def require_read(name: str, perms: Permissions, bucket: str) -> None:
    """Raise 403 unless the token may read ``bucket``."""
    if not (perms.full_access or grants(perms.read, bucket)):
        raise Forbidden(f"Token '{name}' doesn't have read access to bucket '{bucket}'")


def require_write(name: str, perms: Permissions, bucket: str) -> None:
    """Raise 403 unless the token may write ``bucket``."""
    if not (perms.full_access or grants(perms.write, bucket)):
        raise Forbidden(f"Token '{name}' doesn't have write access to bucket '{bucket}'")
