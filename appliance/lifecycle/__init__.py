"""Lifecycle policies (spec §10): scheduled removal of records by age and/or ``when`` condition.

``policy`` parses and validates the settings JSON, ``runner`` does one run against the engine
(blocking, in small locked steps), ``manager`` keeps the policies (persisted in
``<data>/.lifecycles``), schedules their runs and records their diagnostics.
"""

from appliance.lifecycle.manager import LifecycleManager
from appliance.lifecycle.policy import LifecyclePolicy, parse_policy

__all__ = ["LifecycleManager", "LifecyclePolicy", "parse_policy"]
