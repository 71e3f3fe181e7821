"""Merging the two sources of desired state: env groups and YAML, into one ``DesiredState``.

An object (bucket or token) has exactly one owner. If an env group and a YAML file both define
the same name, that is an error naming both places, because silently preferring one would make
the other a dead definition that an operator believes is in force. (Instance settings are not
objects: there an explicit ``RS_*`` variable simply wins, see ``provisioning.instance``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from appliance.errors import ConfigError
from provisioning.env import EnvGroups, load_env_groups
from provisioning.models import DesiredState, InstanceSpec
from provisioning.yaml_loader import YamlProvisioning, fingerprint, load_yaml

T = TypeVar("T")


def load_desired(
    settings_environ: Mapping[str, str],
    provisioning_path: Path | None,
    *,
    env_groups: EnvGroups | None = None,
    keep_missing_vars: bool = False,
) -> DesiredState:
    """Env groups of ``settings_environ`` + YAML at ``provisioning_path``; ConfigError if bad.

    The ConfigError message is one line (``FILE:LINE: FIELD: MESSAGE``). Incomplete or invalid
    env groups are not errors: they are skipped and listed in ``DesiredState.warnings``.
    ``env_groups`` reuses groups read earlier (the environment does not change while running).
    """
    groups = env_groups if env_groups is not None else load_env_groups(settings_environ)
    if provisioning_path is None:
        return merge(groups, None)
    before = fingerprint(provisioning_path)
    document = load_yaml(provisioning_path, settings_environ, keep_missing_vars=keep_missing_vars)
    return replace(merge(groups, document), fingerprint=before)


def merge(env: EnvGroups, yaml: YamlProvisioning | None) -> DesiredState:
    """One desired state from env groups and (optionally) YAML; ConfigError on a conflict."""
    buckets = dict(env.buckets)
    tokens = dict(env.tokens)
    replications = dict(env.replications)
    lifecycles = dict(env.lifecycles)
    origins = dict(env.origins)
    instance = InstanceSpec()
    if yaml is not None:
        _unite("bucket", buckets, yaml.document.buckets, origins, yaml.origins)
        _unite("token", tokens, yaml.document.tokens, origins, yaml.origins)
        _unite("replication", replications, yaml.document.replications, origins, yaml.origins)
        _unite("lifecycle", lifecycles, yaml.document.lifecycles, origins, yaml.origins)
        instance = yaml.document.instance
    return DesiredState(
        buckets=buckets,
        tokens=tokens,
        replications=replications,
        lifecycles=lifecycles,
        instance=instance,
        origins=origins,
        source=describe_source(env, yaml),
        warnings=env.problems,
    )


def _unite(
    kind: str,
    target: dict[str, T],
    section: Mapping[str, T],
    origins: dict[tuple[str, str], str],
    section_origins: Mapping[tuple[str, str], str],
) -> None:
    for name, spec in section.items():
        if name in target:
            raise ConfigError(
                f"{kind} '{name}' is defined by {origins[(kind, name)]} "
                f"and by {section_origins[(kind, name)]}"
            )
        target[name] = spec
        origins[(kind, name)] = section_origins[(kind, name)]


def describe_source(env: EnvGroups, yaml: YamlProvisioning | None) -> str:
    """Where the desired state came from, for the log and the status endpoint."""
    parts = []
    if env.group_count:
        parts.append(f"env ({env.group_count} groups)")
    if yaml is not None:
        parts.append(yaml.describe())
    return " + ".join(parts) or "none"
