"""Tokens and permissions (spec §0.5, §6): who may call which endpoint.

``token_record`` (one token: JSON shape, secret hash, ``.auth`` record), ``tokens`` (the
store), ``permissions``, ``links`` (query-link signatures).
"""

from appliance.auth.permissions import (
    Permissions,
    can_read,
    require_full,
    require_read,
    require_write,
)
from appliance.auth.token_record import DISABLED_TOKEN_NAME, INIT_TOKEN_NAME, Token
from appliance.auth.tokens import TokenStore

__all__ = [
    "DISABLED_TOKEN_NAME",
    "INIT_TOKEN_NAME",
    "Permissions",
    "Token",
    "TokenStore",
    "can_read",
    "require_full",
    "require_read",
    "require_write",
]
