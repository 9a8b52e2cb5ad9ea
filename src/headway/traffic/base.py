"""The load-balancer port: what Headway asks of any balancer in front of a fleet.

Errors (both under `headway.errors.HeadwayError`)::

    TrafficError                  the balancer refused or cannot do what was asked;
    │                             retrying the same call will not help (unknown host, bad weight,
    │                             a socket without admin rights)
    └── TransientTrafficError     the balancer was unreachable, throttled or busy; the same call
                                  may succeed a moment later (`headway.traffic.retry.with_retries`)

A server's *admin state* is what Headway sets (ready, drain, maint); its
*status* is what the balancer reports, which also folds in health checks
(HAProxy: ``UP``, ``DOWN``, ``DRAIN``, ``MAINT``, ``no check``, ``UP 1/2`` ...).
A READY server takes traffic only once its status says so (`ServerStats.in_service`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from headway.errors import HeadwayError


class ServerState(StrEnum):
    READY = "ready"  # in load balancing
    DRAIN = "drain"  # no new requests from load balancing; requests in flight finish
    MAINT = "maint"  # no traffic at all and no health checks


@dataclass(frozen=True)
class ServerStats:
    name: str
    admin_state: ServerState
    status: str  # the balancer's own status text (HAProxy: UP, DOWN, DRAIN, MAINT, no check, ...)
    current_sessions: int  # requests in flight on this server (HAProxy: scur + qcur)
    total_sessions: int
    weight: int  # the weight Headway set (HAProxy: uweight), 0..256
    responses_2xx: int
    responses_5xx: int
    connection_errors: int
    response_errors: int
    avg_response_ms: float | None  # HAProxy's rtime over the last 1024 requests; None if unknown

    @property
    def in_service(self) -> bool:
        """Load balancing sends it new requests, and its health check says so: admin state
        READY, a weight above 0, and status ``UP`` (``no check`` without health checks).

        READY alone is not that. HAProxy keeps a server that its checks found ``DOWN``
        (a drained host whose app was stopped) DOWN after ``state ready`` until a check
        passes; and a server just out of MAINT shows ``UP 1/2``: assumed up, not checked
        yet, taking requests even when its app does not answer (``DOWN`` once a check
        fails). ``UP 1/2`` also shows a server whose last check failed.
        """
        status = self.status.strip()
        return (
            self.admin_state == ServerState.READY
            and self.weight > 0
            and (status == "UP" or status == "no check")
        )


class TrafficError(HeadwayError):
    status_code = 502
    kind = "traffic"


class TransientTrafficError(TrafficError):
    status_code = 503
    kind = "traffic_unavailable"


MAX_WEIGHT = 256

# Host names become balancer server names and travel inside text commands; anything outside this
# set (spaces, ';', newlines, '/') could split or redirect a command, so it is refused up front.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")


def check_name(name: str, what: str = "host") -> str:
    if not _NAME.fullmatch(name):
        raise TrafficError(
            f"{what} name {name!r} cannot be used as a load balancer server name",
            hint="use letters, digits and . _ : - (at most 100 characters, not starting with . : -)",
        )
    return name


def check_weight(weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise TrafficError(
            f"weight {weight!r} is out of range",
            hint=f"give a whole number from 0 (no new traffic) to {MAX_WEIGHT}",
        )
    return weight


def check_address(address: str) -> str:
    """An IP address in its normal form; balancers' dynamic servers do not resolve names."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise TrafficError(
            f"{address!r} is not an IP address",
            hint="give the host's IP address; the balancer does not resolve names",
        ) from None


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise TrafficError(f"port {port!r} is out of range", hint="give a TCP port from 1 to 65535")
    return port


class TrafficBackend(Protocol):
    """A load balancer Headway can steer. Every implementation passes
    `headway.testing.traffic_conformance`."""

    name: str
    settle_time: float  # seconds after DRAIN before the balancer surely sends nothing new

    async def register(self, host: str, address: str, port: int, *, admitted: bool) -> None:
        """Add ``host`` at ``address:port``. Idempotent: an existing server keeps its state
        (its address is updated if it moved); a new one starts in MAINT unless ``admitted``,
        and ``admitted`` always ends in READY."""
        ...

    async def deregister(self, host: str) -> None:
        """Remove ``host``; nothing happens if it is not there. Drain it first: a server with
        requests in flight is refused with a `TransientTrafficError`."""
        ...

    async def set_state(self, host: str, state: ServerState) -> None: ...

    async def set_weight(self, host: str, weight: int) -> None:
        """0..256; 0 sends no new requests from load balancing, like DRAIN."""
        ...

    async def stats(self) -> dict[str, ServerStats]:
        """Every registered server, by host name."""
        ...
