"""A ReductStore-compatible time-series blob store (HTTP API v1.21)."""

__version__ = "0.1.0"
# The version reported in `/info` and the `Server` header: the ReductStore release we match.
REDUCTSTORE_VERSION = "1.21.0"
API_VERSION = "1.21"
