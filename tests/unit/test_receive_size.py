"""``server.set_receive_size`` (how much Hypercorn reads from a socket at a time) and
``server.tune_malloc``."""

from __future__ import annotations

import pytest
from hypercorn.asyncio import tcp_server

from appliance.server import RECV_BYTES, RECV_ENV, set_receive_size


@pytest.fixture(autouse=True)
def _restore() -> object:
    before = tcp_server.MAX_RECV
    yield
    tcp_server.MAX_RECV = before


def test_set_receive_size_defaults_to_hypercorns_64_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RECV_ENV, raising=False)
    tcp_server.MAX_RECV = 1
    assert set_receive_size() == RECV_BYTES == 64 * 1024
    assert tcp_server.MAX_RECV == RECV_BYTES  # read by TCPServer._read_data on every read


def test_set_receive_size_takes_an_explicit_size_and_the_benchmark_knob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RECV_ENV, raising=False)
    assert set_receive_size(256 * 1024) == tcp_server.MAX_RECV == 256 * 1024
    monkeypatch.setenv(RECV_ENV, "131072")
    assert set_receive_size() == tcp_server.MAX_RECV == 131072


def test_set_receive_size_refuses_a_bad_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import ConfigError

    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv(RECV_ENV, bad)
        with pytest.raises(ConfigError, match=RECV_ENV):
            set_receive_size()


def test_tune_malloc_applies_on_glibc_unless_the_knob_says_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    from appliance.server import MALLOC_ENV, tune_malloc

    monkeypatch.setenv(MALLOC_ENV, "default")
    assert tune_malloc() is False
    monkeypatch.delenv(MALLOC_ENV)
    if platform.libc_ver()[0] == "glibc":
        assert tune_malloc() is True  # mallopt accepted both values


BUFFER_FAULTS = """
import resource
from appliance.server import tune_malloc

assert tune_malloc()
size = 8 * 1024 * 1024 + 64 * 1024  # a read span of eight 1 MiB records and a little more
buf = bytearray(size)  # the first one is faulted in whatever the policy
del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buf = bytearray(size)  # zero-filled: every page is touched
    del buf
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_tune_malloc_reuses_batch_sized_buffers_instead_of_faulting_them_in() -> None:
    """A batched read's body (up to ``PRELOAD_BATCH_BYTES``, a span of 8 MiB for eight 1 MiB
    records) comes from the heap and is reused: with an 8 MiB mmap threshold every such
    buffer was a fresh mapping, ~2,000 page faults each."""
    import platform
    import subprocess
    import sys

    from appliance.server import MALLOC_MMAP_BYTES
    from appliance.sizes import PRELOAD_BATCH_BYTES

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert MALLOC_MMAP_BYTES > PRELOAD_BATCH_BYTES
    out = subprocess.run(
        [sys.executable, "-c", BUFFER_FAULTS], capture_output=True, text=True, check=True
    )
    pages = 20 * (8 * 1024 * 1024 + 64 * 1024) // 4096
    assert int(out.stdout) < pages // 10, out.stdout  # not one fault per page per buffer


def test_install_http1_reads_whole_chunks_with_the_chunk_reader_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's read size follows what ``appliance.http1`` installed: a transport's whole
    chunk with the chunk reader, Hypercorn's 64 KiB with asyncio's reader or stock h11."""
    from appliance import http1
    from appliance.http1.reader import WHOLE_CHUNK_BYTES
    from appliance.server import install_http1

    if not http1._versions_verified():
        pytest.skip("h11/Hypercorn version not verified for appliance.http1")
    monkeypatch.delenv(RECV_ENV, raising=False)
    http1.uninstall()
    try:
        for env, expected in ((None, WHOLE_CHUNK_BYTES), ("stock", RECV_BYTES)):
            if env is None:
                monkeypatch.delenv(http1.READER_ENV, raising=False)
            else:
                monkeypatch.setenv(http1.READER_ENV, env)
            assert install_http1() is True
            assert tcp_server.MAX_RECV == expected
            http1.uninstall()
        monkeypatch.setenv(http1.PARSER_ENV, "h11")
        assert install_http1() is False
        assert tcp_server.MAX_RECV == RECV_BYTES
    finally:
        http1.uninstall()
