"""The decision being built while the engine handles one event."""

from __future__ import annotations

from dataclasses import dataclass, field

from headway.engine.actions import Action, RecordEvent
from headway.engine.state import RolloutState


@dataclass
class Decision:
    state: RolloutState
    actions: list[Action] = field(default_factory=list)

    @property
    def events(self) -> list[RecordEvent]:
        return [a for a in self.actions if isinstance(a, RecordEvent)]


class Ctx:
    """The state, the time and the actions so far."""

    def __init__(self, state: RolloutState, now: float, actor: str = "") -> None:
        self.s = state
        self.now = now
        self.actor = actor
        self.actions: list[Action] = []

    def record(self, kind: str, message: str, host: str = "") -> None:
        self.actions.append(RecordEvent(kind, message, host=host, actor=self.actor))
