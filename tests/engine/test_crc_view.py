"""crc_at: the CRC32C of a slice of a bytes object, checked in place (no copy) or copied."""

from __future__ import annotations

import os

import google_crc32c
import pytest

from appliance.engine import crc_view


@pytest.mark.parametrize("in_place", [True, False])
def test_crc_at_equals_the_checksum_of_the_slice(in_place: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if in_place:
        assert crc_view.available()  # the library google_crc32c bundles was found and agrees
    else:
        monkeypatch.setattr(crc_view, "_VALUE", None)
    data = os.urandom(3 * 1024 * 1024 + 17)
    for offset, size in ((0, len(data)), (1, 1024 * 1024), (12_345, 100_000), (7, 4096),
                         (9, 4095), (len(data) - 5, 5), (100, 0)):
        assert crc_view.crc_at(data, offset, size) == google_crc32c.value(data[offset : offset + size])


def test_a_slice_past_the_buffer_is_refused_not_read() -> None:
    data = bytes(8192)
    with pytest.raises(ValueError):
        crc_view.crc_at(data, 4096, 8192)
    with pytest.raises(ValueError):
        crc_view.crc_at(data, -1, 10)
