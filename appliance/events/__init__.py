"""The instance's own events in the ``$system`` bucket (spec §14): audit, usage, log lines,
lifecycle and replication diagnostics. See ``recorder`` for the formats and guarantees."""

from appliance.events.recorder import SYSTEM_BUCKET, SystemEvents

__all__ = ["SYSTEM_BUCKET", "SystemEvents"]
