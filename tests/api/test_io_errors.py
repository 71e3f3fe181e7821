"""Over HTTP: storage OSErrors arrive as 507 / 503 / 422 / 500 with a clear message, never as
"Internal server error: OSError" and never with a server path (issue 9 item 3)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from appliance.engine import fs_ops
from tests.api.conftest import Harness

API = "/api/v1"


def oserror(code: int, path: str) -> OSError:
    """An OSError as the kernel reports it (with the file name)."""
    return OSError(code, os.strerror(code), path)


async def test_io_errors_full_disk_bucket_creation_is_507(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes, sync: bool = True) -> None:
        raise oserror(errno.ENOSPC, str(path))

    monkeypatch.setattr(fs_ops, "atomic_write", full)
    r = await h.client.post(API + "/b/full")
    assert r.status_code == 507
    assert "disk space" in r.headers["x-reduct-error"]
    assert str(h.services.settings.data_path) not in r.headers["x-reduct-error"]
    monkeypatch.undo()
    assert (await h.client.get(API + "/b/full")).status_code == 404


@pytest.mark.parametrize(
    ("code", "status", "text"),
    [
        (errno.EMFILE, 503, "Too many open files"),
        (errno.ENAMETOOLONG, 422, "too long"),
        (errno.EIO, 500, "Storage error while trying to write the record"),
    ],
)
async def test_io_errors_write_maps_errno(
    h: Harness, monkeypatch: pytest.MonkeyPatch, code: int, status: int, text: str
) -> None:
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    real_open = os.open

    def failing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".blk"):
            raise oserror(code, str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing)
    r = await h.client.post(API + "/b/bkt/e?ts=1", data=b"abc", headers={"Content-Length": "3"})
    monkeypatch.undo()
    assert r.status_code == status, r.headers
    message = r.headers["x-reduct-error"]
    assert text in message and "OSError" not in message and ".blk" not in message
    assert (await h.client.get(API + "/alive")).status_code == 200
