"""The transition table: complete, consistent with the engine, and drawn in the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import RollingStrategy
from headway.engine import machine
from headway.engine.events import (
    AnalysisDone,
    Command,
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    Tick,
    TrafficDone,
    Verdict,
)
from headway.engine.state import RolloutState
from headway.engine.table import TABLE, mermaid
from headway.errors import IllegalTransition

P = RolloutStatus
KINDS = ["observed", "tick", "traffic", "load", "analysis", *(c.value for c in Command)]
DOCS = Path(__file__).resolve().parents[2] / "docs"
START, END = "<!-- engine-diagram:start -->", "<!-- engine-diagram:end -->"


def event_of(kind: str) -> EngineEvent:
    if kind == "observed":
        return HostObserved("h0", 2, 2, Health.HEALTHY)
    if kind == "tick":
        return Tick()
    if kind == "traffic":
        return TrafficDone("r:999", "h0", ok=True)
    if kind == "load":
        return LoadReport(10.0)
    if kind == "analysis":
        return AnalysisDone("r:999", Verdict.PASS, "fine")
    return OperatorCommand(Command(kind), actor="alice")


def rollout_in(phase: RolloutStatus) -> RolloutState:
    views = [
        HostView(
            name=f"h{i}",
            service="web",
            address="127.0.0.1",
            desired_release=1,
            generation=1,
            observed_release=1,
            observed_generation=1,
            health=Health.HEALTHY,
            connected=True,
        )
        for i in range(3)
    ]
    state = machine.new_rollout(
        rollout_id="r",
        service="web",
        from_release=1,
        to_release=2,
        strategy=RollingStrategy(),
        hosts=views,
        now=0.0,
    ).state
    state.phase = phase
    return state


def test_every_handler_named_in_the_table_exists_and_every_handler_is_used() -> None:
    named = {t.handler for t in TABLE.values()}
    assert named == set(machine._HANDLERS)


def test_the_table_only_holds_known_phases_and_events() -> None:
    for phase, kind in TABLE:
        assert isinstance(phase, RolloutStatus)
        assert kind in KINDS


def test_reports_and_time_are_accepted_in_every_phase() -> None:
    for phase in RolloutStatus:
        for kind in ("observed", "tick", "traffic", "load", "analysis"):
            assert (phase, kind) in TABLE, f"{phase.value} must take '{kind}'"


def test_an_ended_rollout_changes_nothing_and_goes_nowhere() -> None:
    for (phase, _kind), transition in TABLE.items():
        if phase.terminal:
            assert transition.handler == "noop"
            assert transition.to == (phase,)


def test_every_transition_stays_or_moves_along_the_table() -> None:
    for (phase, kind), transition in TABLE.items():
        assert transition.to, f"({phase.value}, {kind}) leads nowhere"
        if transition.handler == "noop":
            assert transition.to == (phase,)


ILLEGAL = [(p, k) for p in RolloutStatus for k in KINDS if (p, k) not in TABLE]


def test_the_illegal_pairs_are_commands_while_rolling_back_or_after_the_end() -> None:
    expected = {(P.ROLLING_BACK, k) for k in ("pause", "resume", "promote")} | {
        (p, c.value) for p in RolloutStatus if p.terminal for c in Command
    }
    assert set(ILLEGAL) == expected


@pytest.mark.parametrize("phase,kind", ILLEGAL, ids=[f"{p.value}-{k}" for p, k in ILLEGAL])
def test_a_pair_not_in_the_table_raises_naming_the_phase_and_the_event(
    phase: RolloutStatus, kind: str
) -> None:
    state = rollout_in(phase)
    before = state.to_dict()
    with pytest.raises(IllegalTransition) as refused:
        machine.step(state, event_of(kind), 10.0)
    message = str(refused.value)
    assert phase.value in message and f"'{kind}'" in message, message
    assert refused.value.hint, "the error says what to do next"
    assert state.to_dict() == before, "a refused event changed the state"


def documented_diagram() -> tuple[Path, str]:
    """The diagram between the markers: docs/architecture.md if it has them, else ours."""
    for name in ("architecture.md", "engine-diagram.md"):
        path = DOCS / name
        if path.exists() and START in (text := path.read_text()):
            assert text.count(START) == 1 and text.count(END) == 1, f"{path}: markers twice"
            body = text.split(START, 1)[1].split(END, 1)[0]
            fenced = re.fullmatch(r"\s*```mermaid\n(.*?)\n```\s*", body, re.DOTALL)
            assert fenced, f"{path}: put the diagram in a ```mermaid block between the markers"
            return path, fenced.group(1)
    raise AssertionError(f"no {START} marker in docs/architecture.md or docs/engine-diagram.md")


def test_the_documented_diagram_is_the_one_the_table_gives() -> None:
    path, diagram = documented_diagram()
    assert diagram == mermaid(), (
        f"{path} is out of date: replace the block between the markers with the output of "
        "`python -m headway.engine.table`"
    )
