"""An instance over its public HTTP API (ReductStore 1.21 or this appliance): both copy ends.

Reads use an entry-level query (``POST /b/{bucket}/{entry}/q``) and v1 batched reads
(``GET /b/{bucket}/{entry}/batch?q=``); writes use v1 batched writes
(``POST /b/{bucket}/{entry}/batch``), whose answer carries one ``x-reduct-error-<ts>`` per
record that failed (409 = already there). The read answer is streamed: each payload goes from
the read socket into the write request chunk by chunk, so a record is never held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from appliance.api.batch_codec import encode_v1_record_header, parse_v1_headers
from appliance.errors import UnprocessableEntity
from appliance.hotcopy.model import CopyError, EntryStat, RecordHeader

QUERY_TTL_SECONDS = 300  # a slow destination may keep a read batch open for long
CONNECT_TIMEOUT_SECONDS = 5.0
IO_TIMEOUT_SECONDS = 60.0
ERROR_PREFIX = "x-reduct-error-"
BATCH_DIRECTIVES = {"#batch_records": 1000}
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def make_client(
    url: str, token: str, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An HTTP client for one instance (Bearer token when given, bounded timeouts)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(IO_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    return httpx.AsyncClient(
        base_url=url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout, transport=transport
    )


class _Body:
    """The payloads of one v1 read answer, consumed in order (``SourceBatch``)."""

    def __init__(self, response: httpx.Response, records: list[RecordHeader], where: str) -> None:
        self.records = records
        self._response = response
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self._offset = 0  # read position in _buffer (slicing the rest off each time is O(n²))
        self._next = 0  # index of the first record not yet consumed
        self._where = where

    async def _take(self, size: int, keep: bool) -> AsyncIterator[bytes]:
        while size > 0:
            if self._offset >= len(self._buffer):
                try:
                    self._buffer = await anext(self._chunks, b"")
                except httpx.HTTPError as exc:
                    raise CopyError(f"{self._where}: read failed: {exc}", transient=True) from exc
                self._offset = 0
                if not self._buffer:
                    raise CopyError(f"{self._where}: the answer ended early", transient=True)
            end = min(self._offset + size, len(self._buffer))
            if keep:
                yield self._buffer[self._offset : end]
            size -= end - self._offset
            self._offset = end

    async def payload(self, record: RecordHeader) -> AsyncIterator[bytes]:
        """The payload of ``record``; records before it are read past."""
        while self._next < len(self.records):
            current = self.records[self._next]
            self._next += 1
            async for piece in self._take(current.size, current is record):
                yield piece
            if current is record:
                return
        raise ValueError(f"record {record.timestamp} is not after the records already read")

    async def drain(self) -> None:
        """Read past what is left, so the connection can serve the next request."""
        for current in self.records[self._next :]:
            async for _ in self._take(current.size, False):
                pass
        self._next = len(self.records)


class Remote:
    """One bucket of one instance, as copy source or destination."""

    def __init__(
        self,
        url: str,
        token: str,
        bucket: str,
        role: str,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_cert: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket = bucket
        self.description = f"{role} {self.url}/{bucket}"
        # ``ca_cert``: a PEM file to trust (a self-signed RS_CERT_PATH); else the system's CAs
        # (and SSL_CERT_FILE/SSL_CERT_DIR, as httpx reads them).
        self._transport = transport or httpx.AsyncHTTPTransport(verify=ca_cert or True)
        self._client = make_client(url, token, self._transport)  # builds requests, owns the pool

    def _path(self, entry: str | None = None, suffix: str = "") -> str:
        path = f"/b/{quote(self.bucket, safe='')}"
        if entry is not None:
            path += "/" + quote(entry, safe="/$")
        return path + suffix

    def _error(self, response: httpx.Response, doing: str) -> CopyError:
        message = response.headers.get("x-reduct-error") or response.reason_phrase or "no reason"
        return CopyError(
            f"{self.description}: {doing} failed: {response.status_code} {message}",
            status=response.status_code,
            transient=response.status_code in TRANSIENT_STATUSES,
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send through the transport: ``AsyncClient.send`` would run its cookie jar over every
        answer, which is quadratic in the header count of a 1000-record batch answer."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def _request(self, method: str, path: str, doing: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._send(self._client.build_request(method, path, **kwargs))
            await response.aread()
            return response
        except httpx.HTTPError as exc:
            raise CopyError(
                f"{self.description}: {doing} failed: {type(exc).__name__}: {exc or 'no answer'}",
                transient=True,
            ) from exc

    async def bucket_info(self) -> dict[str, Any] | None:
        """``GET /b/{bucket}``; None if the bucket does not exist."""
        response = await self._request("GET", self._path(), "reading the bucket")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(response, "reading the bucket")
        info: dict[str, Any] = response.json()
        return info

    async def bucket_settings(self) -> dict[str, Any]:
        """The bucket's settings (CopyError when it does not exist)."""
        info = await self.bucket_info()
        if info is None:
            raise CopyError(
                f"{self.description}: bucket {self.bucket!r} does not exist", status=404
            )
        settings: dict[str, Any] = info["settings"]
        return settings

    async def entries(self) -> list[EntryStat]:
        """Every entry with its statistics (CopyError when the bucket does not exist)."""
        info = await self.bucket_info()
        if info is None:
            raise CopyError(
                f"{self.description}: bucket {self.bucket!r} does not exist", status=404
            )
        return [
            EntryStat(e["name"], e["record_count"], e["oldest_record"], e["latest_record"])
            for e in info.get("entries") or []
        ]

    async def create_bucket(self, settings: Mapping[str, Any]) -> None:
        """``POST /b/{bucket}`` with ``settings``; a bucket created meanwhile is fine."""
        response = await self._request(
            "POST", self._path(), "creating the bucket", json=dict(settings)
        )
        if response.status_code not in (200, 409):
            raise self._error(response, "creating the bucket")

    async def read(
        self, entry: str, start: int | None, stop: int | None, when: Mapping[str, Any] | None
    ) -> AsyncIterator[_Body]:
        """Batches of one entry's records (ascending); each batch's body is read lazily."""
        body: dict[str, Any] = {
            "query_type": "QUERY",
            "start": start,
            "stop": stop,
            "ttl": QUERY_TTL_SECONDS,
        }
        # Bigger read batches than the server's default (85 records) halve the round trips
        # for small records; a server that doesn't know the directive gets the query without.
        condition = {**BATCH_DIRECTIVES, **(when or {})}
        doing = f"querying entry {entry!r}"
        for attempt in (condition, dict(when or {})):
            body["when"] = attempt or None
            response = await self._request("POST", self._path(entry, "/q"), doing, json=body)
            directive_refused = response.status_code == 422 and "#batch" in (
                response.headers.get("x-reduct-error") or ""
            )
            if not directive_refused:
                break
        if response.status_code != 200:
            raise self._error(response, doing)
        query_id = response.json()["id"]
        doing = f"reading entry {entry!r}"
        while True:
            request = self._client.build_request(
                "GET", self._path(entry, "/batch"), params={"q": query_id}
            )
            try:
                answer = await self._send(request)
            except httpx.HTTPError as exc:
                raise CopyError(
                    f"{self.description}: {doing} failed: {exc}", transient=True
                ) from exc
            try:
                if answer.status_code == 204:
                    return
                if answer.status_code != 200:
                    await answer.aread()
                    error = self._error(answer, doing)
                    # 404 here is the query, not the entry: it expired while a slow
                    # destination kept us busy. A new query resumes where we were.
                    error.transient = error.transient or answer.status_code == 404
                    raise error
                try:
                    headers = parse_v1_headers(answer.headers)
                except UnprocessableEntity as exc:
                    raise CopyError(
                        f"{self.description}: {doing}: bad batch header: {exc}"
                    ) from exc
                records = [
                    RecordHeader(entry, h.timestamp, h.content_length, h.content_type, h.labels)
                    for h in headers
                ]
                batch = _Body(answer, records, f"{self.description}: {doing}")
                yield batch
                await batch.drain()
                if answer.headers.get("x-reduct-last") == "true":
                    return
            finally:
                await answer.aclose()

    async def write(
        self, entry: str, records: list[RecordHeader], body: AsyncIterator[bytes]
    ) -> dict[int, tuple[int, str]]:
        """Write ``records`` (ascending) with their payloads from ``body`` in one request.

        Returns ``{timestamp: (status, message)}`` for the records the destination refused.
        """
        headers = dict(encode_v1_record_header(record) for record in records)
        headers["content-length"] = str(sum(record.size for record in records))
        headers["content-type"] = "application/octet-stream"
        doing = f"writing {len(records)} record(s) to entry {entry!r}"
        response = await self._request(
            "POST", self._path(entry, "/batch"), doing, headers=headers, content=body
        )
        if response.status_code != 200:
            raise self._error(response, doing)
        return _record_errors(response.headers.items())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _record_errors(headers: Iterable[tuple[str, str]]) -> dict[int, tuple[int, str]]:
    errors = {}
    for name, value in headers:
        name = name.lower()
        if not name.startswith(ERROR_PREFIX) or not name[len(ERROR_PREFIX) :].isdigit():
            continue
        status, _, message = value.partition(",")
        errors[int(name[len(ERROR_PREFIX) :])] = (int(status) if status.isdigit() else 0, message)
    return errors
