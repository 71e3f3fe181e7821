"""What is provisioned right now, and how the last reload went.

One ``ProvisioningState`` per instance. ``reconcile`` (in a worker thread) and the provisioner
write it; the API reads it from request handlers: ``is_bucket_provisioned`` answers 409 for
changes to provisioned objects, ``to_json`` feeds the status shown with ``/info``. Writers
replace whole immutable values under a lock, so a reader never sees half an update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class ProvisioningState:
    """Provisioned bucket/token names, source, last reload time and last error."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: frozenset[str] = frozenset()
        self._tokens: frozenset[str] = frozenset()
        self._replications: frozenset[str] = frozenset()
        self._token_digests: Mapping[str, str] = {}
        self.source = "none"
        self.last_reload: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.restart_required: tuple[str, ...] = ()
        self.ok = True  # the last load/reconcile went through without any error

    # --- read side (API) ----------------------------------------------------------------

    def is_bucket_provisioned(self, name: str) -> bool:
        """True if bucket ``name`` is provisioned (API update/remove/rename → 409); the
        instance's own ``$system`` bucket always is (spec §14: it cannot be removed)."""
        return name in self._buckets or name == "$system"

    def is_token_provisioned(self, name: str) -> bool:
        """True if token ``name`` is provisioned (API remove/rotate → 409)."""
        return name in self._tokens

    @property
    def provisioned_buckets(self) -> frozenset[str]:
        """Names of the provisioned buckets."""
        return self._buckets

    @property
    def provisioned_tokens(self) -> frozenset[str]:
        """Names of the provisioned tokens."""
        return self._tokens

    def token_digest(self, name: str) -> str | None:
        """Digest of the definition last applied to token ``name`` (change detection)."""
        return self._token_digests.get(name)

    def to_json(self) -> dict[str, Any]:
        """The status object: source, last reload, last error, provisioned names."""
        return {
            "source": self.source,
            "ok": self.ok,
            "last_reload": _rfc3339(self.last_reload),
            "last_error": self.last_error,
            "last_error_at": _rfc3339(self.last_error_at),
            "restart_required": list(self.restart_required),
            "buckets": sorted(self._buckets),
            "tokens": sorted(self._tokens),
            "replications": sorted(self._replications),
        }

    # --- write side (reconcile, provisioner) --------------------------------------------

    def record_applied(
        self,
        *,
        buckets: Iterable[str],
        tokens: Iterable[str],
        token_digests: Mapping[str, str],
        source: str,
        errors: Iterable[str] = (),
        replications: Iterable[str] = (),
    ) -> None:
        """A reconcile finished: replace the provisioned sets; per-object errors, if any."""
        problems = list(errors)
        with self._lock:
            self._buckets = frozenset(buckets)
            self._replications = frozenset(replications)
            self._tokens = frozenset(tokens)
            self._token_digests = dict(token_digests)
            self.source = source
            self.last_reload = self._clock()
            # last_error is kept after a good reload (with its time) so the status still shows
            # what went wrong last; ``ok`` says whether it is still the case.
            self.ok = not problems
            if problems:
                self.last_error = "; ".join(problems)
                self.last_error_at = self.last_reload

    def record_rejected(self, message: str) -> None:
        """A reload was refused; the previous provisioning stays in force."""
        with self._lock:
            self.ok = False
            self.last_error = message
            self.last_error_at = self._clock()

    def record_restart_required(self, fields: Iterable[str]) -> None:
        """Instance settings that changed in YAML but keep their running value until restart."""
        with self._lock:
            self.restart_required = tuple(fields)
