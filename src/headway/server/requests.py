"""What callers hand to the rollout runner (`headway.server.runner.Runner`).

Agent sessions, the API, the traffic driver and the verifier queue these;
the runner handles them in batches. Those in `headway.server.forwarding.FORWARDABLE`
can also travel through the database from a server that does not lead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from headway.engine.events import Command
from headway.protocol.messages import Observation
from headway.server.traffic_driver import TrafficOutcome
from headway.server.verification import VerificationOutcome


@dataclass
class _Request:
    reply: asyncio.Future[Any] | None = field(default=None, kw_only=True)
    # (inbox id, whether the sender waits for a reply) for a request from another server
    inbox: tuple[int, bool] | None = field(default=None, kw_only=True)
    # the server that took the request from an agent or a user ("": this one)
    origin: str = field(default="", kw_only=True)

@dataclass
class HostHello(_Request):
    host: str
    service: str
    address: str
    labels: dict[str, str]
    observed: Observation


@dataclass
class HostReport(_Request):
    host: str
    observed: Observation


@dataclass
class HostGone(_Request):
    host: str


@dataclass
class StartRollout(_Request):
    service: str
    to_release: int | None
    actor: str
    note: str = ""
    hotfix: bool = False  # bigger batches, short bakes, still verified (configs.hotfix_strategy)


@dataclass
class RolloutCommand(_Request):
    rollout_id: str
    command: Command
    actor: str
    reason: str = ""


@dataclass
class ServiceRollback(_Request):
    service: str
    actor: str
    reason: str = ""


@dataclass
class ReleaseCreated(_Request):
    service: str
    number: int


@dataclass
class RestoreConfig(_Request):
    """Re-apply the released config on the service's drifted hosts (configs.restore_drifted)."""

    service: str
    actor: str


@dataclass
class TrafficResult(_Request):
    outcome: TrafficOutcome


@dataclass
class VerificationResult(_Request):
    outcome: VerificationOutcome


@dataclass
class ServiceLoad(_Request):
    service: str
    rps: float


@dataclass
class Wake(_Request):
    """Nothing to do: wakes the runner's loop (its leadership changed)."""


Request = (
    HostHello
    | HostReport
    | HostGone
    | StartRollout
    | RolloutCommand
    | ServiceRollback
    | ReleaseCreated
    | RestoreConfig
    | TrafficResult
    | VerificationResult
    | ServiceLoad
    | Wake
)
