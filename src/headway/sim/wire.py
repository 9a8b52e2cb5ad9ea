"""What travels between the simulated world and the control plane under test.

The world delivers `Inbound` messages to a `Plane` (the pure engine, or the
real runner over a real store); the plane answers through the `Outbound`
port: desired states to agents, calls to the balancer, verifications.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from headway.domain.models import Health
from headway.engine.events import Command, Verdict
from headway.engine.state import RolloutState
from headway.sim.monitor import Monitor

Obs = tuple[int | None, int, Health, str]  # release, generation, health, detail


@dataclass(frozen=True, slots=True)
class Hello:
    host: str
    obs: Obs


@dataclass(frozen=True, slots=True)
class Report:
    host: str
    obs: Obs


@dataclass(frozen=True, slots=True)
class Gone:
    host: str


@dataclass(frozen=True, slots=True)
class TrafficAnswer:
    rollout_id: str
    action_id: str
    host: str
    kind: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateAnswer:
    rollout_id: str
    action_id: str
    verdict: Verdict
    summary: str
    errored: bool


@dataclass(frozen=True, slots=True)
class Operator:
    command: Command
    actor: str


Inbound = Hello | Report | Gone | TrafficAnswer | GateAnswer | Operator


class Outbound(Protocol):
    """The world as the control plane sees it."""

    now: float

    def push(self, host: str, generation: int, release: int | None) -> None:
        """Send ``host``'s agent its desired state, if it has a session with this server."""

    def balancer_start(self, rollout_id: str, action_id: str, kind: str, host: str) -> None:
        """Drain or admit ``host``; the answer comes back as a `TrafficAnswer`."""

    def verify_start(self, rollout_id: str, action_id: str, canary: int, baseline: int) -> None:
        """Run the gates; the verdict comes back as a `GateAnswer`."""

    def log(self, text: str) -> None:
        """One line of the run's event log."""

    def wake_at(self, at: float) -> None:
        """Call `Plane.wake` at ``at`` (the earliest request wins)."""

    def server_died(self) -> None:
        """The server process is gone (after `Plane.crash`, at once or mid-batch)."""


class Plane(Protocol):
    """The control plane under test, watched by its `Monitor`."""

    monitor: Monitor  # built when the rollout starts
    ended: bool  # the rollout has reached a terminal phase
    says_hello: bool  # agents say hello at the start (else they start attached)

    @property
    def rollout(self) -> RolloutState | None:
        """The rollout as the server holds it now (None before it starts or while down)."""

    def begin(self) -> None:
        """Start the rollout."""

    def deliver(self, message: Inbound) -> None:
        """A message reaches the server."""

    def wake(self) -> None:
        """A timer the plane asked for fired."""

    def crash(self, mid_batch: bool) -> None:
        """The server dies (``mid_batch``: during its next batch, after commit, before acting)."""

    def boot(self) -> None:
        """The server starts again and recovers from what it stored."""

    def serving(self, hosts: list[str]) -> dict[str, bool]:
        """Per host of ``hosts``, whether the traffic reconciler would admit it now (connected, healthy,
        running what it should), as the server's store says."""

    def final(self) -> tuple[RolloutState | None, dict[str, int | None] | None]:
        """The rollout's last stored state, and the hosts' stored desired releases (or None)."""

    def close(self) -> None:
        """Release files and resources."""
