"""Desired state: the buckets, tokens and instance settings that provisioning declares.

Owns the pydantic models of the YAML format (``ProvisioningFile``, also the source of the JSON
Schema) and ``DesiredState``, the merge of env groups and YAML that ``reconcile`` applies. Field
names are the ``RS_*`` names in YAML form (``RS_BUCKET_<ID>_QUOTA_SIZE`` → ``quota_size``,
``RS_LOCK_FILE_TTL`` → ``instance.lock_file.ttl``). Sizes and durations accept the literals of the
``RS_*`` variables (``appliance.units``). Every model forbids unknown keys: a typo in a file must
be an error with a line number, not a silently ignored setting.

Replication tasks are the third kind of object: ``ReplicationSpec`` (``provisioning.replications``),
the ``replications`` section of ``ProvisioningFile`` and ``DesiredState.replications``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    NonNegativeInt,
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from appliance.engine.models import BucketSettings, QuotaType
from appliance.settings import InstanceRole, LockFailureAction
from appliance.units import DURATION_FORM, SIZE_FORM, parse_duration, parse_size
from provisioning.replications import ReplicationSpec
from provisioning.lifecycles import LifecycleSpec

INIT_TOKEN_NAME = "init-token"  # RS_API_TOKEN's token (spec reductstore-api §6.3): never ours

# spec reductstore-api §0.2 (names) and §6.2 (permission items).
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PERMISSION_ITEM = re.compile(r"^[*a-zA-Z0-9_\-]+$")

# JSON-Schema (ECMA regex) forms of what appliance.units accepts, so editors flag typos early.
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*([bB]|[kKmMgGtT][bB]?|[kKmMgGtT][iI][bB])?$"
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*([uU][sS]|[mM][sS]|[sS]|[mM]([iI][nN])?|[hH]|[dD])?$"


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {SIZE_FORM}")
    return parse_size(value)  # type: ignore[arg-type]  # parse_size takes whole floats too


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {DURATION_FORM}")
    return parse_duration(value)


def check_bucket_name(value: str) -> str:
    """Return ``value`` if it is a valid bucket name (spec §0.2), else raise ValueError."""
    if not _BUCKET_NAME.match(value):
        raise ValueError(f"invalid bucket name {value!r}: use only letters, digits, '-' and '_'")
    return value


def check_token_name(value: str) -> str:
    """Return ``value`` if it can name a provisioned token, else raise ValueError."""
    if not value.strip():
        raise ValueError("token name must not be empty")
    if value == INIT_TOKEN_NAME:
        raise ValueError(f"'{INIT_TOKEN_NAME}' is reserved for RS_API_TOKEN")
    return value


def _permission_item(value: str) -> str:
    if not value.startswith("$") and not _PERMISSION_ITEM.match(value):
        raise ValueError(f"invalid permission {value!r}: use a bucket name or a 'prefix*' wildcard")
    return value


def _secret_not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("token value must not be empty")
    return value


Size = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "description": SIZE_FORM,
        }
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": DURATION_FORM,
        }
    ),
]
BucketName = Annotated[str, AfterValidator(check_bucket_name)]
TokenName = Annotated[str, AfterValidator(check_token_name)]
PermissionItem = Annotated[str, AfterValidator(_permission_item)]
BlockRecords = Annotated[int, Field(strict=True, ge=1)]


class _Strict(BaseModel):
    """Base of every provisioning model: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketSpec(_Strict):
    """A provisioned bucket (``RS_BUCKET_<ID>_*``); unset fields keep the current value."""

    quota_type: QuotaType | None = Field(default=None, description="NONE, FIFO or HARD")
    quota_size: Size | None = Field(default=None, description="quota in bytes, or a size literal")
    max_block_size: Size | None = Field(default=None, description="block size limit")
    max_block_records: BlockRecords | None = Field(default=None, description="records per block")

    @field_validator("max_block_size")
    @classmethod
    def _positive_block(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("max_block_size must be greater than 0")
        return value

    def applied_to(self, base: BucketSettings) -> BucketSettings:
        """``base`` with every field this spec sets replaced (ReductStore's partial update)."""
        return base.merged(
            quota_type=self.quota_type,
            quota_size=self.quota_size,
            max_block_size=self.max_block_size,
            max_block_records=self.max_block_records,
        )


class TokenSpec(_Strict):
    """A provisioned token (``RS_TOKEN_<ID>_*``); it replaces the stored token entirely."""

    value: Annotated[SecretStr, AfterValidator(_secret_not_empty)] = Field(
        description="the secret; write ${VAR} to take it from the environment"
    )
    full_access: StrictBool = False
    read: tuple[PermissionItem, ...] = Field(default=(), description="bucket names or 'prefix*'")
    write: tuple[PermissionItem, ...] = Field(default=(), description="bucket names or 'prefix*'")
    expires_at: AwareDatetime | None = Field(default=None, description="RFC 3339 with an offset")

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything that defines the token, for change detection (the secret included)."""
        return (
            self.value.get_secret_value(),
            self.full_access,
            self.read,
            self.write,
            self.expires_at,
        )


class LockFileSpec(_Strict):
    """``RS_LOCK_FILE_*``: the PRIMARY/SECONDARY lease."""

    ttl: Duration | None = None
    timeout: Duration | None = Field(default=None, description="0 waits forever")
    polling_interval: Duration | None = None
    failure_action: LockFailureAction | None = None


class EngineSpec(_Strict):
    """``RS_ENGINE_*``: storage engine intervals, integrity checks and limits."""

    compaction_interval: Duration | None = None
    replica_update_interval: Duration | None = None
    enable_integrity_checks: StrictBool | None = None
    sync_writes: StrictBool | None = None
    max_storage_size: Size | None = None
    min_free_space: Size | None = None


class RemoteSpec(_Strict):
    """``RS_REMOTE_*``: data on S3 through a bounded local cache (the secret key: env only)."""

    backend_type: Literal["s3", ""] | None = None
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    cache_path: str | None = None
    cache_size: Size | None = None
    sync_interval: Duration | None = None
    default_storage_class: str | None = None
    prefix: str | None = None
    connect_timeout: Duration | None = None
    read_timeout: Duration | None = None


class BucketDefaultsSpec(_Strict):
    """``RS_DEFAULTS_BUCKET_*``: settings of new buckets that do not say otherwise."""

    quota_type: QuotaType | None = None
    quota_size: Size | None = None
    max_block_size: Size | None = None
    max_block_records: BlockRecords | None = None


class DefaultsSpec(_Strict):
    """``RS_DEFAULTS_*``."""

    bucket: BucketDefaultsSpec | None = None


class BackupSpec(_Strict):
    """``RS_BACKUP_*``: scheduled backups, retention and continuous archiving (issue 12)."""

    target: str | None = Field(default=None, description="folder of the backups")
    interval: Duration | None = Field(default=None, description="0 disables scheduled backups")
    keep_last: NonNegativeInt | None = Field(default=None, description="0 keeps every backup")
    max_age: Duration | None = Field(default=None, description="0 keeps backups of any age")
    archive_interval: Duration | None = Field(default=None, description="0 disables archiving")


class InstanceSpec(_Strict):
    """Instance settings; an explicit ``RS_*`` variable wins over each of them."""

    role: InstanceRole | None = Field(default=None, description="RS_INSTANCE_ROLE")
    name: str | None = Field(default=None, description="RS_INSTANCE_NAME")
    lock_file: LockFileSpec | None = None
    engine: EngineSpec | None = None
    defaults: DefaultsSpec | None = None
    remote: RemoteSpec | None = None
    backup: BackupSpec | None = None


def _none_is_empty(value: Any) -> Any:
    # ``buckets:`` with nothing under it, and ``name:`` with no settings, mean "empty".
    if isinstance(value, Mapping):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return {} if value is None else value


class ProvisioningFile(_Strict):
    """One provisioning YAML file (or the merge of a folder of them)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Appliance provisioning",
        json_schema_extra={
            "description": "Buckets, tokens and instance settings applied at boot and on change "
            "(RS_PROVISIONING_PATH). ${VAR} and ${VAR:-default} are replaced from the "
            "environment before validation."
        },
    )

    version: Literal[1] = 1  # bumped only together with a migration of older files
    instance: Annotated[InstanceSpec, BeforeValidator(lambda v: {} if v is None else v)] = (
        InstanceSpec()
    )
    buckets: Annotated[dict[BucketName, BucketSpec], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict
    )
    tokens: Annotated[dict[TokenName, TokenSpec], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict
    )
    replications: Annotated[
        dict[str, ReplicationSpec], BeforeValidator(lambda v: {} if v is None else v)
    ] = Field(default_factory=dict, description="replication tasks, by name")
    lifecycles: Annotated[dict[str, LifecycleSpec], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_document(cls, value: Any) -> Any:
        return {} if value is None else value


@dataclass(frozen=True)
class DesiredState:
    """The merged provisioning: what ``reconcile`` makes true, and where each object came from."""

    buckets: Mapping[str, BucketSpec] = field(default_factory=dict)
    tokens: Mapping[str, TokenSpec] = field(default_factory=dict)
    instance: InstanceSpec = InstanceSpec()
    lifecycles: Mapping[str, LifecycleSpec] = field(default_factory=dict)  # after buckets
    # name -> ReplicationSpec, applied after buckets (origins key: ("replication", name)).
    replications: Mapping[str, ReplicationSpec] = field(default_factory=dict)
    # ("bucket" | "token", name) -> "RS_BUCKET_A_NAME" or "/etc/appliance/prov.yaml:3"
    origins: Mapping[tuple[str, str], str] = field(default_factory=dict)
    source: str = "none"
    # Non-fatal problems (incomplete env groups, invalid env values): report, don't refuse.
    warnings: tuple[str, ...] = ()
    # Digest of the YAML files as they were *before* being read, so a watcher started later
    # reloads if they changed in between (provisioning.yaml_loader.fingerprint).
    fingerprint: str | None = None

    def origin(self, kind: str, name: str) -> str:
        """Where object ``name`` of ``kind`` ("bucket", "token") was defined."""
        return self.origins.get((kind, name), "?")

    def summary(self) -> str:
        """``N buckets, M tokens[, K replications][, L lifecycles]`` for logs and the CLI."""
        text = f"{len(self.buckets)} buckets, {len(self.tokens)} tokens"
        if self.replications:
            text += f", {len(self.replications)} replications"
        return text + (f", {len(self.lifecycles)} lifecycles" if self.lifecycles else "")
