"""Backup endpoints (issue 12): create, list, verify, delete, and lifting the restored mark.

All need full access. The target is the request's (JSON ``target`` for create, ``?target=``
for the others) or ``RS_BACKUP_TARGET``.
"""

from __future__ import annotations

from quart import Blueprint, request

from appliance.api.access import full_access, services
from appliance.api.params import bucket_name, json_object
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import read_any_body
from appliance.errors import UnprocessableEntity

blueprint = Blueprint("backups", __name__)


def _target() -> str | None:
    return request.args.get("target") or None


@blueprint.route("/backups", methods=["POST"])
async def create() -> Response:
    """Take a consistent online backup now: ``{"target"?, "buckets"?}``."""
    svc = services()
    body = json_object(await read_any_body(svc.settings.io_operation_timeout), allow_empty=True)
    full_access()
    target = body.get("target")
    buckets = body.get("buckets")
    if target is not None and not isinstance(target, str):
        raise UnprocessableEntity("'target' must be a string")
    if buckets is not None:
        if not isinstance(buckets, list) or not all(isinstance(b, str) for b in buckets):
            raise UnprocessableEntity("'buckets' must be a list of bucket names")
        buckets = sorted({bucket_name(b) for b in buckets})
    result = await svc.backups.create(target, buckets)
    return json_response(result.to_json())


@blueprint.route("/backups", methods=["GET"])
async def list_backups() -> Response:
    """Every backup in the target, oldest first, incomplete ones included."""
    full_access()
    found = await services().backups.list(_target())
    return json_response({"backups": [b.to_json() for b in found]})


@blueprint.route("/backups/<backup>/verify", methods=["POST"])
async def verify(backup: str) -> Response:
    """Check a backup against its manifest and scrub its payloads (``ok`` false if damaged)."""
    full_access()
    report = await services().backups.verify(backup, _target())
    return json_response(report.to_json())


@blueprint.route("/backups/<backup>", methods=["DELETE"])
async def delete(backup: str) -> Response:
    """Delete one backup; the others keep the files they share with it."""
    full_access()
    await services().backups.delete(backup, _target())
    return Response(b"", status=200)


@blueprint.route("/set-read-write", methods=["POST"])
async def set_read_write() -> Response:
    """Lift the read-only mode of an instance restored from a backup."""
    full_access()
    was = await services().backups.set_read_write()
    return json_response({"read_only": False, "was_read_only": was})
