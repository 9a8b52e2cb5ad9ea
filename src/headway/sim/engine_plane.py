"""Engine-only mode: the pure engine, driven the way the runner drives it, for fleets of 100,000.

Each message reaching the server is one `machine.step`; a `Tick` fires at
`machine.next_deadline`. A server crash keeps only the state's stored form
(`RolloutState.to_dict`); the restarted server rebuilds the state from it
(checking that the round trip loses nothing) and, like the runner's outbox,
calls the balancer and the gates again for the answers still awaited.
"""

from __future__ import annotations

import json
from typing import Any

from headway.domain.models import Health, HostView
from headway.engine import machine
from headway.engine.actions import Action, Admit, Analyze, Drain, RecordEvent, SetDesired
from headway.engine.events import (
    AnalysisDone,
    EngineEvent,
    HostObserved,
    OperatorCommand,
    Tick,
    TrafficDone,
)
from headway.engine.state import RolloutState
from headway.errors import IllegalTransition
from headway.sim.monitor import InvariantBroken, Monitor
from headway.sim.scenario import Scenario
from headway.sim.wire import (
    GateAnswer,
    Gone,
    Hello,
    Inbound,
    Operator,
    Outbound,
    Report,
    TrafficAnswer,
)

ROLLOUT_ID = "web-v2"
FULL_CHECK_HOSTS = 200  # at most this many hosts: recount every host after every step


def initial_views(names: list[str], from_release: int) -> list[HostView]:
    # model_construct: 100,000 hosts of known-good values need no validation
    return [
        HostView.model_construct(
            name=name,
            service="web",
            address="127.0.0.1",
            labels={"service": "web"},
            desired_release=from_release,
            generation=1,
            observed_release=from_release,
            observed_generation=1,
            health=Health.HEALTHY,
            connected=True,
            detail="",
            last_seen=0.0,
        )
        for name in names
    ]


def log_actions(out: Outbound, actions: list[Action]) -> None:
    for a in actions:
        if isinstance(a, RecordEvent):
            out.log(f"audit {a.kind} {a.host} {a.message}" + (f" [{a.actor}]" if a.actor else ""))
        elif isinstance(a, SetDesired):
            out.log(f"set-desired {a.host} v{a.release} g{a.generation}")
        elif isinstance(a, Drain):
            out.log(f"drain {a.host} ({_seq(a.action_id)})")
        elif isinstance(a, Admit):
            out.log(f"admit {a.host} ({_seq(a.action_id)})")
        elif isinstance(a, Analyze):
            out.log(f"analyze ({_seq(a.action_id)}) {len(a.canary)} canary {len(a.baseline)} baseline")
        else:
            out.log(f"{type(a).__name__.lower()} ({_seq(a.action_id)})")


def _seq(action_id: str) -> str:
    return action_id.rsplit(":", 1)[-1]


