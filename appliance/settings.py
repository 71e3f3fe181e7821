"""Settings: every ``RS_*`` environment variable the appliance reads, in one frozen object.

Built once by the CLI (``load_settings``) and passed down; nothing else reads ``os.environ``.
Durations accept ``30``, ``30s``, ``500ms``, ``5m``, ``1h`` and are stored as float seconds;
sizes accept ``1048576``, ``64MB`` (10^6), ``64MiB`` (2^20) and are stored as int bytes.
A bad value raises ``ConfigError`` with one line naming the variable, the value and the accepted
form. ``RS_*`` names that nothing reads are reported by ``unknown_env_names`` (a warning, not a
refusal: a typo must not pass silently, but must not take a device offline either).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from appliance.engine.models import QuotaType
from appliance.errors import ConfigError
from appliance.units import (
    DURATION_FORM,
    MIB,
    SIZE_FORM,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

ENV_PREFIX = "RS_"


class InstanceRole(str, Enum):
    """How this instance takes part in a deployment (ARCHITECTURE §5)."""

    STANDALONE = "STANDALONE"
    PRIMARY = "PRIMARY"
    SECONDARY = "SECONDARY"
    REPLICA = "REPLICA"


class LockFailureAction(str, Enum):
    """What a PRIMARY/SECONDARY does when the lease cannot be taken within the timeout."""

    ABORT = "abort"
    PROCEED = "proceed"


class LogLevel(str, Enum):
    """Log levels accepted by ``RS_LOG_LEVEL`` (ReductStore's names; TRACE maps to DEBUG)."""

    TRACE = "TRACE"
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _duration(value: Any) -> float:
    if isinstance(value, str) and value.strip() == "":
        raise ValueError(f"is empty; expected {DURATION_FORM}")
    return parse_duration(value)


def _size(value: Any) -> int:
    if isinstance(value, str) and value.strip() == "":
        raise ValueError(f"is empty; expected {SIZE_FORM}")
    return parse_size(value)


def _optional_size(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return parse_size(value)


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Bytes = Annotated[int, BeforeValidator(_size), Field(ge=0)]
OptionalBytes = Annotated[int | None, BeforeValidator(_optional_size)]

# S3 storage classes whose objects GetObject can read at once (RS_REMOTE_DEFAULT_STORAGE_CLASS);
# the archive classes need a RestoreObject first, which a cache that fetches on a miss cannot wait for.
S3_STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
    "OUTPOSTS",
    "SNOW",
)
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

# Names ReductStore reads that are provisioning groups, handled by ``provisioning/``.
PROVISIONING_GROUP = re.compile(r"^RS_(BUCKET|TOKEN|REPLICATION|LIFECYCLE)_[A-Za-z0-9_]+$")


class Settings(BaseSettings):
    """Every setting of the appliance; field ``x`` is read from ``RS_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- HTTP server
    host: str = "0.0.0.0"
    port: int = Field(8383, ge=1, le=65535)
    api_base_path: str = "/"
    cert_path: Path | None = None
    cert_key_path: Path | None = None
    cors_allow_origin: str = ""
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = LogLevel.INFO
    instance_name: str = ""
    api_token: SecretStr | None = None
    init_api_token: SecretStr | None = None
    disable_auth: bool = False
    access_log: bool = False
    metrics_public: bool = False

    # --- storage engine
    data_path: Path = Path("data")
    engine_enable_integrity_checks: bool = True
    engine_compaction_interval: Seconds = 60.0
    engine_replica_update_interval: Seconds = 60.0
    engine_sync_writes: bool = False
    engine_max_storage_size: OptionalBytes = None
    engine_min_free_space: Bytes = 16 * MIB
    defaults_bucket_quota_type: QuotaType = QuotaType.NONE
    defaults_bucket_quota_size: Bytes = 0
    defaults_bucket_max_block_size: Bytes = 64_000_000
    defaults_bucket_max_block_records: int = Field(1024, ge=1)

    # --- batching and I/O (spec reductstore-config §2.5)
    io_batch_max_size: Bytes = 8_000_000
    io_batch_max_records: int = Field(85, ge=1)
    io_batch_max_metadata_size: Bytes = 512_000
    io_batch_max_write_records: int = Field(4096, ge=1)
    io_batch_timeout: Seconds = 5.0
    io_batch_records_timeout: Seconds = 1.0
    io_operation_timeout: Seconds = 30.0

    # --- roles and the lease (used by appliance/roles)
    instance_role: Annotated[InstanceRole, BeforeValidator(_upper)] = InstanceRole.STANDALONE
    lock_file_ttl: Seconds = 30.0
    lock_file_polling_interval: Seconds = 10.0
    lock_file_timeout: Seconds = 60.0
    lock_file_failure_action: Annotated[LockFailureAction, BeforeValidator(_lower)] = (
        LockFailureAction.ABORT
    )

    # --- data on S3 through a bounded local cache (ReductStore's names; engine/mirror.py)
    remote_backend_type: Annotated[str, BeforeValidator(_lower)] = ""
    remote_bucket: str = ""
    remote_endpoint: str = ""
    remote_region: str = ""
    remote_access_key: str = ""
    remote_secret_key: SecretStr | None = None
    remote_cache_path: Path | None = None
    remote_cache_size: Bytes = 1_000_000_000
    remote_sync_interval: Seconds = 60.0
    remote_default_storage_class: Annotated[str, BeforeValidator(_upper)] = ""
    remote_prefix: str = ""
    remote_connect_timeout: PositiveSeconds = 5.0
    remote_read_timeout: PositiveSeconds = 60.0

    # --- replication tasks (used by appliance/replication, spec reductstore-config §2.6)
    replication_timeout: Seconds = 5.0
    replication_log_size: int = Field(1_000_000, ge=2)
    replication_verify_ssl: bool = True
    replication_ca_path: Path | None = None

    # --- backups (used by appliance/backup; issue 12)
    backup_target: str = ""
    backup_interval: Seconds = 0.0
    backup_keep_last: int = Field(0, ge=0)
    backup_max_age: Seconds = 0.0
    backup_archive_interval: Seconds = 0.0

    # --- provisioning (used by provisioning/)
    provisioning_path: Path | None = None

    # --- query links and the $system bucket (spec reductstore-config §2.1, §2.7)
    public_url: str = ""
    system_events_enabled: bool = True
    system_events_log_level: Annotated[str, BeforeValidator(_upper)] = "WARN"
    system_events_quota_size: Bytes = 10_000_000_000
    system_events_flush_interval: Seconds = 5.0

    @field_validator("remote_backend_type")
    @classmethod
    def _check_remote_type(cls, value: str) -> str:
        value = value.strip()
        if value not in ("", "s3"):
            raise ValueError("must be 's3' or empty (the local folder)")
        return value

    @field_validator("remote_default_storage_class")
    @classmethod
    def _check_storage_class(cls, value: str) -> str:
        if value in ARCHIVE_STORAGE_CLASSES:
            raise ValueError(
                "objects in an archive class cannot be read without a restore, and the cache "
                f"fetches blocks on demand; use one of {', '.join(S3_STORAGE_CLASSES)}"
            )
        if value and value not in S3_STORAGE_CLASSES:
            raise ValueError(f"not an S3 storage class; use one of {', '.join(S3_STORAGE_CLASSES)}")
        return value

    @model_validator(mode="after")
    def _check_remote(self) -> Settings:
        # As ReductStore: with a remote backend the engine's folder is the cache, and
        # RS_DATA_PATH is ignored (the tokens and state files live in the cache too).
        if self.remote_backend_type != "s3":
            return self
        if not self.remote_bucket.strip():
            raise ValueError("RS_REMOTE_BUCKET is required with RS_REMOTE_BACKEND_TYPE=s3")
        if self.remote_cache_path is None or not str(self.remote_cache_path).strip():
            raise ValueError("RS_REMOTE_CACHE_PATH is required with RS_REMOTE_BACKEND_TYPE=s3")
        if self.remote_prefix and (
            self.remote_prefix.startswith("/") or "//" in self.remote_prefix
        ):
            raise ValueError("RS_REMOTE_PREFIX must be relative ('a/b/', no '//')")
        if bool(self.remote_access_key) != (self.remote_secret_key is not None):
            raise ValueError(
                "set both RS_REMOTE_ACCESS_KEY and RS_REMOTE_SECRET_KEY, or neither "
                "(boto3's default credential chain)"
            )
        object.__setattr__(self, "data_path", self.remote_cache_path)
        return self

    @property
    def remote_enabled(self) -> bool:
        """Whether the data lives on S3 (``RS_REMOTE_BACKEND_TYPE=s3``)."""
        return self.remote_backend_type == "s3"

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        value = value.strip()
        if value == "localhost":
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address such as 0.0.0.0, 127.0.0.1 or ::") from None
        return value

    @field_validator("api_base_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        value = value.strip() or "/"
        if not value.startswith("/"):
            value = "/" + value
        if not value.endswith("/"):
            value += "/"
        return value

    @field_validator("api_token", "init_api_token", "remote_secret_key")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip() == "":
            return None
        return value

    @field_validator(
        "provisioning_path",
        "cert_path",
        "cert_key_path",
        "replication_ca_path",
        "remote_cache_path",
        mode="before",
    )
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @property
    def effective_instance_name(self) -> str:
        """``RS_INSTANCE_NAME`` trimmed, else the hostname, else ``unknown`` (as ReductStore)."""
        return self.instance_name.strip() or socket.gethostname() or "unknown"

    @property
    def auth_enabled(self) -> bool:
        """Auth is on when a token variable is set and ``RS_DISABLE_AUTH`` is not ``true``."""
        if self.disable_auth:
            return False
        return self.api_token is not None or self.init_api_token is not None

    @property
    def api_token_value(self) -> str | None:
        """``RS_API_TOKEN``'s value when it is in force (``RS_DISABLE_AUTH`` ignores it)."""
        if self.disable_auth or self.api_token is None:
            return None
        return self.api_token.get_secret_value()

    @property
    def init_api_token_value(self) -> str | None:
        """``RS_INIT_API_TOKEN``'s value when it is in force (a REPLICA creates no token)."""
        if self.disable_auth or self.init_api_token is None:
            return None
        if self.instance_role == InstanceRole.REPLICA:
            return None
        return self.init_api_token.get_secret_value()

    @property
    def public_base_url(self) -> str:
        """``RS_PUBLIC_URL`` with a trailing ``/``, else ``http(s)://host[:port]{base}``."""
        if self.public_url.strip():
            url = self.public_url.strip()
            return url if url.endswith("/") else url + "/"
        scheme = "https" if self.cert_path is not None else "http"
        host = self.host if ":" not in self.host else f"[{self.host}]"
        port = "" if self.port in (80, 443) else f":{self.port}"
        return f"{scheme}://{host}{port}{self.api_base_path}"

    @property
    def cors_origins(self) -> list[str]:
        """``RS_CORS_ALLOW_ORIGIN`` as a list (``*`` allows every origin)."""
        return [o.strip() for o in self.cors_allow_origin.split(",") if o.strip()]


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


KNOWN_ENV_NAMES = frozenset(env_name(f) for f in Settings.model_fields)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``environ`` (default: the process environment); ConfigError if bad."""
    env = dict(os.environ if environ is None else environ)
    values = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name.upper() in KNOWN_ENV_NAMES
    }
    try:
        # Values found in ``environ`` are passed explicitly (they win over the process env).
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, env)) from None


def _describe_validation_error(exc: ValidationError, env: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings: its message names them
            lines.append("invalid settings: " + error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        name = env_name(field)
        raw = next((v for k, v in env.items() if k.upper() == name), error.get("input"))
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {name}={raw!r}: {message}")
    return "; ".join(lines)


def unknown_env_names(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``RS_*`` names that no setting or provisioning group reads, with a close match if any."""
    env = os.environ if environ is None else environ
    unknown = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in KNOWN_ENV_NAMES:
            continue
        if PROVISIONING_GROUP.match(upper) or unsupported_reason(upper) is not None:
            continue
        close = difflib.get_close_matches(upper, KNOWN_ENV_NAMES, n=1, cutoff=0.75)
        unknown.append((name, close[0] if close else None))
    return unknown


SECRET_FIELDS = frozenset({"api_token", "init_api_token", "remote_secret_key"})
# Values the example files ship with: starting with one would make a published secret the key.
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme", "<secret>", "secret"})
AUTH_CHOICE = "RS_API_TOKEN, RS_INIT_API_TOKEN or RS_DISABLE_AUTH=true"

# ReductStore settings this appliance knows but does not implement: named as such, not as typos.
UNSUPPORTED_ENV_NAMES = {
    "RS_EXT_PATH": "IO extensions are not supported",
    "RS_PRIMARY_URL": "system events are not forwarded",
    "RS_SECONDARY_URL": "system events are not forwarded",
    "RS_IO_MAX_WRITERS_IN_FLIGHT": "writers are not limited",
    "RS_RATE_LIMIT_API": "rate limits are not supported",
    "RS_RATE_LIMIT_INGRESS": "rate limits are not supported",
    "RS_RATE_LIMIT_EGRESS": "rate limits are not supported",
    "RS_RWLOCK_TIMEOUT": "the engine uses no timed locks",
    "RS_RWLOCK_FAILURE_ACTION": "the engine uses no timed locks",
    "RS_SYSTEM_EVENTS_REMOTE_VERIFY_SSL": "events are not forwarded from a replica",
    "RS_SYSTEM_EVENTS_REMOTE_CA_PATH": "events are not forwarded from a replica",
    "RS_SYSTEM_EVENTS_REMOTE_TIMEOUT": "events are not forwarded from a replica",
    "RS_LICENSE_PATH": "there is no commercial licence",
    "RS_REMOTE_SESSION_TOKEN": "not read: static keys or the default credential chain only",
    "RS_REMOTE_SAS_TOKEN": "not read: static keys or the default credential chain only",
    "RS_LOCK_FILE_ENABLED": "ReductStore does not read it either",
}
UNSUPPORTED_PREFIXES = {"RS_ZENOH_": "the Zenoh API is not supported"}


def unsupported_reason(name: str) -> str | None:
    """Why a ReductStore setting this appliance does not implement is ignored; None if not one."""
    upper = name.upper()
    if upper in UNSUPPORTED_ENV_NAMES:
        return UNSUPPORTED_ENV_NAMES[upper]
    for prefix, reason in UNSUPPORTED_PREFIXES.items():
        if upper.startswith(prefix):
            return reason
    if upper.startswith("RS_AUDIT_"):
        return "deprecated by ReductStore and ignored"
    return None


def check_auth_choice(settings: Settings) -> None:
    """ConfigError unless authentication was chosen explicitly, as ReductStore 1.21 requires:
    exactly one token variable, or ``RS_DISABLE_AUTH=true`` (a REPLICA may leave it unset)."""
    if settings.disable_auth:
        return
    api, init = settings.api_token_value, settings.init_api_token_value
    if api is not None and init is not None:
        raise ConfigError("authentication: RS_API_TOKEN and RS_INIT_API_TOKEN must not both be set")
    for name, value in (("RS_API_TOKEN", api), ("RS_INIT_API_TOKEN", init)):
        if value is not None and value.strip().lower() in PLACEHOLDER_TOKENS:
            raise ConfigError(
                f"invalid setting {name}: {value!r} is the example placeholder; "
                "set a secret of your own (e.g. from `openssl rand -hex 24`)"
            )
    if api is None and init is None and settings.instance_role != InstanceRole.REPLICA:
        raise ConfigError(f"authentication is not configured: set {AUTH_CHOICE}")


def unsupported_env_names(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """ReductStore ``RS_*`` names that are set but not implemented here, with the reason."""
    env = os.environ if environ is None else environ
    found = []
    for name in sorted(env):
        if name.upper() in KNOWN_ENV_NAMES:
            continue
        reason = unsupported_reason(name)
        if reason is not None:
            found.append((name, reason))
    return found


def _field_kind(field: str) -> str:
    """``size``, ``duration`` or ``plain``: how the config table prints the field's value."""
    for meta in Settings.model_fields[field].metadata:
        func = getattr(meta, "func", None)
        if func in (_size, _optional_size):
            return "size"
        if func is _duration:
            return "duration"
    return "plain"


def describe(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """Rows ``(RS_NAME, value, source)`` of the effective configuration, secrets masked; sizes
    and durations in the literal form an operator writes, the instance name as ``/info`` has it."""
    env = {k.upper() for k in (os.environ if environ is None else environ)}
    rows = []
    for field in Settings.model_fields:
        name = env_name(field)
        value = getattr(settings, field)
        kind = _field_kind(field)
        if field in SECRET_FIELDS:
            shown = "(unset)" if value is None else "********"
        elif field == "instance_name" and not value.strip():
            shown = f"{settings.effective_instance_name} (host name)"
        elif isinstance(value, Enum):
            shown = str(value.value)
        elif value is None:
            shown = "(unset)"
        elif kind == "size":
            shown = format_size(value)
        elif kind == "duration":
            shown = format_duration(value)
        elif isinstance(value, bool):
            shown = str(value).lower()
        else:
            shown = str(value)
        rows.append((name, shown, "env" if name in env else "default"))
    return rows
