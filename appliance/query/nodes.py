"""The expression tree of a compiled ``when`` condition: leaves and the evaluation context.

A node turns the current record (its timestamp and raw labels) into a ``Value``. Leaves are
constants, label references (``"&name"``) and computed-label references (``"@name"``); operators
(``operators.py``) and stateful aggregations (``aggregation.py``) are inner nodes. Nodes raise
``ApplianceError`` subclasses; the ``Condition`` decides whether an error skips the record
(non-strict) or fails the read (strict).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.errors import NotFound
from appliance.query.values import Value, parse_label_value, to_string

__all__ = ["ComputedReference", "Constant", "Context", "LimitReached", "Node", "Reference"]


@dataclass(frozen=True, slots=True)
class Context:
    """The record being evaluated: timestamp in µs and its labels as stored (strings)."""

    timestamp: int
    labels: Mapping[str, str]


class LimitReached(Exception):  # noqa: N818 - a control-flow signal, not an error
    """``$limit`` has let its N records through: the query must end."""


class Node(ABC):
    """One node of the condition tree."""

    __slots__ = ()

    @abstractmethod
    def apply(self, ctx: Context) -> Value:
        """Evaluate the node for one record."""

    def is_constant(self) -> bool:
        """True for a literal, so arguments can be checked at compile time."""
        return False


class Constant(Node):
    """A literal: number, bool, string or duration."""

    __slots__ = ("value",)

    def __init__(self, value: Value) -> None:
        self.value = value

    def apply(self, ctx: Context) -> Value:
        """Return the literal."""
        return self.value

    def is_constant(self) -> bool:
        """Always true."""
        return True

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class Reference(Node):
    """``"&name"``: the typed value of a label of the record."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, ctx: Context) -> Value:
        """Look the label up; a missing label is a 404 the condition may swallow."""
        raw = ctx.labels.get(self.name)
        if raw is None:
            raise NotFound(f"Reference '{self.name}' not found")
        return parse_label_value(raw)

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"


class ComputedReference(Node):
    """``"@name"``: a label computed by an extension; we run no extensions, so never found."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, ctx: Context) -> Value:
        """Always missing: no extension computes labels here."""
        raise NotFound(f"Computed reference '{self.name}' not found")

    def __repr__(self) -> str:
        return f"ComputedReference({self.name!r})"


def label_name(node: Node, ctx: Context) -> str:
    """Evaluate an operand that names a label (``$exists``, ``$ref``)."""
    return to_string(node.apply(ctx))
