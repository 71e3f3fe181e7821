"""Tokens and permissions (spec §0.5, §6): who may call which endpoint."""

from appliance.auth.permissions import (
    Permissions,
    can_read,
    require_full,
    require_read,
    require_write,
)
from appliance.auth.token import DISABLED_TOKEN_NAME, INIT_TOKEN_NAME, Token
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
