"""Parse a ``when`` JSON object into a node tree plus directives (spec §5.5).

Grammar, as ReductStore's ``Parser`` reads it (quirks kept on purpose, since clients are
written against it):

* ``{"$op": [a, b, ...]}`` array syntax; every element is parsed and its nodes are spliced in
  (an object element with several keys gives several operands);
* ``{"<left>": {"$op": right}}`` object syntax: ``<left>`` is parsed as a literal and becomes
  the first operand; the inner object must hold exactly one key;
* ``{"$op": scalar}`` single-operand syntax;
* several keys in one object are AND-ed, in document order;
* literals: ``"&label"`` reference, ``"@label"`` computed reference, ``"$$x"`` the string
  ``"$x"``, ``"$op"`` a 0-ary operator, a duration (``"5s"``) in µs, other strings/numbers/
  bools as constants; arrays and null as operands are 422.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from appliance.errors import UnprocessableEntity
from appliance.query.directives import Directives, parse_directives
from appliance.query.nodes import ComputedReference, Constant, Node, Reference
from appliance.query.operators import build_operator
from appliance.query.values import parse_duration_literal

__all__ = ["parse_when"]


def _compact(value: Any) -> str:
    """serde_json's compact rendering, used in ReductStore's error messages."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_literal(text: str) -> list[Node]:
    """Parse a string operand (or an object-syntax key) into one node."""
    if text.startswith("&"):
        return [Reference(text[1:])]
    if text.startswith("@"):
        return [ComputedReference(text[1:])]
    if text.startswith("$$"):
        return [Constant(text[1:])]
    if text.startswith("$"):
        try:
            return [build_operator(text, [])]
        except UnprocessableEntity:
            # Whatever went wrong (unknown name, arity), ReductStore reports it this way.
            raise UnprocessableEntity(
                f"Unknown '$' literal '{text}'; use '$$' to escape a string value"
            ) from None
    duration = parse_duration_literal(text)
    return [Constant(duration if duration is not None else text)]


def parse_value(value: Any) -> list[Node]:
    """Parse any JSON value in operand position into zero or more nodes."""
    if isinstance(value, Mapping):
        return _parse_object(value)
    if isinstance(value, bool | int | float):
        return [Constant(value)]
    if isinstance(value, str):
        return parse_literal(value)
    if isinstance(value, list):
        raise UnprocessableEntity(f"Array type is not supported: {_compact(value)}")
    if value is None:
        raise UnprocessableEntity("Null type is not supported: null")
    raise UnprocessableEntity(f"Unsupported value in condition: {value!r}")


def _parse_object_syntax(left: str, inner: Mapping[str, Any]) -> Node:
    operands = parse_literal(left)
    if len(inner) != 1:
        raise UnprocessableEntity("Object notation must have exactly one operator")
    ((operator, right),) = inner.items()
    operands.extend(parse_value(right))
    return build_operator(operator, operands)


def _parse_object(obj: Mapping[str, Any]) -> list[Node]:
    expressions: list[Node] = []
    for key, value in obj.items():
        if isinstance(value, list):
            operands = [node for item in value for node in parse_value(item)]
            expressions.append(build_operator(key, operands))
        elif isinstance(value, Mapping):
            expressions.append(_parse_object_syntax(key, value))
        else:
            expressions.append(build_operator(key, parse_value(value)))
    return expressions


def parse_when(when: Any) -> tuple[Node, Directives, int]:
    """Parse a whole ``when`` value: (root node, directives, number of top-level expressions)."""
    if when is None:
        return build_operator("$and", []), Directives(), 0
    if isinstance(when, Mapping):
        directives = parse_directives({k: v for k, v in when.items() if k.startswith("#")})
        expressions = _parse_object({k: v for k, v in when.items() if not k.startswith("#")})
    else:
        # A bare constant (e.g. ``true``) is accepted by ReductStore; arrays/null are 422.
        directives = Directives()
        expressions = parse_value(when)
    return build_operator("$and", expressions), directives, len(expressions)
