"""Token endpoints (spec §6): list, get, create, remove, rotate (all need full access)."""

from __future__ import annotations

from quart import Blueprint

from appliance.api.access import full_access, services
from appliance.api.params import check_json_nesting
from appliance.api.response import ApiResponse as Response
from appliance.api.instance import json_response
from appliance.api.streaming import parse_body, read_any_body
from appliance.engine.names import validate_token_name
from appliance.errors import NotFound

blueprint = Blueprint("tokens", __name__)


@blueprint.route("/tokens", methods=["GET"])
async def list_tokens() -> Response:
    """Every token, sorted by name (values blanked)."""
    full_access()
    return json_response({"tokens": services().tokens.list()})


@blueprint.route("/tokens/<name>", methods=["GET"])
async def get_token(name: str) -> Response:
    """One token with its permissions."""
    full_access()
    tokens = services().tokens
    if not tokens.enabled:
        raise NotFound(f"Token '{name}' doesn't exist")
    return json_response(tokens.get(name))


@blueprint.route("/tokens/<name>", methods=["POST"])
async def create_token(name: str) -> Response:
    """Create a token from a v1 (flattened) or v2 (``permissions``) body."""
    svc = services()
    body = await read_any_body(svc.settings.io_operation_timeout)
    full_access()
    validate_token_name(name)
    await parse_body(svc, check_json_nesting, body)
    svc.fence.check(io=False)
    return json_response(await svc.workers.run(svc.tokens.create, name, body))


@blueprint.route("/tokens/<name>", methods=["DELETE"])
async def remove_token(name: str) -> Response:
    """Remove a token (provisioned ones and the last full-access one stay)."""
    full_access()
    svc = services()
    svc.fence.check(io=False)
    await svc.workers.run(svc.tokens.remove, name)
    return Response(b"", status=200)


@blueprint.route("/tokens/<name>/rotate", methods=["POST"])
async def rotate_token(name: str) -> Response:
    """Give a token a new secret value."""
    full_access()
    svc = services()
    svc.fence.check(io=False)
    return json_response(await svc.workers.run(svc.tokens.rotate, name))
