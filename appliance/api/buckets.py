"""Bucket endpoints (spec §3): create, get, head, update settings, remove, rename.

A provisioned bucket (env group or YAML, ``provisioning``) is owned by its declaration: the API
may read and write its records, but changing its settings, removing or renaming it is 409.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from quart import Blueprint, request

from appliance.api import params
from appliance.api.access import authenticate, full_access, read_access, services
from appliance.api.params import bucket_name, json_object, new_name, opt_u64
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import bucket_info_json, json_response
from appliance.api.streaming import parse_body, read_any_body
from appliance.engine.models import BucketSettings, QuotaType
from appliance.engine.names import is_meta_entry
from appliance.errors import Conflict, UnprocessableEntity

if TYPE_CHECKING:
    from appliance.engine import Storage

blueprint = Blueprint("buckets", __name__)
# Every numeric setting is a u64 (opt_u64); a block must hold at least one byte and one record
# (0 would make every write start a new block, or none fit).
SETTING_MINIMUMS = {"quota_size": 0, "max_block_size": 1, "max_block_records": 1}


def parse_settings(body: bytes) -> dict[str, Any]:
    """The non-null fields of a ``BucketSettings`` JSON body (empty body → no fields)."""
    obj = json_object(body, allow_empty=True)
    fields: dict[str, Any] = {}
    quota = obj.get("quota_type")
    if quota is not None:
        try:
            fields["quota_type"] = QuotaType(quota)
        except ValueError:
            raise UnprocessableEntity(
                f"Invalid JSON: unknown variant `{quota}`, expected one of `NONE`, `FIFO`, `HARD`"
            ) from None
    for key, minimum in SETTING_MINIMUMS.items():
        value = opt_u64(obj, key)
        if value is not None:
            if value < minimum:
                raise UnprocessableEntity(
                    f"Invalid JSON: invalid value {value} for `{key}`, expected at least {minimum}"
                )
            fields[key] = value
    return fields


def refuse_if_provisioned(name: str, action: str) -> None:
    """409 ``Can't <action> provisioned bucket '<name>'`` (spec §3) for a provisioned bucket."""
    if services().provisioning.is_bucket_provisioned(name):
        raise Conflict(f"Can't {action} provisioned bucket '{name}'")


def check_change(name: str, action: str, new: str | None = None) -> None:
    """The checks before changing bucket ``name`` (settings, removal, rename), in this order:
    full access (401/403), valid names (422), a writable instance (403/503), not provisioned
    (409)."""
    full_access()
    bucket_name(name)
    if new is not None:
        params.user_bucket_name(new)
    services().fence.check(io=False)
    refuse_if_provisioned(name, action)


def _full_info(storage: Storage, name: str, is_provisioned: bool) -> dict[str, Any]:
    bucket = storage.get_bucket(name)
    info = bucket.info()
    entries = [
        {
            "name": e.name,
            "size": e.size,
            "record_count": e.record_count,
            "block_count": e.block_count,
            "oldest_record": e.oldest_record,
            "latest_record": e.latest_record,
            "status": e.status,
        }
        for e in sorted(bucket.entries(), key=lambda e: e.name)
        if not is_meta_entry(e.name)
    ]
    info_json = bucket_info_json(
        replace(info, entry_count=len(entries)), is_provisioned=is_provisioned
    )
    return {"info": info_json, "settings": bucket.settings.to_json(), "entries": entries}


def _update(storage: Storage, name: str, fields: dict[str, Any]) -> None:
    storage.get_bucket(name).update_settings(**fields)


@blueprint.route("/b/<name>", methods=["POST"])
async def create(name: str) -> Response:
    """Create a bucket; missing settings come from ``RS_DEFAULTS_BUCKET_*``."""
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    fields = await parse_body(svc, parse_settings, body)
    full_access()
    params.user_bucket_name(name)
    svc.fence.check(io=False)
    settings: BucketSettings = svc.defaults.merged(**fields)
    await svc.workers.run(svc.engine.create_bucket, name, settings)
    return Response(b"", status=200)


@blueprint.route("/b/<name>", methods=["GET", "HEAD"])
async def get(name: str) -> Response:
    """Full bucket information: info, settings and visible entries (HEAD: existence)."""
    bucket_name(name)
    if request.method == "HEAD":
        return await head(name)
    read_access(name)
    svc = services()
    provisioned = svc.provisioning.is_bucket_provisioned(name)
    return json_response(await svc.workers.run(_full_info, svc.engine, name, provisioned))


async def head(name: str) -> Response:
    """Existence check; any valid token may ask."""
    bucket_name(name)
    authenticate()
    svc = services()
    await svc.workers.run(svc.engine.get_bucket, name)
    return Response(b"", status=200)


@blueprint.route("/b/<name>", methods=["PUT"])
async def update(name: str) -> Response:
    """Partial settings update: null/missing fields keep their current values."""
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    fields = await parse_body(svc, parse_settings, body)
    # ReductStore leaves a settings change unguarded on a replica; we refuse it (403).
    check_change(name, "change settings of")
    await svc.workers.run(_update, svc.engine, name, fields)
    return Response(b"", status=200)


@blueprint.route("/b/<name>", methods=["DELETE"])
async def remove(name: str) -> Response:
    """Remove a bucket and strip it from token permissions."""
    check_change(name, "remove")
    svc = services()
    await svc.workers.run(svc.engine.remove_bucket, name)
    await svc.workers.run(svc.tokens.remove_bucket, name)
    return Response(b"", status=200)


@blueprint.route("/b/<name>/rename", methods=["PUT"])
async def rename(name: str) -> Response:
    """Rename a bucket; token permission lists follow."""
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    new = await parse_body(svc, new_name, body)
    check_change(name, "rename", new)
    await svc.workers.run(svc.engine.rename_bucket, name, new)
    await svc.workers.run(svc.tokens.rename_bucket, name, new)
    return Response(b"", status=200)
