"""RS_INIT_API_TOKEN: an ordinary full-access init-token, created once (ReductStore 1.21)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.auth import TokenStore
from appliance.errors import Unauthorized


def store(data: Path, **kwargs: str | None) -> TokenStore:
    """A loaded store over ``data``."""
    tokens = TokenStore(
        data, kwargs.pop("api_token", None), init_token=kwargs.pop("init_token", None)
    )
    tokens.load()
    return tokens


def test_init_token_is_created_once_saved_and_rotatable(tmp_path: Path) -> None:
    tokens = store(tmp_path, init_token="first")
    assert tokens.enabled
    me = tokens.authenticate("Bearer first")
    assert me.name == "init-token" and me.permissions.full_access and not me.is_provisioned
    assert (tmp_path / ".auth").exists()
    new = tokens.rotate("init-token")["value"]
    # Next start with the same variable: the rotated secret stays, the variable's is not re-applied.
    tokens = store(tmp_path, init_token="first")
    assert tokens.authenticate(f"Bearer {new}").name == "init-token"
    with pytest.raises(Unauthorized):
        tokens.authenticate("Bearer first")


def test_init_token_is_recreated_when_it_was_removed(tmp_path: Path) -> None:
    tokens = store(tmp_path, init_token="one")
    tokens.create("other", b'{"full_access": true}')
    tokens.remove("init-token")
    tokens = store(tmp_path, init_token="two")
    assert tokens.authenticate("Bearer two").name == "init-token"


def test_disabled_when_no_token_variable(tmp_path: Path) -> None:
    tokens = store(tmp_path)
    assert not tokens.enabled
    assert tokens.authenticate(None).permissions.full_access
