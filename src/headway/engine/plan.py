"""A plan is a list of typed steps; strategies compile to plans, the engine runs plans.

Steps are data. ``Batch`` changes a set of hosts to the target release under
the unavailability budget; ``Pause`` waits for a duration, or for
``promote`` when ``seconds`` is None. Later strategies (canary, blue-green)
add step types here and their handling in the engine, not new engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headway.errors import SpecError


@dataclass(frozen=True, slots=True)
class Batch:
    hosts: tuple[str, ...]

    def describe(self) -> str:
        return f"upgrade {len(self.hosts)} host(s)"


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float | None  # None: until an operator promotes

    def describe(self) -> str:
        return "pause until promoted" if self.seconds is None else f"pause {self.seconds:g}s"


Step = Batch | Pause


def step_to_dict(step: Step) -> dict[str, Any]:
    if isinstance(step, Batch):
        return {"type": "batch", "hosts": list(step.hosts)}
    return {"type": "pause", "seconds": step.seconds}


def step_from_dict(data: dict[str, Any]) -> Step:
    kind = data.get("type")
    if kind == "batch":
        return Batch(tuple(str(h) for h in data["hosts"]))
    if kind == "pause":
        seconds = data.get("seconds")
        return Pause(None if seconds is None else float(seconds))
    raise SpecError(f"unknown plan step type {kind!r} in stored rollout state")
