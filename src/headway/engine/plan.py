"""A plan is a list of typed steps; strategies compile to plans, the engine runs plans.

Steps are data:

- ``Batch`` changes a set of hosts to the target release under the
  unavailability budget. With ``traffic`` (and a balancer in front of the
  service) each host is drained first and readmitted once healthy; without
  it (a blue-green idle pool) hosts are changed where they stand, and since
  they serve nothing they cost no budget.
- ``Pause`` waits for a duration, or for ``promote`` when ``seconds`` is None.
- ``Verify`` runs the service's verification gates and waits for their verdict.
- ``Shift`` sets the balancer: admits hosts at a weight and drains others
  (blue-green's traffic switch, at once or in weighted steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headway.errors import SpecError


@dataclass(frozen=True, slots=True)
class Batch:
    hosts: tuple[str, ...]
    traffic: bool = True

    def describe(self) -> str:
        where = "" if self.traffic else " (taking no traffic)"
        return f"upgrade {len(self.hosts)} host(s){where}"


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float | None  # None: until an operator promotes

    def describe(self) -> str:
        return "pause until promoted" if self.seconds is None else f"pause {self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class Shift:
    admit: tuple[tuple[str, int], ...]  # (host, weight)
    drain: tuple[str, ...]
    share: int = 100  # percent of traffic on the admitted hosts, for humans

    def describe(self) -> str:
        return f"shift {self.share}% of traffic to {len(self.admit)} host(s)"

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for h, _ in self.admit) + self.drain


@dataclass(frozen=True, slots=True)
class Verify:
    """Judge the hosts on the new release against those still on the old one.

    ``comparative`` False: only synthetic tests run (a blue-green idle pool takes no
    traffic yet). ``approval``: a person must promote once the gates pass.
    """

    comparative: bool = True
    approval: bool = False

    def describe(self) -> str:
        what = "verify against the baseline" if self.comparative else "run synthetic tests"
        return what + (", then wait for approval" if self.approval else "")


Step = Batch | Pause | Shift | Verify


def step_to_dict(step: Step) -> dict[str, Any]:
    if isinstance(step, Batch):
        return {"type": "batch", "hosts": list(step.hosts), "traffic": step.traffic}
    if isinstance(step, Shift):
        return {
            "type": "shift",
            "admit": [[h, w] for h, w in step.admit],
            "drain": list(step.drain),
            "share": step.share,
        }
    if isinstance(step, Verify):
        return {"type": "verify", "comparative": step.comparative, "approval": step.approval}
    return {"type": "pause", "seconds": step.seconds}


def step_from_dict(data: dict[str, Any]) -> Step:
    kind = data.get("type")
    if kind == "batch":
        return Batch(tuple(str(h) for h in data["hosts"]), bool(data.get("traffic", True)))
    if kind == "pause":
        seconds = data.get("seconds")
        return Pause(None if seconds is None else float(seconds))
    if kind == "shift":
        return Shift(
            tuple((str(h), int(w)) for h, w in data["admit"]),
            tuple(str(h) for h in data["drain"]),
            int(data.get("share", 100)),
        )
    if kind == "verify":
        return Verify(bool(data.get("comparative", True)), bool(data.get("approval", False)))
    raise SpecError(f"unknown plan step type {kind!r} in stored rollout state")
