"""YAML provisioning files: reading, ``${VAR}`` substitution, validation, and errors with lines.

``RS_PROVISIONING_PATH`` is one file, or a folder whose ``*.yaml``/``*.yml`` files (hidden files
skipped) are merged in name order: ``instance:`` keys of later files win (``10-base.yaml`` then
``90-site.yaml``), while a bucket or token defined in two files is an error naming both, because
an object must have exactly one owner.

The document is composed into a node tree (never ``yaml.load`` of the whole text) so that every
mapping key and list item keeps its line. ``${VAR}`` and ``${VAR:-default}`` (default when unset
or empty) are replaced inside scalars, after parsing, so a value can never inject YAML structure;
a plain scalar is re-typed after substitution (``full_access: ${FULL}`` with ``FULL=true`` is a
boolean), a quoted one stays a string. ``$${`` writes a literal ``${``. A pydantic error location
is mapped back to the line of the deepest key it names, so every problem is reported as
``FILE:LINE: FIELD: MESSAGE`` on one line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from appliance.errors import ConfigError
from provisioning.models import InstanceSpec, ProvisioningFile

YAML_SUFFIXES = (".yaml", ".yml")
_REF = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_FIELDS = frozenset({"value", "dst_token"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlProvisioning:
    """The validated, merged content of the provisioning file(s) and where each object is."""

    document: ProvisioningFile
    origins: Mapping[tuple[str, str], str]  # ("bucket", name) -> "FILE:LINE"
    files: tuple[Path, ...]
    root: Path  # RS_PROVISIONING_PATH as given

    def describe(self) -> str:
        """``/etc/app/prov.yaml``, or ``/etc/app/prov.d (3 files)`` for a folder."""
        if self.root.is_dir():
            return f"{self.root} ({len(self.files)} files)"
        return str(self.root)


class _LocatedError(Exception):
    """A problem at one node, before the file name is known to the raiser."""

    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


def provisioning_files(path: Path) -> list[Path]:
    """The file itself, or the folder's YAML files in name order; ConfigError if missing."""
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in YAML_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
    if path.is_file():
        return [path]
    raise ConfigError(f"provisioning path {str(path)!r} does not exist")


def fingerprint(path: Path) -> str | None:
    """A digest of the names and bytes of the provisioning files (None if unreadable)."""
    try:
        digest = hashlib.sha256()
        for file in provisioning_files(path):
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        return digest.hexdigest()
    except (ConfigError, OSError):
        return None


def load_yaml(
    path: Path, environ: Mapping[str, str], *, keep_missing_vars: bool = False
) -> YamlProvisioning:
    """Read, substitute, validate and merge the provisioning at ``path``; ConfigError if bad.

    ``keep_missing_vars`` leaves ``${VAR}`` text in place for unset variables instead of failing
    (``appliance provision validate --allow-missing-vars`` in CI, where secrets are absent).
    """
    files = provisioning_files(path)
    parsed = [_load_one(f, environ, keep_missing_vars) for f in files]
    return _merge_files(parsed, tuple(files), path)


def parse_text(
    text: str, filename: str, environ: Mapping[str, str], *, keep_missing_vars: bool = False
) -> tuple[ProvisioningFile, dict[tuple[str, str], str]]:
    """Validate one document; returns it with the ``FILE:LINE`` of each bucket and token."""
    try:
        data, lines = _compose(text, environ, keep_missing_vars)
    except _LocatedError as problem:
        field = f" {problem.field}:" if problem.field else ""
        raise ConfigError(f"{filename}:{problem.line}:{field} {problem.message}") from None
    try:
        document = ProvisioningFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, filename, lines)) from None
    origins: dict[tuple[str, str], str] = {}
    sections = (
        ("bucket", document.buckets), ("token", document.tokens),
        ("replication", document.replications), ("lifecycle", document.lifecycles),
    )
    for kind, section in sections:
        key = kind + "s"
        for name in section:
            origins[(kind, name)] = f"{filename}:{lines.get((key, name), 1)}"
    return document, origins


