"""Instance settings from YAML ``instance:``: which ``Settings`` field each key sets, and which
changes need a restart.

The YAML keys are the ``RS_*`` names in nested form: ``instance.role`` → ``instance_role``
(``RS_INSTANCE_ROLE``), ``instance.name`` → ``instance_name``, ``instance.lock_file.ttl`` →
``lock_file_ttl``, ``instance.engine.compaction_interval`` → ``engine_compaction_interval``,
``instance.defaults.bucket.quota_size`` → ``defaults_bucket_quota_size``. An explicit ``RS_*``
variable wins over YAML (ARCHITECTURE §6); the settings loader applies that order, this module
only produces the YAML layer.

``Settings`` is frozen and built once, so today no instance setting is applied live: a changed
key is reported as "requires restart" and the running value stays. When a loop learns to pick up
a new value (say the compaction interval), add its field to ``LIVE_SETTINGS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import BaseModel

from appliance.settings import Settings, env_name
from provisioning.models import DesiredState, InstanceSpec

LIVE_SETTINGS: frozenset[str] = frozenset()


def _field_for(path: tuple[str, ...]) -> str:
    # A top-level key names an attribute of the instance itself: role -> instance_role.
    return f"instance_{path[0]}" if len(path) == 1 else "_".join(path)


def _leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, info in model.model_fields.items():
        inner = next(
            (
                a
                for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if inner is None:
            paths.append((*prefix, name))
        else:
            paths += _leaf_paths(inner, (*prefix, name))
    return paths


# Settings field -> "instance.lock_file.ttl", for every key the YAML can set.
YAML_KEYS: dict[str, str] = {
    _field_for(path): "instance." + ".".join(path) for path in _leaf_paths(InstanceSpec)
}


def instance_overrides(desired: DesiredState | InstanceSpec) -> dict[str, Any]:
    """``Settings`` field name → value for every instance key the YAML sets."""
    spec = desired.instance if isinstance(desired, DesiredState) else desired
    overrides: dict[str, Any] = {}
    _flatten(spec.model_dump(exclude_none=True), (), overrides)
    return overrides


def _flatten(data: Mapping[str, Any], prefix: tuple[str, ...], out: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping):
            _flatten(value, (*prefix, key), out)
        else:
            out[_field_for((*prefix, key))] = value.value if isinstance(value, Enum) else value


def as_environ(overrides: Mapping[str, Any]) -> dict[str, str]:
    """The overrides as ``RS_*`` strings, for ``load_settings({**as_environ(o), **environ})``."""
    result = {}
    for field, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        else:
            text = str(value)
        result[env_name(field)] = text
    return result


def env_overridden(overrides: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Fields the YAML sets that an explicit ``RS_*`` variable overrides (the variable wins)."""
    present = {name.upper() for name in environ}
    return sorted(f for f in overrides if env_name(f) in present)


def restart_required(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Settings fields whose YAML value changed from ``old`` to ``new`` and cannot change live.

    A key missing from one side means the built-in default. Fields set by an ``RS_*`` variable
    in ``environ`` are skipped: the variable wins, so the YAML change has no effect.
    """
    shadowed = set(env_overridden({**old, **new}, environ or {}))
    changed = []
    for field in sorted(set(old) | set(new)):
        if field in LIVE_SETTINGS or field in shadowed:
            continue
        default = Settings.model_fields[field].default
        before, after = old.get(field, default), new.get(field, default)
        if _plain(before) != _plain(after):
            changed.append(field)
    return changed


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def describe_change(field: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``instance.lock_file.ttl (RS_LOCK_FILE_TTL) 30.0 -> 45.0`` for the restart log line."""
    default = Settings.model_fields[field].default
    before, after = _plain(old.get(field, default)), _plain(new.get(field, default))
    return f"{YAML_KEYS.get(field, field)} ({env_name(field)}) {before!r} -> {after!r}"
