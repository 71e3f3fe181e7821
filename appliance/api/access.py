"""Who is calling: the services of the current app, the client IP and the caller's token."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from quart import current_app, g, request

from appliance.auth import Token, require_full, require_read, require_write

if TYPE_CHECKING:
    from appliance.services import Services

SERVICES_KEY = "appliance.services"


def services() -> Services:
    """The ``Services`` of the app handling this request."""
    return current_app.extensions[SERVICES_KEY]  # type: ignore[no-any-return]


def _trusted_proxy(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_private or addr.is_link_local


def _strip_host(value: str) -> str:
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def client_ip() -> str | None:
    """The TCP peer, or the forwarded client when the peer is a trusted proxy (spec §0.5)."""
    client = request.scope.get("client")
    peer = client[0] if client else None
    if peer is None or not _trusted_proxy(peer):
        return peer
    forwarded = request.headers.get("Forwarded")
    if forwarded:
        for hop in forwarded.split(","):
            for part in hop.split(";"):
                key, _, value = part.strip().partition("=")
                if key.lower() == "for" and value:
                    return _strip_host(value)
    xff = request.headers.get("X-Forwarded-For")
    if xff:
        return _strip_host(xff.split(",")[0])
    return peer


def authenticate() -> Token:
    """The caller's token (401 if missing or invalid); any valid token passes."""
    tokens = services().tokens
    if not tokens.enabled:
        token = tokens.authenticate(None)
    else:
        token = tokens.authenticate(request.headers.get("Authorization"), client_ip())
    g.token_name = token.name  # for the audit record of this request ($system)
    return token


def full_access() -> Token:
    """The caller's token if it has full access (else 401/403)."""
    token = authenticate()
    require_full(token.name, token.permissions)
    return token


def read_access(bucket: str) -> Token:
    """The caller's token if it may read ``bucket`` (else 401/403)."""
    token = authenticate()
    require_read(token.name, token.permissions, bucket)
    return token


def write_access(bucket: str) -> Token:
    """The caller's token if it may write ``bucket`` (else 401/403); also the roles check."""
    token = authenticate()
    require_write(token.name, token.permissions, bucket)
    services().fence.check(io=False)
    return token
