"""Provisioning: the desired state from env groups and YAML, applied at boot and on change.

Entry points for the wiring (ARCHITECTURE §6):

    load_desired(settings_environ, provisioning_path) -> DesiredState     ConfigError if invalid
    instance_overrides(desired) -> dict[str, Any]     YAML ``instance:`` as Settings field values
    as_environ(overrides) -> dict[str, str]           the same as RS_* strings (env wins on top)
    env_overridden(overrides, environ) -> list[str]   YAML instance keys an RS_* variable shadows
    Provisioner(environ=..., path=..., storage=..., tokens=...)
        boot() / await start() / await stop() / reload_once() / .state: ProvisioningState
    report_loaded(desired, environ)                    log skipped env groups and env overrides
    reconcile(desired, storage, tokens, state) -> ReconcileResult
    schema() -> dict                                   JSON Schema of the YAML format

Nothing here imports Quart or reads ``os.environ``: the environment is passed in.
"""

from provisioning.env import EnvGroups, load_env_groups
from provisioning.instance import (
    YAML_KEYS,
    as_environ,
    env_overridden,
    instance_overrides,
    restart_required,
)
from provisioning.merge import load_desired, merge
from provisioning.models import BucketSpec, DesiredState, InstanceSpec, ProvisioningFile, TokenSpec
from provisioning.provisioner import Provisioner, report_loaded
from provisioning.reconcile import (
    ReconcileResult,
    StorageLike,
    TokenPermissions,
    TokenProvisioner,
    TokenSkipped,
    reconcile,
)
from provisioning.schema import schema
from provisioning.state import ProvisioningState
from provisioning.yaml_loader import load_yaml

__all__ = [
    "BucketSpec",
    "DesiredState",
    "EnvGroups",
    "InstanceSpec",
    "ProvisioningFile",
    "ProvisioningState",
    "Provisioner",
    "ReconcileResult",
    "StorageLike",
    "TokenPermissions",
    "TokenProvisioner",
    "TokenSkipped",
    "TokenSpec",
    "YAML_KEYS",
    "as_environ",
    "env_overridden",
    "instance_overrides",
    "load_desired",
    "load_env_groups",
    "load_yaml",
    "merge",
    "reconcile",
    "report_loaded",
    "restart_required",
    "schema",
]