def _load_one(
    path: Path, environ: Mapping[str, str], keep_missing_vars: bool
) -> tuple[ProvisioningFile, dict[tuple[str, str], str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read provisioning file: {exc}") from None
    return parse_text(text, str(path), environ, keep_missing_vars=keep_missing_vars)


# --- substitution ---------------------------------------------------------------------------


def substitute(text: str, environ: Mapping[str, str], *, keep_missing: bool = False) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text``; ValueError names a missing VAR."""

    def replace(match: re.Match[str]) -> str:
        escaped, body, closed = match.groups()
        if escaped:
            return "${" + body + closed
        if not closed:
            raise ValueError("unclosed '${' (write $${ for a literal '${')")
        name, sep, default = body.partition(":-")
        if not _VAR_NAME.match(name):
            raise ValueError(
                f"invalid reference '${{{body}}}': use ${{NAME}} or ${{NAME:-default}}"
            )
        value = environ.get(name)
        if sep:
            return value if value else default
        if value is None:
            if keep_missing:
                return match.group(0)
            raise ValueError(
                f"environment variable {name} is not set (write ${{{name}:-default}} "
                "to give a default)"
            )
        return value

    return _REF.sub(replace, text) if "$" in text else text


# --- composing with line numbers -----------------------------------------------------------


def _compose(
    text: str, environ: Mapping[str, str], keep_missing: bool
) -> tuple[Any, dict[Path_, int]]:
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            hint = ""
            if "${" in "".join(text.splitlines()[max(line - 2, 0) : line]):
                # The common trap: ``{value: ${X}}`` - braces are flow syntax in YAML.
                hint = ' (inside {...} or [...], quote references: "${VAR}")'
            problem = exc.problem or exc.context
            raise _LocatedError(line, "", f"invalid YAML: {problem}{hint}") from None
        except yaml.YAMLError as exc:
            raise _LocatedError(1, "", f"invalid YAML: {exc}") from None
        lines: dict[Path_, int] = {(): 1}
        if node is None:
            return None, lines
        if not isinstance(node, yaml.MappingNode):
            raise _LocatedError(node.start_mark.line + 1, "", "the document must be a mapping")
        return _convert(loader, node, (), lines, environ, keep_missing), lines
    finally:
        loader.dispose()


def _convert(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path_,
    lines: dict[Path_, int],
    environ: Mapping[str, str],
    keep_missing: bool,
) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return _scalar(loader, node, path, environ, keep_missing)
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_convert(loader, item, path + (index,), lines, environ, keep_missing))
        return items
    if isinstance(node, yaml.MappingNode):
        explicit = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        try:
            loader.flatten_mapping(node)  # resolves ``<<: *anchor`` merge keys
        except yaml.MarkedYAMLError as exc:
            raise _LocatedError(line, _dotted(path), f"invalid merge key: {exc.problem}") from None
        result: dict[str, Any] = {}
        seen_explicit: set[str] = set()
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise _LocatedError(key_line, _dotted(path), "keys must be plain names")
            try:
                # Keys are names: keep their text (``2024:`` is bucket "2024", not an int).
                key = substitute(key_node.value, environ, keep_missing=keep_missing)
            except ValueError as exc:
                raise _LocatedError(key_line, _dotted(path), str(exc)) from None
            if id(key_node) in explicit:
                # Merged keys (``<<``) may be overridden; a key written twice is a mistake.
                if key in seen_explicit:
                    first = lines[path + (key,)]
                    raise _LocatedError(
                        key_line, _dotted(path + (key,)), f"duplicate key (first at line {first})"
                    )
                seen_explicit.add(key)
            lines[path + (key,)] = key_line
            result[key] = _convert(loader, value_node, path + (key,), lines, environ, keep_missing)
        return result
    raise _LocatedError(line, _dotted(path), "unsupported YAML node")


def _scalar(
    loader: yaml.SafeLoader,
    node: yaml.ScalarNode,
    path: Path_,
    environ: Mapping[str, str],
    keep_missing: bool,
) -> Any:
    line = node.start_mark.line + 1
    tag, value = node.tag, node.value
    if "$" in value:
        try:
            new = substitute(value, environ, keep_missing=keep_missing)
        except ValueError as exc:
            raise _LocatedError(line, _dotted(path), str(exc)) from None
        implicit = loader.resolve(yaml.ScalarNode, value, (True, False))
        if node.style is None and tag == implicit:
            # A plain scalar is typed as if the substituted text had been written there.
            tag = loader.resolve(yaml.ScalarNode, new, (True, False))
        value = new
    try:
        return loader.construct_object(
            yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        )
    except (yaml.YAMLError, ValueError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _LocatedError(line, _dotted(path), f"invalid value: {problem}") from None


# --- validation errors -> one line ---------------------------------------------------------


def _describe(exc: ValidationError, filename: str, lines: Mapping[Path_, int]) -> str:
    found = []
    for error in exc.errors():
        known: Path_ = ()
        shown: list[str | int] = []
        for part in error["loc"]:
            if (*known, part) in lines:
                known = (*known, part)
                shown.append(part)
            elif isinstance(part, int) or "[" not in str(part):
                shown.append(part)  # a missing or unknown key: name it, line of its parent
            # else: pydantic-internal parts such as "[key]" or "function-after[...]"
        line = lines.get(known, 1)
        message = _message(error, tuple(shown))
        found.append((line, f"{filename}:{line}: {_dotted(tuple(shown))}: {message}"))
    found.sort(key=lambda item: item[0])
    return "; ".join(text for _, text in found)


def _message(error: Any, path: Path_) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    secret = bool(path) and path[-1] in _SECRET_FIELDS
    if not secret and isinstance(value, str | int | float | bool) and repr(value) not in message:
        message += f" (got {value!r})"
    return message


def _allowed_keys(path: Path_) -> list[str]:
    """Field names of the model found at ``path`` of a ProvisioningFile (or [] if unknown)."""
    model: Any = ProvisioningFile
    expect_name = False
    for part in path:
        if expect_name:
            expect_name = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        model, expect_name = _inner_model(info.annotation)
    if expect_name or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return list(model.model_fields)


def _inner_model(annotation: Any) -> tuple[Any, bool]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        inner, _ = _inner_model(get_args(annotation)[1])
        return inner, True
    for arg in get_args(annotation):
        inner, is_dict = _inner_model(arg)
        if inner is not None:
            return inner, is_dict
    return None, False


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- folder merge --------------------------------------------------------------------------


def _merge_files(
    parsed: list[tuple[ProvisioningFile, dict[tuple[str, str], str]]],
    files: tuple[Path, ...],
    root: Path,
) -> YamlProvisioning:
    buckets: dict[str, Any] = {}
    tokens: dict[str, Any] = {}
    replications: dict[str, Any] = {}
    lifecycles: dict[str, Any] = {}
    instance: dict[str, Any] = {}
    origins: dict[tuple[str, str], str] = {}
    for document, doc_origins in parsed:
        for kind, target, section in (
            ("bucket", buckets, document.buckets),
            ("token", tokens, document.tokens),
            ("replication", replications, document.replications),
            ("lifecycle", lifecycles, document.lifecycles),
        ):
            for name, spec in section.items():
                if name in target:
                    raise ConfigError(
                        f"{kind} '{name}' is defined by {origins[(kind, name)]} "
                        f"and by {doc_origins[(kind, name)]}"
                    )
                target[name] = spec
                origins[(kind, name)] = doc_origins[(kind, name)]
        _deep_update(instance, document.instance.model_dump(exclude_none=True))
    merged = ProvisioningFile.model_construct(
        instance=InstanceSpec.model_validate(instance), buckets=buckets, tokens=tokens,
        replications=replications, lifecycles=lifecycles,
    )
    return YamlProvisioning(merged, origins, files, root)


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value
