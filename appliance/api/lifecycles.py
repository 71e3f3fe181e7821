"""Lifecycle endpoints (spec §10, full access): list, detail, create, update, mode, remove.

On a REPLICA the list is empty and every other call is 403, as in ReductStore.
"""

from __future__ import annotations

from quart import Blueprint

from appliance.api import params
from appliance.api.access import full_access, services
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import read_any_body
from appliance.errors import Forbidden, UnprocessableEntity
from appliance.lifecycle import LifecycleManager, LifecyclePolicy, parse_policy
from appliance.lifecycle.policy import parse_mode

blueprint = Blueprint("lifecycles", __name__)


def _manager(action: str) -> LifecycleManager:
    svc = services()
    if svc.role.read_only:
        raise Forbidden(f"Cannot {action} in read-only mode")
    return svc.lifecycles


@blueprint.route("/lifecycles", methods=["GET"])
async def list_lifecycles() -> Response:
    """``GET /lifecycles``: every policy's info."""
    full_access()
    svc = services()
    if svc.role.read_only:
        return json_response({"lifecycles": []})
    return json_response({"lifecycles": svc.lifecycles.list()})


@blueprint.route("/lifecycles/<name>", methods=["GET"])
async def get_lifecycle(name: str) -> Response:
    """``GET /lifecycles/{name}``: info, settings and the last run's diagnostics."""
    full_access()
    return json_response(_manager("get lifecycle").detail(name))


async def _policy_body() -> LifecyclePolicy:
    body = await read_any_body(services().settings.io_operation_timeout)
    return parse_policy(params.json_object(body))


@blueprint.route("/lifecycles/<name>", methods=["POST"])
async def create_lifecycle(name: str) -> Response:
    """``POST /lifecycles/{name}``: 409 if it exists, 404 if its bucket does not."""
    full_access()
    manager = _manager("create lifecycle")
    policy = await _policy_body()
    svc = services()
    await svc.workers.run(manager.create, name, policy)
    manager.sync_tasks()
    return Response(b"", status=200)


@blueprint.route("/lifecycles/<name>", methods=["PUT"])
async def update_lifecycle(name: str) -> Response:
    """``PUT /lifecycles/{name}``: replace the settings (404 missing, 409 provisioned)."""
    full_access()
    manager = _manager("update lifecycle")
    policy = await _policy_body()
    await services().workers.run(manager.update, name, policy)
    return Response(b"", status=200)


@blueprint.route("/lifecycles/<name>/mode", methods=["PATCH"])
async def set_lifecycle_mode(name: str) -> Response:
    """``PATCH /lifecycles/{name}/mode`` ``{"mode"}``: settings untouched."""
    full_access()
    manager = _manager("update lifecycle mode")
    body = await read_any_body(services().settings.io_operation_timeout)
    obj = params.json_object(body)
    if "mode" not in obj:
        raise UnprocessableEntity("Invalid JSON: missing field `mode`")
    mode = parse_mode(obj["mode"])  # the body is checked first, as ReductStore's extractor does
    await services().workers.run(manager.set_mode, name, mode)
    return Response(b"", status=200)


@blueprint.route("/lifecycles/<name>", methods=["DELETE"])
async def remove_lifecycle(name: str) -> Response:
    """``DELETE /lifecycles/{name}`` (404 missing, 409 provisioned)."""
    full_access()
    manager = _manager("remove lifecycle")
    await services().workers.run(manager.remove, name)
    return Response(b"", status=200)
