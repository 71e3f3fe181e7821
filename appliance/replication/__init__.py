"""Replication tasks (ARCHITECTURE §1, spec replication): stream new records of a bucket to a
bucket of another instance, filtered, through a crash-safe transaction log per task and entry.

    models       ReplicationSettings (ReductStore 1.21 JSON, legacy filters folded into when)
    txlog        the ring-file transaction log
    filter       entry patterns and the when condition, per entry
    diagnostics  the hourly counters
    remote       the destination, over the public HTTP API only
    task         one task: notify (writers) and the sender loop
    manager      every task: CRUD, persistence, provisioning, start/stop
"""

from appliance.replication.manager import ReplicationManager, provision
from appliance.replication.models import (
    Compression,
    Mode,
    ReplicationSettings,
    parse_compression,
    parse_mode,
)
from appliance.replication.task import TaskOptions
from appliance.replication.txlog import UPDATE, WRITE

__all__ = [
    "UPDATE",
    "WRITE",
    "Compression",
    "Mode",
    "ReplicationManager",
    "ReplicationSettings",
    "TaskOptions",
    "parse_compression",
    "parse_mode",
    "provision",
]
