"""Instance roles on shared storage: the lease (with fencing), the standby loop, replica refresh.

Public surface (ARCHITECTURE §5, ``spec/leases.md`` §3.3/§3.4):

    build_role_manager(settings, backend) -> RoleManager      role.py
        StandaloneRole | LeaseRole (PRIMARY/SECONDARY) | ReplicaRole
    LeaseManager(backend, LeaseConfig, clock=, owner=)        lease_manager.py: step(),
        run(stop),
        confirm(), surely_holding(), wait_holding(), release(), rejoin()
    WriteFence(role): check(io=), check_async(), timed    write_fence.py: THE write fence,
        its safety argument written once (the engine's WriteFence)
    LeaseConfig, LeaseState, LeaseTimeout                     policy.py: settings, intervals
    Lease(backend, OwnerId, ttl_s=, clock=)                   lease.py: observe(), acquire(),
        renew(), release()  over create_if_absent / replace_if_unchanged only
    LeaseRecord, OwnerId, LeaseHeld, LeaseLost                lease_record.py: .lock, errors
    GenerationLog, Fence, snapshot_wal, load_wal_fence   fencing.py (rules: engine/generations.py)
    ReplicaRefresher(refresh, interval_s=)                    replica.py: step(), run(stop)
    Clock, SystemClock, ManualClock                           clock.py
    StepDown(role, serving)                                   step_down.py: exit or rejoin

Nothing here imports Quart or the services; the services (the composition root) build the
lease's backend and implement the step-down hooks.
"""
