"""Corruption over HTTP: the client learns which block/record is damaged and how, the log also
learns the file and offset; no server path ever reaches a response (app.py's error handler)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions
from tests.api.conftest import Harness

API = "/api/v1"


def flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))


async def error_of(h: Harness, url: str) -> tuple[str, str]:
    r = await h.client.get(API + url)
    assert r.status_code == 500
    header = r.headers["x-reduct-error"]
    detail = json.loads(await r.get_data())["detail"]
    assert header == detail
    return header, detail


def assert_no_server_path(text: str, data_path: Path) -> None:
    assert str(data_path) not in text
    assert "/" + data_path.parts[1] not in text  # not even a shortened absolute path
    assert ".blk" not in text and ".meta" not in text


async def test_corruption_payload_message_hides_server_path(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    data_path = h.services.settings.data_path
    assert (await h.client.post(API + "/b/demo")).status_code == 200
    r = await h.client.post(
        API + "/b/demo/sensor?ts=21", data=b"payload!", headers={"Content-Length": "8"}
    )
    assert r.status_code == 200
    block_file = data_path / "demo" / "sensor" / "21.blk"
    flip(block_file, 0)
    with caplog.at_level(logging.ERROR):
        header, detail = await error_of(h, "/b/demo/sensor?ts=21")
    for text in (header, detail):
        assert_no_server_path(text, data_path)
    # The log keeps what an operator needs to find the damage: file and offset.
    assert f"file {block_file}, offset 0" in caplog.text
    assert "payload checksum mismatch" in caplog.text
    # The client learns which record of which block is damaged and how, nothing about files.
    assert header == "Record 21 in block demo/sensor/21 is corrupted: payload checksum mismatch"



async def test_corruption_block_message_names_block_and_damage_only(
    harness_factory: Callable[..., Awaitable[Harness]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data_path = tmp_path / "corrupt-data"
    storage = Storage.open(EngineOptions(data_path=data_path))
    bucket = storage.create_bucket("demo", BucketSettings(max_block_records=2))
    for ts in (1, 2, 3, 4):
        bucket.write_record("sensor", ts, b"x", "application/octet-stream", {})
    storage.close()
    h = await harness_factory(data_path=data_path)
    meta = data_path / "demo" / "sensor" / "1.meta"
    flip(meta, len(meta.read_bytes()) // 2)  # after startup: found when the block is loaded
    with caplog.at_level(logging.ERROR):
        header, detail = await error_of(h, "/b/demo/sensor?ts=1")
    assert_no_server_path(header, data_path)
    assert header.startswith("Block demo/sensor/1 is corrupted: block descriptor is corrupted at")
    assert header.endswith("checksum mismatch")
    assert str(meta) in caplog.text  # the log names the file
    assert (await h.client.get(API + "/b/demo/sensor?ts=3")).status_code == 200
