"""The web console's files: served from the package under the base path, nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.api.conftest import TOKEN, Harness

Factory = Callable[..., Awaitable[Harness]]


async def test_console_files_are_served_with_their_types_and_policy(
    harness_factory: Factory,
) -> None:
    h = await harness_factory(api_token=TOKEN, api_base_path="/edge/")
    r = await h.client.get("/edge/")
    assert r.status_code == 302 and r.headers["Location"] == "/edge/ui/"
    r = await h.client.get("/edge/ui")
    assert r.status_code == 302 and r.headers["Location"] == "/edge/ui/"
    for path, kind in (
        ("/edge/ui/", "text/html"),
        ("/edge/ui/app.js", "text/javascript"),
        ("/edge/ui/style.css", "text/css"),
    ):
        r = await h.client.get(path)  # no token: the files are public, the API is not
        assert r.status_code == 200, path
        assert r.headers["content-type"] == f"{kind}; charset=utf-8"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-reduct-api"] == "1.21"
    html = (await (await h.client.get("/edge/ui/")).get_data()).decode()
    assert 'src="app.js"' in html and "http" not in html.replace("http-equiv", "")  # no CDN
    r = await h.client.head("/edge/ui/app.js")
    assert r.status_code == 200
    assert await r.get_data() == b""


async def test_console_refuses_anything_outside_its_folder(harness_factory: Factory) -> None:
    h = await harness_factory()
    for path in (
        "/ui/../app.py",
        "/ui/__init__.py/..",
        "/ui/.hidden",
        "/ui/nope.js",
        "/ui/%2e%2e/app.py",
    ):
        r = await h.client.get(path)
        assert r.status_code == 404, path
        assert r.headers["x-reduct-error"] == "Not found"
    assert (await h.client.post("/ui/")).status_code == 405


async def test_console_is_served_while_the_storage_opens(harness_factory: Factory) -> None:
    h = await harness_factory(wait=False)
    assert (await h.client.get("/ui/")).status_code == 200


async def test_info_carries_what_the_dashboard_shows(harness_factory: Factory) -> None:
    h = await harness_factory()
    info = await (await h.client.get("/api/v1/info")).get_json()
    for key in ("instance_name", "version", "uptime", "usage", "bucket_count", "instance_role"):
        assert key in info, key
    assert set(info["role"]) >= {"state", "generation", "detail", "owner", "renewal_age_s"}
    assert set(info["provisioning"]) >= {"ok", "source", "last_reload", "last_error"}
    assert info["storage"] == {"backend": "folder"}
