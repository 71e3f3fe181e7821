"""Making the storage and the token store match a ``DesiredState``.

Order as ReductStore (spec reductstore-config §4): buckets, replications, tokens. Rules:

- Buckets: create with the spec over the bucket defaults, or update an existing bucket with the
  spec over its *current* settings (unset fields keep their values). Unchanged buckets are not
  touched, so a reload that changes nothing writes nothing.
- Refusal is all-or-nothing and happens before anything is applied: if a new quota is below the
  data already stored in a bucket (FIFO would delete data to fit; HARD would block every write),
  the whole desired state is refused with ConfigError and the previous state stays in force.
- Tokens are created or replaced entirely (ReductStore's semantics) when their definition
  changed or the store does not hold them as provisioned; an unchanged token is left alone so
  its ``created_at`` does not move on every reload.
- Objects that leave the provisioning are only unmarked, never deleted (no data loss), and the
  log says so. A failure on one object (storage refuses a create) is logged and the others are
  still applied, as ReductStore does; the error shows in the state.

The storage and token store are reached through two small Protocols, so the engine's ``Storage``
and the API's token store can be passed directly or through a thin adapter.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from appliance.engine.models import BucketSettings, QuotaType
from appliance.errors import ApplianceError, ConfigError
from provisioning.models import INIT_TOKEN_NAME, DesiredState, TokenSpec
from provisioning.replications import ReplicationProvisioner, desired_tasks
from provisioning.state import ProvisioningState

log = logging.getLogger(__name__)


class SizedInfo(Protocol):
    """Anything with a ``size`` in bytes (``BucketInfo``)."""

    @property
    def size(self) -> int: ...


class BucketLike(Protocol):
    """The part of ``appliance.engine`` ``Bucket`` that reconcile uses."""

    @property
    def settings(self) -> BucketSettings: ...

    def update_settings(
        self,
        quota_type: QuotaType | None = None,
        quota_size: int | None = None,
        max_block_size: int | None = None,
        max_block_records: int | None = None,
    ) -> object: ...

    def info(self) -> SizedInfo: ...


class StorageLike(Protocol):
    """The part of ``appliance.engine`` ``Storage`` that reconcile uses."""

    def bucket_names(self) -> Iterable[str]: ...

    def create_bucket(self, name: str, settings: BucketSettings | None = None) -> object: ...

    def get_bucket(self, name: str) -> BucketLike: ...


class TokenSkipped(Exception):  # noqa: N818 - a decision, not a failure
    """Raised by a ``TokenProvisioner`` that deliberately does not create a token.

    Example: with authentication disabled ReductStore creates no tokens and says so. Reconcile
    logs the message as a warning and goes on; the token is not counted as provisioned and the
    state is not marked failed.
    """


@dataclass(frozen=True, slots=True)
class TokenPermissions:
    """Permissions of a provisioned token (same fields as ``appliance.auth.Permissions``)."""

    full_access: bool = False
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


class TokenProvisioner(Protocol):
    """What reconcile needs from the token store."""

    def provision_token(
        self,
        name: str,
        value: str,
        permissions: TokenPermissions,
        expires_at: datetime | None,
    ) -> None:
        """Create token ``name`` or replace it entirely, and mark it provisioned.

        Raises TokenSkipped to decline (logged as a warning), anything else on failure.
        """

    def unprovision_token(self, name: str) -> None:
        """Clear the provisioned mark of token ``name`` (no-op if missing); the token is kept."""

    def provisioned_token_names(self) -> Iterable[str]:
        """Names of the tokens currently marked provisioned (never ``init-token``)."""


@dataclass
class ReconcileResult:
    """What one reconcile did, object by object."""

    created_buckets: list[str] = field(default_factory=list)
    updated_buckets: list[str] = field(default_factory=list)
    unchanged_buckets: list[str] = field(default_factory=list)
    unprovisioned_buckets: list[str] = field(default_factory=list)
    provisioned_tokens: list[str] = field(default_factory=list)
    unchanged_tokens: list[str] = field(default_factory=list)
    unprovisioned_tokens: list[str] = field(default_factory=list)
    skipped_tokens: list[str] = field(default_factory=list)
    created_replications: list[str] = field(default_factory=list)
    updated_replications: list[str] = field(default_factory=list)
    unprovisioned_replications: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if anything was created, updated, replaced or unmarked."""
        return bool(
            self.created_buckets
            or self.updated_buckets
            or self.unprovisioned_buckets
            or self.provisioned_tokens
            or self.unprovisioned_tokens
            or self.created_replications
            or self.updated_replications
            or self.unprovisioned_replications
        )

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("created buckets", self.created_buckets),
                ("updated buckets", self.updated_buckets),
                ("unprovisioned buckets", self.unprovisioned_buckets),
                ("provisioned tokens", self.provisioned_tokens),
                ("unprovisioned tokens", self.unprovisioned_tokens),
                ("skipped tokens", self.skipped_tokens),
                ("created replications", self.created_replications),
                ("updated replications", self.updated_replications),
                ("unprovisioned replications", self.unprovisioned_replications),
                ("errors", self.errors),
            )
            if names
        ]
        return "; ".join(parts) or "nothing to change"


def token_digest(spec: TokenSpec) -> str:
    """A digest of a token definition; the secret is in it, so only the hash is kept."""
    return hashlib.sha256(repr(spec.fingerprint()).encode()).hexdigest()


