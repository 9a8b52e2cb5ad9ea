"""What the engine reacts to. Plain frozen values; the engine never reads a clock."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from headway.domain.models import Health


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class HostObserved:
    """The latest level-triggered observation of one host (from its agent, or its absence)."""

    host: str
    release: int | None
    generation: int
    health: Health
    connected: bool = True
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed. Early or repeated ticks are harmless: deadlines decide."""


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    command: Command
    actor: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TrafficDone:
    """The answer to a `Drain` or `Admit` action (same ``action_id``)."""

    action_id: str
    host: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Requests per second the service's hosts serve now (from the balancer's counters)."""

    rps: float


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class AnalysisDone:
    """The verdict of an `Analyze` action (same ``action_id``).

    ``errored``: a metrics source failed (not merely too little data): the rollout
    pauses at once with the reason, never passes and never rolls back on its own.
    """

    action_id: str
    verdict: Verdict
    summary: str
    errored: bool = False


EngineEvent = HostObserved | Tick | OperatorCommand | TrafficDone | LoadReport | AnalysisDone


def event_kind(event: EngineEvent) -> str:
    """The column of the transition table an event belongs to."""
    if isinstance(event, OperatorCommand):
        return event.command.value
    if isinstance(event, HostObserved):
        return "observed"
    if isinstance(event, TrafficDone):
        return "traffic"
    if isinstance(event, LoadReport):
        return "load"
    if isinstance(event, AnalysisDone):
        return "analysis"
    return "tick"
