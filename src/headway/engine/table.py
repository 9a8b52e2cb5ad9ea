"""Every legal (phase, event) pair of a rollout, in one table.

Each row names the handler that runs and the phases it may lead to. A pair
that is not in the table is illegal: the engine raises `IllegalTransition`
naming the phase and the event. `docs/architecture.md` carries a diagram
generated from this table (`python -m headway.engine.table`); a test checks
the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from headway.domain.models import RolloutStatus as P


@dataclass(frozen=True)
class Transition:
    handler: str
    to: tuple[P, ...]
    note: str


_ACTIVE = (P.RUNNING, P.PAUSED, P.ROLLING_BACK)
_ENDS = (P.SUCCEEDED, P.FAILED, P.ROLLED_BACK, P.ABORTED)

TABLE: dict[tuple[P, str], Transition] = {
    # host observations and time move hosts along; they may end the rollout
    (P.RUNNING, "observed"): Transition(
        "observe", (P.RUNNING, P.ROLLING_BACK, P.FAILED, P.SUCCEEDED), "host report"
    ),
    # a stall with no host touched yet rolls back at once: rolled_back on the same tick
    (P.RUNNING, "tick"): Transition(
        "tick", (P.RUNNING, P.ROLLING_BACK, P.ROLLED_BACK, P.FAILED, P.SUCCEEDED), "deadline"
    ),
    (P.PAUSED, "observed"): Transition("observe", (P.PAUSED, P.ROLLING_BACK, P.FAILED), "host report"),
    (P.PAUSED, "tick"): Transition("tick", (P.PAUSED, P.ROLLING_BACK, P.FAILED), "deadline"),
    (P.ROLLING_BACK, "observed"): Transition(
        "observe", (P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED, P.FAILED), "host report"
    ),
    (P.ROLLING_BACK, "tick"): Transition(
        "tick", (P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED, P.FAILED), "deadline"
    ),
    # operators
    (P.RUNNING, "pause"): Transition("pause", (P.PAUSED,), "pause"),
    (P.PAUSED, "pause"): Transition("noop", (P.PAUSED,), "pause (already paused)"),
    # resume succeeds at once when the last hosts finished while paused; a rollback
    # paused by a failed shift back goes on rolling back
    (P.PAUSED, "resume"): Transition("resume", (P.RUNNING, P.SUCCEEDED, P.ROLLING_BACK), "resume"),
    (P.RUNNING, "resume"): Transition("noop", (P.RUNNING,), "resume (already running)"),
    (P.RUNNING, "promote"): Transition("promote", (P.RUNNING, P.SUCCEEDED), "promote"),
    (P.PAUSED, "promote"): Transition("promote", (P.RUNNING, P.SUCCEEDED), "promote"),
    # abort and rollback of a first rollout (no previous release) end it failed
    (P.RUNNING, "abort"): Transition("abort", (P.ROLLING_BACK, P.ABORTED, P.FAILED), "abort"),
    # in a rollback paused by a failed shift back, abort and rollback change nothing
    (P.PAUSED, "abort"): Transition("abort", (P.ROLLING_BACK, P.ABORTED, P.FAILED, P.PAUSED), "abort"),
    (P.RUNNING, "rollback"): Transition("rollback", (P.ROLLING_BACK, P.ROLLED_BACK, P.FAILED), "rollback"),
    (P.PAUSED, "rollback"): Transition(
        "rollback", (P.ROLLING_BACK, P.ROLLED_BACK, P.FAILED, P.PAUSED), "rollback"
    ),
    (P.ROLLING_BACK, "abort"): Transition("noop", (P.ROLLING_BACK,), "abort (already rolling back)"),
    (P.ROLLING_BACK, "rollback"): Transition("noop", (P.ROLLING_BACK,), "rollback (already rolling back)"),
}
# The balancer's answers move hosts along like reports do; load figures only inform.
for _phase, _to in (
    (P.RUNNING, (P.RUNNING, P.PAUSED, P.ROLLING_BACK, P.FAILED, P.SUCCEEDED)),
    (P.PAUSED, (P.PAUSED, P.ROLLING_BACK, P.FAILED)),
    (P.ROLLING_BACK, (P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED, P.FAILED)),
):
    TABLE[(_phase, "traffic")] = Transition("traffic", _to, "balancer answer")
    TABLE[(_phase, "load")] = Transition("load", _to, "load report")
    TABLE[(_phase, "analysis")] = Transition("analysis", _to, "verdict")
# a blue-green shift back that still fails after its retry rounds pauses the rollback
TABLE[(P.ROLLING_BACK, "traffic")] = Transition(
    "traffic", (P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED, P.FAILED, P.PAUSED), "balancer answer"
)
# Once a rollout has ended, reports, answers and time still arrive; they change nothing.
for _end in _ENDS:
    TABLE[(_end, "observed")] = Transition("noop", (_end,), "host report (ignored)")
    TABLE[(_end, "tick")] = Transition("noop", (_end,), "deadline (ignored)")
    TABLE[(_end, "traffic")] = Transition("noop", (_end,), "balancer answer (ignored)")
    TABLE[(_end, "load")] = Transition("noop", (_end,), "load report (ignored)")
    TABLE[(_end, "analysis")] = Transition("noop", (_end,), "verdict (ignored)")


def mermaid() -> str:
    """A Mermaid state diagram of the table (self-loops and no-ops left out)."""
    lines = ["stateDiagram-v2", "    [*] --> running: start"]
    seen: set[tuple[P, P, str]] = set()
    for (phase, event), transition in TABLE.items():
        for target in transition.to:
            if target is phase or transition.handler == "noop":
                continue
            edge = (phase, target, event)
            if edge not in seen:
                seen.add(edge)
                lines.append(f"    {phase.value} --> {target.value}: {event}")
    for end in _ENDS:
        lines.append(f"    {end.value} --> [*]")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a developer's tool
    print(mermaid())
