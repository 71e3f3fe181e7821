"""Instance roles on shared storage: the lease (with fencing), the standby loop, replica refresh.

Public surface (ARCHITECTURE §5, ``spec/leases.md`` §3.3/§3.4):

    build_role_manager(settings, backend) -> RoleManager      role.py
        StandaloneRole | LeaseRole (PRIMARY/SECONDARY) | ReplicaRole
    LeaseManager(backend, LeaseConfig, clock=, owner=)        standby.py: step(), run(stop),
        check_writable(), check_writable_async(), wait_holding(), release(), rejoin()
    LeaseConfig, LeaseState, LeaseTimeout                     policy.py: settings, intervals
    Lease(backend, OwnerId, ttl_s=, clock=)                   lease.py: observe(), acquire(),
        renew(), release()  over create_if_absent / replace_if_unchanged only
    LeaseRecord, OwnerId, LeaseHeld, LeaseLost                record.py: .lock content, errors
    GenerationLog, Fence (+ check_current), snapshot_wal       fencing.py (rules: engine/generations.py)
    ReplicaRefresher(refresh, interval_s=)                    replica.py: step(), run(stop)
    Clock, SystemClock, ManualClock                           clock.py
    lease_backend(settings), build_role, load_wal_fence       wiring.py (for the services)

Nothing here imports Quart or the engine; the services wire the hooks (see role.py).
"""
