"""API tokens (spec §6): the store, authentication of bearer values, and the ``.auth`` file.

Token values are never stored: ``<data_path>/.auth`` holds, per token, a random salt and
``sha256(salt + value)``. A bearer value is verified against every stored hash the first time it
is seen; afterwards ``sha256(value)`` → token name is cached in memory so the hot path is one
hash and one dict lookup. The token from ``RS_API_TOKEN`` becomes the provisioned, undeletable
full-access ``init-token`` and is never written to disk.

The file is JSON ``{"version": 1, "tokens": [...]}`` replaced atomically with
``appliance.engine.fileio.atomic_write`` (tmp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.auth.permissions import Permissions
from appliance.engine.fileio import atomic_write
from appliance.errors import BadRequest, Conflict, NotFound, Unauthorized, UnprocessableEntity

log = logging.getLogger(__name__)

INIT_TOKEN_NAME = "init-token"
DISABLED_TOKEN_NAME = "AUTHENTICATION-DISABLED"
AUTH_FILE_NAME = ".auth"
FILE_VERSION = 1
_V2_FIELDS = frozenset({"permissions", "expires_at", "ttl", "ip_allowlist"})


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


def _digest(salt: bytes, value: str) -> bytes:
    return hashlib.sha256(salt + value.encode()).digest()


def _quick(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


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


def _networks(items: Iterable[str]) -> tuple[Any, ...]:
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise UnprocessableEntity(f"Invalid IP address or CIDR '{item}'") from None
    return tuple(nets)


DISABLED_TOKEN = Token(DISABLED_TOKEN_NAME, 0.0, Permissions(full_access=True))


class TokenStore:
    """All tokens of the instance; thread-safe; persisted to ``<data_path>/.auth``."""

    def __init__(
        self,
        data_path: Path,
        api_token: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = data_path / AUTH_FILE_NAME
        self._api_token = api_token
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._cache: dict[bytes, str] = {}  # sha256(value) -> token name
        self.started_at = clock()

    def now(self) -> float:
        """The store's clock (epoch seconds)."""
        return self._clock()

    @property
    def enabled(self) -> bool:
        """Authentication is on exactly when an API token is configured."""
        return self._api_token is not None

    def load(self) -> None:
        """Read ``.auth`` (if any) and add the provisioned ``init-token``."""
        tokens: dict[str, Token] = {}
        if self._path.exists():
            raw = json.loads(self._path.read_text())
            for item in raw.get("tokens", []):
                tok = Token(
                    name=item["name"],
                    created_at=float(item["created_at"]),
                    permissions=Permissions.from_json(item["permissions"]),
                    salt=bytes.fromhex(item["salt"]),
                    digest=bytes.fromhex(item["digest"]),
                    expires_at=item.get("expires_at"),
                    ttl=item.get("ttl"),
                    ip_allowlist=tuple(item.get("ip_allowlist", [])),
                )
                tok.networks = _networks(tok.ip_allowlist)
                tokens[tok.name] = tok
        if self._api_token is not None:
            salt = secrets.token_bytes(16)
            tokens[INIT_TOKEN_NAME] = Token(
                INIT_TOKEN_NAME,
                self.started_at,
                Permissions(full_access=True),
                salt=salt,
                digest=_digest(salt, self._api_token),
                is_provisioned=True,
            )
        with self._lock:
            self._tokens = tokens
            self._cache = {}

    # --- hot path -----------------------------------------------------------------------

    def authenticate(self, header: str | None, client_ip: str | None = None) -> Token:
        """The token named by an ``Authorization: Bearer`` header; 401 if none is valid."""
        if self._api_token is None:
            return DISABLED_TOKEN
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("No bearer token in request header")
        value = header[7:]
        quick = _quick(value)
        name = self._cache.get(quick)
        token = self._tokens.get(name) if name is not None else None
        if token is None:
            token = self._verify(value, quick)
        now = self._clock()
        if token.is_expired(now):
            raise Unauthorized("Token has expired")
        token.allows_ip(client_ip)
        token.last_access = now
        return token

    def _verify(self, value: str, quick: bytes) -> Token:
        # First sight of this value: compare against every salted hash (constant-time each).
        for token in list(self._tokens.values()):
            if hmac.compare_digest(_digest(token.salt, value), token.digest):
                self._cache[quick] = token.name
                return token
        raise Unauthorized("Invalid token")

    # --- management (called from worker threads: may write the file) ----------------------

    def list(self) -> list[dict[str, Any]]:
        """Every token as JSON, sorted by name (empty when auth is disabled)."""
        if not self.enabled:
            return []
        now = self._clock()
        return [t.to_json(now) for _, t in sorted(self._tokens.items())]

    def get(self, name: str) -> dict[str, Any]:
        """One token as JSON; 404 if missing."""
        return self._get(name).to_json(self._clock())

    def _get(self, name: str) -> Token:
        token = self._tokens.get(name)
        if token is None:
            raise NotFound(f"Token '{name}' doesn't exist")
        return token

    def create(self, name: str, body: bytes) -> dict[str, Any]:
        """Create a token from a v1 or v2 JSON body; returns ``{value, created_at}``."""
        if not self.enabled:
            raise BadRequest("Authentication is disabled")
        perms, expires_at, ttl, allowlist = _parse_create_body(body)
        perms.validate()
        now = self._clock()
        if ttl is not None and ttl <= 0:
            raise UnprocessableEntity("Token TTL must be greater than zero")
        if expires_at is not None and expires_at <= now:
            raise UnprocessableEntity("Token expiration date must not be in the past")
        networks = _networks(allowlist)
        value = f"{name}-{secrets.token_hex(16)}"
        salt = secrets.token_bytes(16)
        token = Token(
            name, now, perms, salt, _digest(salt, value), False, expires_at, ttl,
            tuple(allowlist), None, networks,
        )
        with self._lock:
            if name in self._tokens:
                raise Conflict(f"Token '{name}' already exists")
            self._tokens[name] = token
            self._cache[_quick(value)] = name
            self._save()
        return {"value": value, "created_at": format_time(now)}

    def remove(self, name: str) -> None:
        """Remove a token; 404 missing, 409 provisioned or last full-access token."""
        if not self.enabled:
            return
        with self._lock:
            token = self._get(name)
            if token.is_provisioned:
                raise Conflict(f"Can't remove provisioned token '{name}'")
            if token.permissions.full_access and not any(
                t.permissions.full_access for n, t in self._tokens.items() if n != name
            ):
                raise Conflict(
                    f"Can't remove token '{name}': at least one full-access token must remain"
                )
            del self._tokens[name]
            self._forget(name)
            self._save()

    def rotate(self, name: str) -> dict[str, Any]:
        """Give a token a new secret (the old one stops working at once)."""
        if not self.enabled:
            raise BadRequest("Authentication is disabled")
        with self._lock:
            token = self._get(name)
            if token.is_provisioned:
                raise Conflict(f"Can't rotate provisioned token '{name}'")
            now = self._clock()
            if token.is_expired(now):
                raise UnprocessableEntity(f"Can't rotate expired token '{name}'")
            value = f"{name}-{secrets.token_hex(16)}"
            salt = secrets.token_bytes(16)
            self._tokens[name] = replace(
                token, salt=salt, digest=_digest(salt, value), created_at=now, last_access=None
            )
            self._forget(name)
            self._cache[_quick(value)] = name
            self._save()
        return {"value": value, "created_at": format_time(now)}

    def rename_bucket(self, old: str, new: str) -> None:
        """Rename bucket ``old`` in every token's permission lists."""
        self._map_permissions(lambda p: p.renamed(old, new))

    def remove_bucket(self, name: str) -> None:
        """Strip bucket ``name`` from every token's permission lists."""
        self._map_permissions(lambda p: p.without(name))

    def _map_permissions(self, change: Callable[[Permissions], Permissions]) -> None:
        if not self.enabled:
            return
        with self._lock:
            changed = False
            for token in self._tokens.values():
                new = change(token.permissions)
                if new != token.permissions:
                    token.permissions = new
                    changed = True
            if changed:
                self._save()

    def _forget(self, name: str) -> None:
        for key in [k for k, v in self._cache.items() if v == name]:
            del self._cache[key]

    def _save(self) -> None:
        items = [
            {
                "name": t.name,
                "created_at": t.created_at,
                "permissions": t.permissions.to_json(),
                "salt": t.salt.hex(),
                "digest": t.digest.hex(),
                "expires_at": t.expires_at,
                "ttl": t.ttl,
                "ip_allowlist": list(t.ip_allowlist),
            }
            for t in self._tokens.values()
            if not t.is_provisioned
        ]
        data = json.dumps({"version": FILE_VERSION, "tokens": items}, indent=1).encode()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, data)


def _parse_create_body(
    body: bytes,
) -> tuple[Permissions, float | None, int | None, list[str]]:
    try:
        raw = json.loads(body) if body.strip() else {}
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        if "permissions" in raw:
            if set(raw) - _V2_FIELDS:
                raise ValueError("unknown field")
            perms = Permissions.from_json(raw["permissions"])
            expires = raw.get("expires_at")
            expires_at = None if expires is None else parse_time(expires)
            ttl = raw.get("ttl")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
                raise ValueError("ttl")
        else:
            perms = Permissions.from_json(raw)
            expires_at, ttl = None, None
        allowlist = raw.get("ip_allowlist") or []
        if not isinstance(allowlist, list) or not all(isinstance(i, str) for i in allowlist):
            raise ValueError("ip_allowlist")
    except ValueError:
        raise UnprocessableEntity("Invalid body") from None
    return perms, expires_at, ttl, allowlist
