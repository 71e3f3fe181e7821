"""Routing of ``/b/{bucket}/{rest}``: entry names contain ``/``, so the sub-resource is chosen
by suffix (spec §0.2): ``.../batch`` (batch v1), ``.../q`` (queries), ``.../rename`` (PUT only),
otherwise the entry itself. Names are validated here, before authentication."""

from __future__ import annotations

from quart import Blueprint, request

from appliance.api import batch_v1, queries, records
from appliance.api.params import bucket_name, entry_name
from appliance.api.response import ApiResponse as Response
from appliance.errors import NotFound

blueprint = Blueprint("entries", __name__)

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _split(rest: str, suffix: str) -> str | None:
    if rest.endswith(suffix) and len(rest) > len(suffix):
        return rest[: -len(suffix)]
    return None


@blueprint.route("/b/<bucket>/<path:rest>", methods=_METHODS)
async def dispatch(bucket: str, rest: str) -> Response:
    """Send the request to the handler of the addressed sub-resource."""
    method = request.method
    bucket_name(bucket)
    if method == "PUT":
        entry = _split(rest, "/rename")
        if entry is None:
            raise NotFound("Not found")
        return await records.rename_entry(bucket, entry_name(entry))

    entry = _split(rest, "/batch")
    if entry is not None:
        entry_name(entry)
        if method in ("GET", "HEAD"):
            return await batch_v1.read(bucket, entry)
        if method == "POST":
            return await batch_v1.write(bucket, entry)
        if method == "PATCH":
            return await batch_v1.update(bucket, entry)
        return await batch_v1.remove(bucket, entry)

    entry = _split(rest, "/q")
    if entry is not None and method != "PATCH":
        entry_name(entry)
        if method in ("GET", "HEAD"):
            return await queries.legacy_create(bucket, entry)
        if method == "POST":
            return await queries.post_entry_query(bucket, entry)
        return await queries.legacy_remove(bucket, entry)

    entry = entry_name(rest)
    if method in ("GET", "HEAD"):
        return await records.read(bucket, entry)
    if method == "POST":
        return await records.write(bucket, entry)
    if method == "PATCH":
        return await records.update_labels(bucket, entry)
    if request.query_string:
        return await records.remove_record(bucket, entry)
    return await records.remove_entry(bucket, entry)