class EnginePlane:
    says_hello = False

    def __init__(
        self, out: Outbound, scenario: Scenario, names: list[str], from_release: int, to_release: int
    ):
        self.out = out
        self.sc = scenario
        self.names = names
        self.from_release = from_release
        self.to_release = to_release
        self.state: RolloutState | None = None
        self.saved: dict[str, Any] | None = None
        self.up = True
        self.crash_next = False
        self.ended = False
        self.monitor = Monitor([], from_release, to_release)
        self.step_index = -1
        self.full = scenario.hosts <= FULL_CHECK_HOSTS
        # what the server's store would hold: connected, observed release, health; desired release
        self.seen: dict[str, tuple[bool, int | None, Health]] = dict.fromkeys(
            names, (True, from_release, Health.HEALTHY)
        )
        self.desired: dict[str, int | None] = dict.fromkeys(names, from_release)

    @property
    def rollout(self) -> RolloutState | None:
        return self.state if self.up else None

    def begin(self) -> None:
        views = initial_views(self.names, self.from_release)
        self.monitor = Monitor(views, self.from_release, self.to_release)
        spec = self.sc.spec
        decision = machine.new_rollout(
            rollout_id=ROLLOUT_ID,
            service="web",
            from_release=self.from_release,
            to_release=self.to_release,
            strategy=spec.strategy,
            hosts=views,
            now=self.out.now,
            actor="sim-operator",
            traffic=self.sc.traffic,
            verification=spec.verification,
        )
        del views
        self.state = decision.state
        self.monitor.started(self.state, decision.actions)
        self._checks(self.state)
        self._act(decision.actions)

    def deliver(self, message: Inbound) -> None:
        state = self.state
        if not self.up or state is None:
            return
        if isinstance(message, Hello | Report):
            release, generation, health, detail = message.obs
            self.seen[message.host] = (True, release, health)
            self._step(HostObserved(message.host, release, generation, health, True, detail))
            if isinstance(message, Hello) and self.up:
                track = state.hosts[message.host]
                self.out.push(message.host, track.generation, track.desired_release)
        elif isinstance(message, Gone):
            release, generation, health = self.monitor.stored_view(message.host)
            self.seen[message.host] = (False, release, health)
            self._step(HostObserved(message.host, release, generation, health, connected=False))
        elif isinstance(message, TrafficAnswer):
            self._step(TrafficDone(message.action_id, message.host, message.ok, message.detail))
        elif isinstance(message, GateAnswer):
            self._step(AnalysisDone(message.action_id, message.verdict, message.summary, message.errored))
        elif isinstance(message, Operator):
            try:
                self._step(OperatorCommand(message.command, message.actor))
            except IllegalTransition as error:
                self.out.log(f"refused: {error.message}")

    def wake(self) -> None:
        state = self.state
        if not self.up or state is None:
            return
        deadline = machine.next_deadline(state)
        if deadline is not None and deadline <= self.out.now:
            self._step(Tick())
        else:
            self._schedule()

    def _step(self, event: EngineEvent) -> None:
        state = self.state
        assert state is not None
        before = state.phase
        decision = machine.step(state, event, self.out.now)
        self.monitor.step(state, event, decision.actions, before, state.phase)
        self._checks(state)
        for action in decision.actions:
            if isinstance(action, SetDesired):
                self.desired[action.host] = action.release
        if self.crash_next:  # the state is stored; the server dies before acting
            self.crash_next = False
            self._die()
            return
        self._act(decision.actions)
        self._schedule()

    def _checks(self, state: RolloutState) -> None:
        self.monitor.check_counts(state)
        if self.full or state.step_index != self.step_index or (state.phase.terminal and not self.ended):
            self.step_index = state.step_index
            self.monitor.check_full(state)
        if state.phase.terminal:
            self.ended = True

    def _schedule(self) -> None:
        if self.state is not None:
            deadline = machine.next_deadline(self.state)
            if deadline is not None:
                self.out.wake_at(deadline)

    def _act(self, actions: list[Action]) -> None:
        out = self.out
        log_actions(out, actions)
        for a in actions:
            if isinstance(a, SetDesired):
                out.push(a.host, a.generation, a.release)
            elif isinstance(a, Drain):
                out.balancer_start(ROLLOUT_ID, a.action_id, "drain", a.host)
            elif isinstance(a, Admit):
                out.balancer_start(ROLLOUT_ID, a.action_id, "admit", a.host)
            elif isinstance(a, Analyze):
                out.verify_start(ROLLOUT_ID, a.action_id, len(a.canary), len(a.baseline))

    # ------------------------------------------------------------- restarts

    def crash(self, mid_batch: bool) -> None:
        if mid_batch:
            self.crash_next = True
        else:
            self._die()

    def _die(self) -> None:
        self.saved = self.state.to_dict() if self.state is not None else None
        self.state = None
        self.up = False
        self.out.server_died()

    def boot(self) -> None:
        self.up = True
        if self.saved is None:
            return
        stored = json.loads(json.dumps(self.saved))
        state = RolloutState.from_dict(stored)
        if json.loads(json.dumps(state.to_dict())) != stored:
            raise InvariantBroken(
                "state: RolloutState.from_dict(to_dict()) does not give the same state back"
            )
        self.state = state
        self.saved = None
        self.monitor.check_full(state)
        for action_id, pending in state.pending_traffic.items():
            if not pending.get("failed"):
                self.out.balancer_start(ROLLOUT_ID, action_id, str(pending["kind"]), str(pending["host"]))
        if state.analysis_pending:
            self.out.verify_start(ROLLOUT_ID, state.analysis_pending, 0, 0)
        self._schedule()

    def serving(self, hosts: list[str]) -> dict[str, bool]:
        serve = {}
        for name in hosts:
            connected, release, health = self.seen[name]
            serve[name] = connected and health is Health.HEALTHY and self.desired[name] == release
        return serve

    def final(self) -> tuple[RolloutState | None, dict[str, int | None] | None]:
        return self.state, None

    def close(self) -> None:
        self.state = None
