"""Token ``last_access`` persisted, throttled (issue 13): memory on the hot path, the file on flush."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.auth import Permissions, TokenStore


def _store(path: Path, clock: list[float]) -> TokenStore:
    store = TokenStore(path, "init", clock=lambda: clock[0])
    store.load()
    return store


def test_last_access_reaches_the_file_only_on_flush(tmp_path: Path) -> None:
    clock = [1000.0]
    store = _store(tmp_path, clock)
    token_value = store.create("t", b'{"full_access": true}')["value"]
    assert store.get("t")["last_access"] is None
    auth_file = tmp_path / ".auth"
    before = auth_file.read_bytes()
    for tick in range(5):
        clock[0] = 2000.0 + tick
        store.authenticate(f"Bearer {token_value}")
    assert auth_file.read_bytes() == before  # five requests, no write
    assert store.flush_last_access() is True
    assert store.flush_last_access() is False  # nothing new: no second write
    reloaded = _store(tmp_path, clock)
    assert reloaded.get("t")["last_access"] == "1970-01-01T00:33:24Z"


def test_inactivity_ttl_survives_a_restart(tmp_path: Path) -> None:
    clock = [1000.0]
    store = _store(tmp_path, clock)
    body = {"permissions": Permissions(full_access=True).to_json(), "ttl": 60}
    value = store.create("t", json.dumps(body).encode())["value"]
    clock[0] = 1050.0
    store.authenticate(f"Bearer {value}")
    store.flush_last_access()
    clock[0] = 1100.0  # 50 s after the last use, 100 s after creation
    reloaded = _store(tmp_path, clock)
    assert reloaded.authenticate(f"Bearer {value}").name == "t"  # still inside its TTL
