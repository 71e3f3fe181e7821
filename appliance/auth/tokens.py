"""API tokens (spec §6): the store, authentication of bearer values, and the ``.auth`` file.

Token values are never stored: ``<data_path>/.auth`` holds, per token, a random salt and
``sha256(salt + value)`` (``appliance.auth.token_record``). A bearer value is verified against every
stored hash the first time it is seen; afterwards ``sha256(value)`` → token name is cached in
memory so the hot path is one hash and one dict lookup. The token from ``RS_API_TOKEN`` becomes
the provisioned, undeletable full-access ``init-token`` and is never written to disk. The one from
``RS_INIT_API_TOKEN`` becomes an ordinary full-access ``init-token`` (saved, removable and
rotatable through the API), created at start only when no ``init-token`` exists or the existing
one was provisioned (ReductStore 1.21).

Provisioning (``provision``/``unprovision``) creates or replaces tokens declared by env groups
or YAML and persists them *with* their ``is_provisioned`` flag: API remove/rotate answer 409, and
a token that leaves the provisioning is kept as an ordinary token, never deleted.

Each token's ``last_access`` is kept in memory on the hot path and written with the file at most
once per ``flush_last_access`` call (the services call it every ``LAST_ACCESS_FLUSH_SECONDS`` and
at shutdown), so a token's inactivity ``ttl`` survives a restart without a write per request.
The init-token's ``last_access`` is not saved (it is never written to disk).

The file is JSON ``{"version": 1, "tokens": [...]}`` replaced atomically with
``appliance.engine.fs_ops.atomic_write`` (tmp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.auth.permissions import Permissions
from appliance.auth.token_record import (
    DISABLED_TOKEN,
    DISABLED_TOKEN_NAME,
    INIT_TOKEN_NAME,
    Token,
    digest,
    format_time,
    networks,
    parse_time,
    quick,
)
from appliance.engine.fs_ops import atomic_write, make_dirs
from appliance.engine.ioerrors import io_boundary
from appliance.errors import BadRequest, Conflict, NotFound, Unauthorized, UnprocessableEntity

log = logging.getLogger(__name__)

AUTH_FILE_NAME = ".auth"
FILE_VERSION = 1
_V2_FIELDS = frozenset({"permissions", "expires_at", "ttl", "ip_allowlist"})

__all__ = ["DISABLED_TOKEN_NAME", "INIT_TOKEN_NAME", "Token", "TokenStore"]


class TokenStore:
    """All tokens of the instance; thread-safe; persisted to ``<data_path>/.auth``."""

    def __init__(
        self,
        data_path: Path,
        api_token: str | None,
        clock: Callable[[], float] = time.time,
        *,
        init_token: str | None = None,
    ) -> None:
        self._path = data_path / AUTH_FILE_NAME
        self._api_token = api_token
        self._init_token = init_token
        self._enabled = api_token is not None or init_token is not None
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._cache: dict[bytes, str] = {}  # sha256(value) -> token name
        self._access_dirty = False  # some last_access changed since the file was written
        # The state as last saved: a save that fails (a full disk) puts it back, so a change
        # answered 507 leaves no trace, not even until the next restart.
        self._saved: tuple[dict[str, Token], dict[bytes, str]] = ({}, {})
        self.started_at = clock()

    def now(self) -> float:
        """The store's clock (epoch seconds)."""
        return self._clock()

    @property
    def enabled(self) -> bool:
        """Authentication is on exactly when RS_API_TOKEN or RS_INIT_API_TOKEN is in force."""
        return self._enabled

    def load(self) -> None:
        """Read ``.auth`` (if any) and add the provisioned ``init-token``."""
        tokens: dict[str, Token] = {}
        if self._path.exists():
            raw = json.loads(self._path.read_text())
            for item in raw.get("tokens", []):
                token = Token.from_record(item)
                tokens[token.name] = token
        if self._api_token is not None:
            tokens[INIT_TOKEN_NAME] = Token.with_value(
                INIT_TOKEN_NAME,
                self._api_token,
                self.started_at,
                Permissions(full_access=True),
                is_provisioned=True,
            )
        created_init = False
        if self._init_token is not None and self._api_token is None:
            current = tokens.get(INIT_TOKEN_NAME)
            if current is None or current.is_provisioned:
                tokens[INIT_TOKEN_NAME] = Token.with_value(
                    INIT_TOKEN_NAME, self._init_token, self._clock(), Permissions(full_access=True)
                )
                created_init = True
        with self._lock:
            self._tokens = tokens
            self._cache = {}
            self._saved = (dict(tokens), {})
            if created_init:
                self._save()

    # --- hot path -----------------------------------------------------------------------

    def authenticate(self, header: str | None, client_ip: str | None = None) -> Token:
        """The token named by an ``Authorization: Bearer`` header; 401 if none is valid."""
        if not self._enabled:
            return DISABLED_TOKEN
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("No bearer token in request header")
        value = header[7:]
        key = quick(value)
        name = self._cache.get(key)
        token = self._tokens.get(name) if name is not None else None
        if token is None:
            token = self._verify(value, key)
        now = self._clock()
        if token.is_expired(now):
            raise Unauthorized("Token has expired")
        token.allows_ip(client_ip)
        if token.last_access != now:
            token.last_access = now
            # Persisted later by ``flush_last_access`` (throttled): never a write per request.
            self._access_dirty = True
        return token

    def flush_last_access(self) -> bool:
        """Write the ``last_access`` times gathered since the last write; True if it wrote."""
        with self._lock:
            if not self._access_dirty:
                return False
            self._access_dirty = False
            try:
                self._save()
            except BaseException:
                self._access_dirty = True  # a full disk: try again at the next flush
                raise
            return True

    def link_secret(self, name: str) -> bytes:
        """The stored secret query links of token ``name`` are sealed with (404 if removed);
        empty while authentication is disabled, as in ReductStore."""
        if self._api_token is None:
            return b""
        token = self._get(name)
        if name == INIT_TOKEN_NAME:
            # Rebuilt with a fresh salt at every start: key its links to RS_API_TOKEN itself.
            return hashlib.sha256(b"init-token:" + self._api_token.encode()).digest()
        return token.salt + token.digest  # changes on rotate, gone on remove

    def issuer(self, name: str) -> Token:
        """The token that issued a query link, as it is now (404 removed, 401 expired)."""
        if self._api_token is None:
            return DISABLED_TOKEN
        token = self._get(name)
        if token.is_expired(self._clock()):
            raise Unauthorized("Token has expired")
        return token

    def _verify(self, value: str, key: bytes) -> Token:
        # First sight of this value: compare against every salted hash (constant-time each).
        for token in list(self._tokens.values()):
            if hmac.compare_digest(digest(token.salt, value), token.digest):
                self._cache[key] = token.name
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
        nets = networks(allowlist)
        value = f"{name}-{secrets.token_hex(16)}"
        token = Token.with_value(
            name, value, now, perms, expires_at=expires_at, ttl=ttl,
            ip_allowlist=tuple(allowlist), networks=nets,
        )
        with self._lock:
            if name in self._tokens:
                raise Conflict(f"Token '{name}' already exists")
            self._tokens[name] = token
            self._cache[quick(value)] = name
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
                token, salt=salt, digest=digest(salt, value), created_at=now, last_access=None
            )
            self._forget(name)
            self._cache[quick(value)] = name
            self._save()
        return {"value": value, "created_at": format_time(now)}

    # --- provisioning (spec reductstore-config §4.2) ------------------------------------------

    def provision(
        self, name: str, value: str, permissions: Permissions, expires_at: float | None
    ) -> None:
        """Create token ``name`` or replace it entirely (new created_at, no TTL or allow-list),
        marked provisioned and persisted; BadRequest when authentication is disabled."""
        if not self.enabled:
            raise BadRequest("Authentication is disabled")
        if name == INIT_TOKEN_NAME:
            raise Conflict(f"Token '{INIT_TOKEN_NAME}' is reserved for RS_API_TOKEN")
        token = Token.with_value(
            name, value, self._clock(), permissions, is_provisioned=True, expires_at=expires_at
        )
        with self._lock:
            self._tokens[name] = token
            self._forget(name)  # the previous value stops working at once
            self._save()

    def unprovision(self, name: str) -> None:
        """Clear the provisioned mark of ``name``; the token stays (no-op if it is missing)."""
        with self._lock:
            token = self._tokens.get(name)
            if token is None or not token.is_provisioned or name == INIT_TOKEN_NAME:
                return
            token.is_provisioned = False
            self._save()

    def provisioned_names(self) -> tuple[str, ...]:
        """Tokens marked provisioned, except RS_API_TOKEN's ``init-token``."""
        return tuple(
            sorted(n for n, t in self._tokens.items() if t.is_provisioned and n != INIT_TOKEN_NAME)
        )

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
        # RS_API_TOKEN's init-token is rebuilt from the environment at every start: not saved.
        items = [
            t.to_record()
            for t in self._tokens.values()
            if not (t.name == INIT_TOKEN_NAME and self._api_token is not None)
        ]
        data = json.dumps({"version": FILE_VERSION, "tokens": items}, indent=1).encode()
        try:
            with io_boundary("save the tokens"):
                make_dirs(self._path.parent, sync=True)
                atomic_write(self._path, data)
        except BaseException:
            self._tokens, self._cache = dict(self._saved[0]), dict(self._saved[1])
            raise
        self._saved = (dict(self._tokens), dict(self._cache))


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