def reconcile(
    desired: DesiredState,
    storage: StorageLike,
    tokens: TokenProvisioner,
    state: ProvisioningState,
    *,
    bucket_defaults: BucketSettings | None = None,
    replications: ReplicationProvisioner | None = None,
) -> ReconcileResult:
    """Apply ``desired``; ConfigError (nothing applied) if a quota is below the stored data.

    ``replications`` None: the instance runs no replication tasks (provisioned ones are an
    error, reported per task)."""
    defaults = bucket_defaults or BucketSettings()
    existing = set(storage.bucket_names())
    plan = _plan_buckets(desired, storage, existing, defaults)
    result = ReconcileResult()

    for name, current, target in plan:
        try:
            if current is None:
                storage.create_bucket(name, target)
                result.created_buckets.append(name)
                log.info("provisioned bucket '%s' created: %s", name, target.to_json())
            elif current != target:
                storage.get_bucket(name).update_settings(
                    quota_type=target.quota_type,
                    quota_size=target.quota_size,
                    max_block_size=target.max_block_size,
                    max_block_records=target.max_block_records,
                )
                result.updated_buckets.append(name)
                log.info("provisioned bucket '%s' updated: %s", name, target.to_json())
            else:
                result.unchanged_buckets.append(name)
        except Exception as exc:  # one object failing must not stop the others (ReductStore)
            _failed(result, f"bucket '{name}' ({desired.origin('bucket', name)})", exc)
    now_existing = set(storage.bucket_names())
    buckets = {name for name in desired.buckets if name in now_existing}
    for name in sorted(state.provisioned_buckets - set(desired.buckets)):
        result.unprovisioned_buckets.append(name)
        log.warning("bucket '%s' is no longer provisioned; its data is kept", name)

    provisioned_tasks = _reconcile_replications(desired, replications, result)

    digests: dict[str, str] = {}
    marked = set(tokens.provisioned_token_names())
    for name, spec in sorted(desired.tokens.items()):
        digest = token_digest(spec)
        if state.token_digest(name) == digest and name in marked:
            result.unchanged_tokens.append(name)
            digests[name] = digest
            continue
        permissions = TokenPermissions(spec.full_access, tuple(spec.read), tuple(spec.write))
        try:
            tokens.provision_token(
                name, spec.value.get_secret_value(), permissions, spec.expires_at
            )
        except TokenSkipped as exc:
            result.skipped_tokens.append(name)
            log.warning("%s", exc)
            continue
        except Exception as exc:  # as for buckets: log, keep going
            _failed(result, f"token '{name}' ({desired.origin('token', name)})", exc)
            continue
        digests[name] = digest
        result.provisioned_tokens.append(name)
        log.info(
            "provisioned token '%s': full_access=%s read=%s write=%s",
            name,
            permissions.full_access,
            list(permissions.read),
            list(permissions.write),
        )
    previously = (marked | state.provisioned_tokens) - {INIT_TOKEN_NAME}
    for name in sorted(previously - set(desired.tokens)):
        try:
            tokens.unprovision_token(name)
        except Exception as exc:
            _failed(result, f"token '{name}' (unprovision)", exc)
            continue
        result.unprovisioned_tokens.append(name)
        log.warning("token '%s' is no longer provisioned; it is kept", name)

    state.record_applied(
        buckets=buckets,
        tokens=set(digests),
        token_digests=digests,
        source=desired.source,
        errors=result.errors,
        replications=provisioned_tasks,
    )
    return result


def _plan_buckets(
    desired: DesiredState,
    storage: StorageLike,
    existing: set[str],
    defaults: BucketSettings,
) -> list[tuple[str, BucketSettings | None, BucketSettings]]:
    """``(name, current or None, target)`` per bucket; ConfigError if any quota is too small."""
    plan: list[tuple[str, BucketSettings | None, BucketSettings]] = []
    refused = []
    for name, spec in sorted(desired.buckets.items()):
        if name not in existing:
            plan.append((name, None, spec.applied_to(defaults)))
            continue
        bucket = storage.get_bucket(name)
        current = bucket.settings
        target = spec.applied_to(current)
        plan.append((name, current, target))
        quota_changed = (target.quota_type, target.quota_size) != (
            current.quota_type,
            current.quota_size,
        )
        # Only a *changed* quota is checked: FIFO trims whole blocks, so a bucket may sit a
        # little above an unchanged quota, and that must not refuse every reboot.
        if quota_changed and target.quota_type is not QuotaType.NONE:
            stored = bucket.info().size
            if target.quota_size < stored:
                refused.append(
                    f"bucket '{name}' ({desired.origin('bucket', name)}): "
                    f"{target.quota_type.value} quota_size {target.quota_size} is below the "
                    f"{stored} bytes already stored; raise the quota or remove data first"
                )
    if refused:
        raise ConfigError("; ".join(refused))
    return plan


def _reconcile_replications(
    desired: DesiredState, replications: ReplicationProvisioner | None, result: ReconcileResult
) -> list[str]:
    """After buckets (a task's source must exist), before tokens, as in ReductStore; returns
    the names now provisioned."""
    if replications is None:
        for name in sorted(desired.replications):
            result.errors.append(f"replication '{name}': this instance runs no replication tasks")
        return []
    origins = {name: desired.origin("replication", name) for name in desired.replications}
    outcome = replications.provision_replications(desired_tasks(desired.replications), origins)
    result.created_replications += outcome.created
    result.updated_replications += outcome.updated
    result.unprovisioned_replications += outcome.unprovisioned
    result.errors += outcome.errors
    return [*outcome.created, *outcome.updated, *outcome.unchanged]


def _failed(result: ReconcileResult, what: str, exc: Exception) -> None:
    message = f"{what}: {exc}"
    result.errors.append(message)
    # An ApplianceError is an expected refusal (bad name, read-only replica): no traceback.
    log.error("provisioning failed for %s", message, exc_info=not isinstance(exc, ApplianceError))
