"""What the engine asks its caller to do. Every action has an id that is stable
across replays, so executing one twice is harmless."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SetDesired:
    """Host ``host`` should run ``release`` as desired-state generation ``generation``.

    Idempotent: the store applies it only if ``generation`` is newer than the host's.
    """

    action_id: str
    host: str
    release: int
    generation: int


@dataclass(frozen=True, slots=True)
class SetServiceRelease:
    """The service's current release (what new hosts get) becomes ``release``."""

    action_id: str
    service: str
    release: int


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """One line for the audit log (I4): every engine decision is recorded."""

    kind: str
    message: str
    host: str = ""
    actor: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    """Take ``host`` out of load balancing and wait for its requests in flight to end.

    The answer comes back as a `TrafficDone` event with the same id; the host's
    app is stopped only after it (the drain is confirmed, or its timeout passed).
    """

    action_id: str
    host: str


@dataclass(frozen=True, slots=True)
class Admit:
    """Put ``host`` (back) into load balancing, at ``weight`` if given; answered by `TrafficDone`."""

    action_id: str
    host: str
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class SetLivePool:
    """Blue-green: ``pool`` of the service takes the traffic from now on."""

    action_id: str
    service: str
    pool: str


@dataclass(frozen=True, slots=True)
class Analyze:
    """Run the service's verification gates: ``canary`` hosts against ``baseline`` ones.

    Answered by an `AnalysisDone` event with the same id.
    """

    action_id: str
    canary: tuple[str, ...]
    baseline: tuple[str, ...]
    comparative: bool = True


Action = SetDesired | SetServiceRelease | RecordEvent | Drain | Admit | SetLivePool | Analyze
TrafficAction = Drain | Admit
