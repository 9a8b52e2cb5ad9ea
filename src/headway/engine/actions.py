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


Action = SetDesired | SetServiceRelease | RecordEvent
