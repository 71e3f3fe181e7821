"""crc_at: the CRC32C of a slice of a bytes object, checked in place (no copy) or copied."""

from __future__ import annotations

import os
import random

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



def test_running_checksums_check_any_span_of_the_payloads_joined() -> None:
    """``extend(chain[lo], joined payloads lo..hi) == chain[hi]`` for every span, whatever
    the sizes (empty, odd, above the zero-run cache), derived from the checksums alone."""
    rng = random.Random(7)
    sizes = [rng.choice([0, 1, 3, 1024, 4095, 5000, 70_000]) for _ in range(40)]
    payloads = [rng.randbytes(size) for size in sizes]
    chain = crc_view.running_checksums([google_crc32c.value(p) for p in payloads], sizes)
    assert len(chain) == len(payloads) + 1 and chain[0] == 0
    for lo in range(len(payloads)):
        assert chain[lo] == google_crc32c.value(b"".join(payloads[:lo]))
        for hi in range(lo + 1, len(payloads) + 1, 3):
            assert google_crc32c.extend(chain[lo], b"".join(payloads[lo:hi])) == chain[hi]


def test_running_checksums_catch_damage_and_swapped_records() -> None:
    """A flipped bit anywhere in a span, or two records of one size swapped, fails the
    span's check, as the per-record checks would."""
    rng = random.Random(11)
    payloads = [rng.randbytes(1024) for _ in range(85)]
    chain = crc_view.running_checksums([google_crc32c.value(p) for p in payloads], [1024] * 85)
    span = b"".join(payloads[10:60])
    assert google_crc32c.extend(chain[10], span) == chain[60]
    for at in rng.sample(range(len(span)), 200):
        damaged = bytearray(span)
        damaged[at] ^= 1 << rng.randrange(8)
        assert google_crc32c.extend(chain[10], bytes(damaged)) != chain[60]
    swapped = payloads[10:60]
    swapped[3], swapped[4] = swapped[4], swapped[3]
    assert google_crc32c.extend(chain[10], b"".join(swapped)) != chain[60]


def test_extending_by_zeros_in_pieces_equals_extending_by_the_zero_bytes() -> None:
    """Records above the zero piece's size are shifted in pieces: the same checksum."""
    for size in (1, 65_535, 65_536, 65_537, 200_000, 1 << 20):
        assert crc_view._extend_zeros(0x1234, size) == google_crc32c.extend(0x1234, bytes(size))
