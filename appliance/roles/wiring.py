"""What the services need to put a role together: the lease's backend, the role, the WAL fence.

Kept apart from ``role.py`` so the role managers stay free of settings-to-backend plumbing.
"""

from __future__ import annotations

from appliance.engine.mirror import KEY_PREFIX as DATA_KEY_PREFIX
from appliance.roles.fencing import Fence, GenerationLog, snapshot_wal
from appliance.roles.role import LeaseRole, RoleManager, build_role_manager
from appliance.settings import Settings
from backends.filesystem import FilesystemBackend

# A lease CAS waits at most this long for another writer's key lock (a stopped holder's
# lock is taken over sooner, see ``backends.fileio.key_lock``); the next poll retries.
MAX_LOCK_WAIT_SECONDS = 5.0


def lease_backend(settings: Settings) -> FilesystemBackend:
    """The backend holding ``.lock``, ``.generation`` and ``.generations``: the data folder,
    or with the data on S3 the bucket (beside ``r/`` under ``RS_REMOTE_PREFIX``)."""
    if settings.remote_enabled:
        from appliance import remote  # late: boto3 only when S3 is configured

        return remote.remote_backend(settings)  # type: ignore[return-value]
    ttl = settings.lock_file_ttl
    bound = min(settings.lock_file_polling_interval, ttl / 4 if ttl > 0 else MAX_LOCK_WAIT_SECONDS)
    return FilesystemBackend(
        settings.data_path, lock_timeout_seconds=max(0.05, min(bound, MAX_LOCK_WAIT_SECONDS))
    )


def build_role(settings: Settings, backend: FilesystemBackend) -> RoleManager:
    """The role manager for ``RS_INSTANCE_ROLE`` (no file is touched until ``start``)."""
    role = build_role_manager(settings, backend)
    if settings.remote_enabled and isinstance(role, LeaseRole):
        # On S3 the engine's files are the objects under "r/": the WAL boundaries of a new
        # generation are keyed as the engine (the cache folder) names them.
        role._snapshot = lambda: {  # noqa: SLF001 - the one place that knows the key layout
            key[len(DATA_KEY_PREFIX) :]: boundary
            for key, boundary in snapshot_wal(backend).items()
            if key.startswith(DATA_KEY_PREFIX)
        }
    return role


def load_wal_fence(backend: FilesystemBackend, generation: int) -> Fence:
    """The generation fence recovery applies; LeaseLost if a newer generation already began."""
    fence = Fence(GenerationLog(backend).markers(), generation)
    fence.check_current()
    return fence
