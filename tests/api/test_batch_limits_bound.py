"""``check_batch_limits`` skips its per-header count when a C-level upper bound (every header a
record, all header bytes record-header bytes) is within both limits (issue 15). These are the
requests where the bound is over a limit and the exact count must decide, either way."""

from __future__ import annotations

from typing import Any

API = "/api/v1"


def _size(headers: dict[str, str]) -> int:
    """Record-header bytes as the limit counts them: Σ len(name) + len(value) + 2."""
    return sum(len(k) + len(v) + 2 for k, v in headers.items() if k.startswith("x-reduct-time-"))


async def test_other_headers_over_the_bound_do_not_count(harness_factory: Any) -> None:
    records = {f"x-reduct-time-{ts}": "1,text/plain" for ts in range(1, 21)}
    h = await harness_factory(io_batch_max_metadata_size=_size(records), io_batch_max_write_records=20)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    # A long non-record header and more headers than records allowed: only the bound is over.
    headers = {**records, "x-padding": "p" * 5_000, "x-a": "1", "x-b": "2", "Content-Length": "20"}
    r = await h.client.post(API + "/b/bkt/e/batch", data=b"x" * 20, headers=headers)
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    assert h.services.engine.get_bucket("bkt").get_entry("e").info().record_count == 20


async def test_record_headers_one_byte_over_the_limit_are_413(harness_factory: Any) -> None:
    records = {f"x-reduct-time-{ts}": "1,text/plain" for ts in range(1, 21)}
    h = await harness_factory(io_batch_max_metadata_size=_size(records) - 1)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    for path, headers in (
        ("/b/bkt/e/batch", {**records, "Content-Length": "20"}),
        ("/io/bkt/write", {**{f"x-reduct-0-{d}": "1,text/plain" for d in range(40)},
                           "x-reduct-entries": "e", "x-reduct-start-ts": "1",
                           "Content-Length": "40"}),
    ):
        r = await h.client.post(API + path, data=b"x" * int(headers["Content-Length"]),
                                headers=headers)
        assert r.status_code == 413, path
        assert "RS_IO_BATCH_MAX_METADATA_SIZE" in r.headers["x-reduct-error"]
    assert h.services.engine.get_bucket("bkt").entries() == []


async def test_more_records_than_allowed_among_few_headers_are_413(harness_factory: Any) -> None:
    h = await harness_factory(io_batch_max_write_records=5, io_batch_max_metadata_size=1_000_000)
    assert (await h.client.post(API + "/b/bkt")).status_code == 200
    headers = {f"x-reduct-time-{ts}": "1,text/plain" for ts in range(1, 7)}
    r = await h.client.post(API + "/b/bkt/e/batch", data=b"x" * 6,
                            headers={**headers, "Content-Length": "6"})
    assert r.status_code == 413
    assert r.headers["x-reduct-error"] == (
        "Too many records in batch: 6, at most 5 (RS_IO_BATCH_MAX_WRITE_RECORDS)"
    )
