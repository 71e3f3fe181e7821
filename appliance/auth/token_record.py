"""One API token (spec §6.1): its JSON shape, secret verification, and its ``.auth`` record.

A token's value is never kept: only a random salt and ``sha256(salt + value)``. The record
written to ``<data_path>/.auth`` holds those two, the permissions and the metadata, plus
``is_provisioned`` so a provisioned token keeps its protection across restarts and, once it
leaves the provisioning, is kept as an ordinary token rather than deleted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.auth.permissions import Permissions
from appliance.errors import Unauthorized, UnprocessableEntity

INIT_TOKEN_NAME = "init-token"
DISABLED_TOKEN_NAME = "AUTHENTICATION-DISABLED"


def format_time(epoch_seconds: float) -> str:
    """RFC 3339 UTC with ``Z`` and 0, 3 or 6 fractional digits (as chrono's AutoSi)."""
    dt = datetime.fromtimestamp(epoch_seconds, UTC)
    micros = dt.microsecond
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"


def parse_time(value: Any) -> float:
    """Parse an RFC 3339 datetime with an offset into epoch seconds; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("datetime must be a string")
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("datetime must carry an offset")
    return dt.timestamp()


def digest(salt: bytes, value: str) -> bytes:
    """The stored hash of a token value."""
    return hashlib.sha256(salt + value.encode()).digest()


def quick(value: str) -> bytes:
    """The unsalted hash used as the in-memory cache key of a verified value."""
    return hashlib.sha256(value.encode()).digest()


def networks(items: Iterable[str]) -> tuple[Any, ...]:
    """Parsed IP allow-list entries; 422 for an entry that is not an address or CIDR."""
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise UnprocessableEntity(f"Invalid IP address or CIDR '{item}'") from None
    return tuple(nets)


@dataclass(slots=True)
class Token:
    """One API token; ``salt``/``digest`` verify its secret value."""

    name: str
    created_at: float
    permissions: Permissions
    salt: bytes = b""
    digest: bytes = b""
    is_provisioned: bool = False
    expires_at: float | None = None
    ttl: int | None = None
    ip_allowlist: tuple[str, ...] = ()
    last_access: float | None = None
    networks: tuple[Any, ...] = field(default=(), repr=False)

    @classmethod
    def with_value(
        cls, name: str, value: str, created_at: float, permissions: Permissions, **extra: Any
    ) -> Token:
        """A token whose secret is ``value`` (hashed with a fresh salt)."""
        salt = secrets.token_bytes(16)
        return cls(name, created_at, permissions, salt, digest(salt, value), **extra)

    def is_expired(self, now: float) -> bool:
        """True once ``expires_at`` passed or the inactivity ``ttl`` ran out."""
        if self.expires_at is not None and now >= self.expires_at:
            return True
        if self.ttl is not None:
            since = max(self.last_access or 0.0, self.created_at)
            return now - since > self.ttl
        return False

    def to_json(self, now: float) -> dict[str, Any]:
        """The token as ReductStore's JSON object (value always blank)."""
        return {
            "name": self.name,
            "value": "",
            "created_at": format_time(self.created_at),
            "permissions": self.permissions.to_json(),
            "is_provisioned": self.is_provisioned,
            "expires_at": None if self.expires_at is None else format_time(self.expires_at),
            "ttl": self.ttl,
            "last_access": None if self.last_access is None else format_time(self.last_access),
            "ip_allowlist": list(self.ip_allowlist),
            "is_expired": self.is_expired(now),
        }

    def allows_ip(self, ip: str | None) -> None:
        """Raise 401 if the token has an allowlist that ``ip`` is not in."""
        if not self.networks:
            return
        if not ip:
            raise Unauthorized("Client IP is required for this token")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise Unauthorized(f"Token is not allowed for client IP {ip}") from None
        if not any(addr in net for net in self.networks if net.version == addr.version):
            raise Unauthorized(f"Token is not allowed for client IP {ip}")

    def to_record(self) -> dict[str, Any]:
        """The token as one item of the ``.auth`` file (hash and salt, never the value)."""
        return {
            "name": self.name,
            "created_at": self.created_at,
            "permissions": self.permissions.to_json(),
            "salt": self.salt.hex(),
            "digest": self.digest.hex(),
            "is_provisioned": self.is_provisioned,
            "expires_at": self.expires_at,
            "ttl": self.ttl,
            "ip_allowlist": list(self.ip_allowlist),
            "last_access": self.last_access,
        }

    @classmethod
    def from_record(cls, item: dict[str, Any]) -> Token:
        """A token read back from the ``.auth`` file (files without the flag: not provisioned)."""
        token = cls(
            name=item["name"],
            created_at=float(item["created_at"]),
            permissions=Permissions.from_json(item["permissions"]),
            salt=bytes.fromhex(item["salt"]),
            digest=bytes.fromhex(item["digest"]),
            is_provisioned=bool(item.get("is_provisioned", False)),
            expires_at=item.get("expires_at"),
            ttl=item.get("ttl"),
            ip_allowlist=tuple(item.get("ip_allowlist", [])),
            last_access=item.get("last_access"),
        )
        token.networks = networks(token.ip_allowlist)
        return token


DISABLED_TOKEN = Token(DISABLED_TOKEN_NAME, 0.0, Permissions(full_access=True))
