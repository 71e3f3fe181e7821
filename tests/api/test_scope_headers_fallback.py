"""Requests get werkzeug's own ``Headers`` when ``ScopeHeaders`` does not agree with the
installed werkzeug (``connection.SCOPE_HEADERS`` False): authentication, batched writes and
reads work the same."""

from __future__ import annotations

import pytest

from appliance.api import connection
from tests.api.conftest import AUTH, Harness

API = "/api/v1"


@pytest.mark.parametrize("lazy", [True, False], ids=["scope-headers", "werkzeug-headers"])
async def test_requests_work_with_either_header_class(
    ha: Harness, monkeypatch: pytest.MonkeyPatch, lazy: bool
) -> None:
    monkeypatch.setattr(connection, "SCOPE_HEADERS", lazy)
    assert (await ha.client.post(API + "/b/bkt")).status_code == 401
    assert (await ha.client.post(API + "/b/bkt", headers=AUTH)).status_code == 200
    headers = {**AUTH, "Content-Type": "application/octet-stream"}
    headers.update({f"x-reduct-time-{ts}": f"2,text/plain,n={ts}" for ts in range(1, 41)})
    r = await ha.client.post(API + "/b/bkt/e/batch", data=b"ab" * 40, headers=headers)
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    r = await ha.client.get(API + "/b/bkt/e?ts=7", headers=AUTH)
    assert r.status_code == 200
    assert await r.get_data() == b"ab"
    assert r.headers["x-reduct-label-n"] == "7"
    assert r.headers["content-type"] == "text/plain"
