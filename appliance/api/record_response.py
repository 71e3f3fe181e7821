"""The single-record response, shared by plain reads and entry-level query reads.

Its own module (not ``response.py``) because ``connection.py`` imports the response class and
``streaming.py`` imports ``connection.py``: the payload stream cannot go beside the class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api.response import ApiResponse as Response
from appliance.api.streaming import payload_stream
from appliance.engine.models import RecordMeta
from appliance.engine.readable import check_readable

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.services import Services


def record_headers(entry: str, meta: RecordMeta) -> dict[str, str]:
    """Headers of a single-record response (Content-Length is set by the caller)."""
    headers = {
        "Content-Type": meta.content_type,
        "Content-Disposition": "attachment",
        "x-reduct-time": str(meta.timestamp),
        "x-reduct-entry": entry,
    }
    for name, value in meta.labels.items():
        headers["x-reduct-label-" + name] = value
    return headers


def check_state(bucket: str, entry: str, meta: RecordMeta) -> None:
    """Raise 425 for a record still being written and 500 for a broken one."""
    check_readable(meta.timestamp, meta.state, f"{bucket}/{entry}")


def record_response(
    svc: Services, storage: Storage, bucket: str, entry: str, meta: RecordMeta,
    payload: bytes | None, head: bool, opened: Any = None,
) -> Response:
    """A single-record response; streams the payload when it was not read inline (from
    ``opened``, an iterator opened while collecting, when given)."""
    headers = record_headers(entry, meta)
    if head:
        response = Response(b"", status=200, headers=headers)
    elif payload is not None:
        response = Response(payload, status=200, headers=headers)
    else:
        def open_iter() -> Any:
            if opened is not None:
                return opened
            return iter(storage.get_bucket(bucket).get_entry(entry).iter_payload(meta))

        response = Response(payload_stream(svc, open_iter), status=200, headers=headers)
    response.headers["Content-Length"] = str(meta.size)
    return response
