"""Instance endpoints (spec §2): ``/alive``, ``/ready``, ``/info``, ``/list``, ``/me``, and the
empty list reduct-py's fixtures used to call (replications: ``api/replications.py``, lifecycles:
``api/lifecycles.py``). The HTTP server process itself is ``appliance/server.py``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart import Blueprint

from appliance import REDUCTSTORE_VERSION
from appliance.api.access import authenticate, services
from appliance.api.response import ApiResponse as Response
from appliance.auth import can_read
from appliance.engine.models import U64_MAX
from appliance.errors import ServiceUnavailable
from appliance.events import SYSTEM_BUCKET
from appliance.services import STARTING_MESSAGE

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.engine.models import BucketInfo
    from appliance.services import Services

blueprint = Blueprint("server", __name__)


def json_response(value: Any) -> Response:
    """A compact JSON 200 response."""
    return Response(
        json.dumps(value, separators=(",", ":")), status=200, content_type="application/json"
    )


def bucket_info_json(info: BucketInfo, *, is_provisioned: bool) -> dict[str, Any]:
    """ReductStore's ``BucketInfo`` object (provisioning, not the engine, knows the flag)."""
    return {
        "name": info.name,
        "entry_count": info.entry_count,
        "size": info.size,
        "oldest_record": info.oldest_record,
        "latest_record": info.latest_record,
        "is_provisioned": is_provisioned,
        "status": info.status,
    }


def _bucket_infos(storage: Storage) -> list[BucketInfo]:
    # `$system` is the instance's own (appliance.events): reachable by name, never listed or
    # counted, so "remove every listed bucket" scripts and bucket counts keep working.
    infos = []
    for name in sorted(n for n in storage.bucket_names() if n != SYSTEM_BUCKET):
        try:
            infos.append(storage.get_bucket(name).info())
        except Exception:  # noqa: BLE001 - removed concurrently; skip it
            continue
    return infos


@blueprint.route("/alive", methods=["GET", "HEAD"])
async def alive() -> Response:
    """Liveness: 200 as soon as HTTP is served."""
    return Response(b"", status=200)


@blueprint.route("/ready", methods=["GET", "HEAD"])
async def ready() -> Response:
    """Readiness: 200 once the engine is open (the app gate answers 503 before)."""
    if not services().ready:
        raise ServiceUnavailable(STARTING_MESSAGE)
    return Response(b"", status=200)


@blueprint.route("/info", methods=["GET"])
async def info() -> Response:
    """Instance information, with ReductStore's oldest/latest quirks (spec §2), plus the
    provisioning status (source, last reload, last error; names only, never a secret) and the
    role's state (lease generation, replica staleness). Clients ignore fields they do not
    know, as reduct-py does."""
    authenticate()
    svc = services()
    storage = svc.engine
    infos = await svc.workers.run(_bucket_infos, storage)
    settings = svc.settings
    oldest = min((i.oldest_record for i in infos), default=U64_MAX)
    latest = max((i.latest_record for i in infos), default=0)
    return json_response(
        {
            "version": REDUCTSTORE_VERSION,
            "instance_name": settings.effective_instance_name,
            "instance_role": settings.instance_role.value,
            "bucket_count": len(infos),
            "usage": sum(i.size for i in infos),
            "uptime": svc.uptime_seconds,
            "oldest_record": oldest,
            "latest_record": latest,
            "defaults": {"bucket": svc.defaults.to_json()},
            "license": None,
            "provisioning": svc.provisioning.to_json(),
            "role": role_json(svc),
            "backup": svc.backups.info(),
            # Where the data lives, for the console's dashboard (a remote backend adds
            # `unsynced_bytes`); never a server path.
            "storage": (
                {"backend": "s3", "unsynced_bytes": svc.mirror.unsynced_bytes}
                if svc.mirror is not None
                else {"backend": "folder"}
            ),
            "disk": await svc.workers.run(storage.disk_info),
            **({"remote": svc.mirror.info()} if svc.mirror is not None else {}),
        }
    )


def role_json(svc: Services) -> dict[str, Any]:
    """The role's state for operators: lease state and generation, or replica staleness."""
    status = svc.role.status()
    manager = getattr(svc.role, "manager", None)  # a PRIMARY/SECONDARY's lease manager
    age = getattr(manager, "renewal_age_s", None)
    return {
        "state": status.state,
        "ready": status.ready,
        "generation": status.generation,
        "detail": status.detail,
        "owner": getattr(manager, "owner", None),
        "renewal_age_s": None if age is None else round(age, 3),
    }


@blueprint.route("/list", methods=["GET"])
async def list_buckets() -> Response:
    """Buckets the caller may read, sorted by name."""
    token = authenticate()
    svc = services()
    infos = await svc.workers.run(_bucket_infos, svc.engine)
    provisioned = svc.provisioning.is_bucket_provisioned
    visible = [
        bucket_info_json(i, is_provisioned=provisioned(i.name))
        for i in infos
        if can_read(token.name, token.permissions, i.name)
    ]
    return json_response({"buckets": visible})


@blueprint.route("/me", methods=["GET"])
async def me() -> Response:
    """The caller's token (value blanked)."""
    token = authenticate()
    return json_response(token.to_json(services().tokens.now()))


