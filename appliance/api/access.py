"""Who is calling: the services of the current app, the client IP and the caller's token."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quart import current_app, request

from appliance.api import params
from appliance.auth import Token, require_full, require_read, require_write

if TYPE_CHECKING:
    from appliance.services import Services

SERVICES_KEY = "appliance.services"
TRUSTED_CACHE_SIZE = 4096  # distinct peer addresses remembered by ``_trusted_proxy``
_UNKNOWN = object()


def services() -> Services:
    """The ``Services`` of the app handling this request."""
    return current_app.extensions[SERVICES_KEY]  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=TRUSTED_CACHE_SIZE)
def _trusted_proxy(ip: str) -> bool:
    """True for a loopback, private or link-local peer (cached: parsing an address costs more
    than the rest of the audit record, and a connection's peer asks on every request)."""
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


def _first_header(scope: Mapping[str, Any], name: bytes) -> str | None:
    value = params.header(scope["headers"], name)
    return None if value is None else value.decode("latin1")


def scope_client_ip(scope: Mapping[str, Any]) -> str | None:
    """The TCP peer of an ASGI ``scope``, or the forwarded client when the peer is a trusted
    proxy (spec §0.5). Reads the raw header pairs: no werkzeug ``Headers`` lookups."""
    client = scope.get("client")
    peer = client[0] if client else None
    if peer is None or not _trusted_proxy(peer):
        return peer
    forwarded = _first_header(scope, b"forwarded")
    if forwarded:
        for hop in forwarded.split(","):
            for part in hop.split(";"):
                key, _, value = part.strip().partition("=")
                if key.lower() == "for" and value:
                    return _strip_host(value)
    xff = _first_header(scope, b"x-forwarded-for")
    if xff:
        return _strip_host(xff.split(",")[0])
    return peer


def client_ip() -> str | None:
    """The client of the current request (``scope_client_ip``), worked out once per request."""
    req = request._get_current_object()  # noqa: SLF001 - one proxy lookup instead of several
    ip = getattr(req, "client_ip", _UNKNOWN)
    if ip is _UNKNOWN:
        ip = scope_client_ip(req.scope)
        try:
            req.client_ip = ip  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return ip  # type: ignore[no-any-return]


def scope_token(svc: Services, scope: Mapping[str, Any]) -> tuple[Token, str | None]:
    """The caller's token (401 if missing or invalid) and IP (None when neither the tokens
    nor the audit need it), from an ASGI scope's raw headers: what ``authenticate`` finds,
    for the lanes that answer below Quart."""
    tokens = svc.tokens
    ip = scope_client_ip(scope) if tokens.enabled or svc.events.enabled else None
    header = params.header(scope["headers"], b"authorization")
    return tokens.authenticate(None if header is None else header.decode("latin1"), ip), ip


def authenticate() -> Token:
    """The caller's token (401 if missing or invalid); any valid token passes."""
    tokens = services().tokens
    if not tokens.enabled:
        token = tokens.authenticate(None)
    else:
        token = tokens.authenticate(request.headers.get("Authorization"), client_ip())
    request.token_name = token.name  # for the audit record of this request ($system)
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
