"""Replication endpoints (spec §9): list, detail, create, update, mode, remove (full access).

A REPLICA answers an empty list and 403 to everything else, like ReductStore's read-only
repository; ``dst_token`` is accepted but never returned.
"""

from __future__ import annotations

from quart import Blueprint

from appliance.api import params
from appliance.api.access import full_access, services
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import read_any_body
from appliance.errors import Forbidden, ServiceUnavailable
from appliance.replication import ReplicationManager, ReplicationSettings, parse_mode
from appliance.services import STARTING_MESSAGE

blueprint = Blueprint("replications", __name__)


def _manager(action: str) -> ReplicationManager:
    svc = services()
    if svc.role.read_only:
        raise Forbidden(f"Cannot {action} in read-only mode")
    manager = svc.replications
    if manager is None:
        raise ServiceUnavailable(STARTING_MESSAGE)
    return manager


def _writable_manager(action: str) -> ReplicationManager:
    """``_manager`` for a change: also passes the write fence (503 on a deposed holder)."""
    manager = _manager(action)
    services().fence.check(io=False)
    return manager


async def _settings() -> ReplicationSettings:
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    return ReplicationSettings.from_json(params.json_body(body))


@blueprint.route("/replications", methods=["GET"])
async def list_replications() -> Response:
    """``{"replications": [ReplicationInfo]}``."""
    full_access()
    svc = services()
    manager = svc.replications
    if svc.role.read_only or manager is None:
        return json_response({"replications": []})
    return json_response({"replications": manager.list_json()})


@blueprint.route("/replications/<name>", methods=["GET"])
async def get_replication(name: str) -> Response:
    """Info, settings (token hidden) and hourly diagnostics of one task."""
    full_access()
    return json_response(_manager("get replication").detail_json(name))


@blueprint.route("/replications/<name>", methods=["POST"])
async def create_replication(name: str) -> Response:
    """Create a task."""
    full_access()
    manager = _writable_manager("create replication")
    await manager.create(name, await _settings())
    return Response(b"", status=200)


@blueprint.route("/replications/<name>", methods=["PUT"])
async def update_replication(name: str) -> Response:
    """Replace a task's settings (the token is kept when none is sent)."""
    full_access()
    manager = _writable_manager("update replication")
    manager.get(name)  # 404 before validating the body
    await manager.update(name, await _settings())
    return Response(b"", status=200)


@blueprint.route("/replications/<name>/mode", methods=["PATCH"])
async def set_mode(name: str) -> Response:
    """Change only the mode (provisioned tasks too)."""
    full_access()
    manager = _writable_manager("update replication mode")
    svc = services()
    body = params.json_object(await read_any_body(svc.settings.io_operation_timeout))
    manager.get(name)
    await manager.set_mode(name, parse_mode(body.get("mode")))
    return Response(b"", status=200)


@blueprint.route("/replications/<name>", methods=["DELETE"])
async def remove_replication(name: str) -> Response:
    """Remove a task and its transaction logs."""
    full_access()
    manager = _writable_manager("remove replication")
    await manager.remove(name)
    return Response(b"", status=200)
