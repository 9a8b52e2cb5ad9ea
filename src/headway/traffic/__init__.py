"""Traffic: the load-balancer port, its HAProxy adapter, and the drain handshake."""

from headway.traffic.base import (
    ServerState,
    ServerStats,
    TrafficBackend,
    TrafficError,
    TransientTrafficError,
)
from headway.traffic.drain import DrainOutcome, admit, drain
from headway.traffic.haproxy import HAProxyBackend, HAProxyRuntime
from headway.traffic.haproxy_process import HAProxyProcess
from headway.traffic.retry import with_retries

__all__ = [
    "DrainOutcome",
    "HAProxyBackend",
    "HAProxyProcess",
    "HAProxyRuntime",
    "ServerState",
    "ServerStats",
    "TrafficBackend",
    "TrafficError",
    "TransientTrafficError",
    "admit",
    "drain",
    "with_retries",
]
