"""The engine under random faults: a Hypothesis state machine over a simulated fleet.

A fleet of 3-20 hosts with a random strategy (rolling, canary with pauses, or
blue-green over two pools with weighted shifts) and random parameters; each
host has an agent that converges to what it is told (healthy, or failed or
unhealthy by a fault drawn per host). With a load balancer in front (drawn
too), a simulated balancer answers the engine's drains and admits in any
order, late, twice, or with a failure (every call, while it is down: enough to use
up a blue-green shift back's retry rounds), and load reports come and go against
a capacity guard. Rules deliver, lose and repeat reports, break and mend hosts
outside the rollout, disconnect agents, fire timers early and late, and issue
operator commands. After every rule the invariants of `checks` hold (I1 at the
moment each host leaves service, the capacity guard, no SetDesired before the
host's drain is confirmed, no admit before it is healthy, I3 per step,
counters against a recount, a blue-green pool drained only once the pool
replacing it is surely in), a copy of the state made by a JSON round trip
behaves exactly like the original, and at the end a fleet and a balancer that
behave let ticking to `next_deadline` end the rollout, with I2 and I5 checked
on the way out.

A failure prints the rules that led to it (shrunk), with notes, and a
``@reproduce_failure`` blob.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import BlueGreenStrategy, CanaryStrategy, RollingStrategy, Strategy
from headway.engine import machine
from headway.engine.actions import Admit, Drain, RecordEvent, SetDesired
from headway.engine.events import (
    Command,
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    Tick,
    TrafficDone,
    event_kind,
)
from headway.engine.plan import Batch, Pause
from headway.engine.state import HostPhase, RolloutState
from headway.engine.table import TABLE
from headway.errors import IllegalTransition

from .checks import Ledger, check_state

P = RolloutStatus


@dataclass
class Agent:
    """A host's agent as the simulation sees it: converges to the newest desired state."""

    name: str
    release: int | None
    generation: int
    health: Health
    fault: str = "ok"  # how it does on the target release
    revert_fault: bool = False  # cannot go back to the previous release
    sick: bool = False  # broken on its own, whatever it runs
    connected: bool = True
    moved: bool = False  # told to change by this rollout
    reports: list[HostObserved] = field(default_factory=list)

    def settle(self, to_release: int) -> None:
        if self.release == to_release and self.fault == "fail":
            self.health = Health.FAILED
        elif self.release == to_release and self.fault == "unhealthy":
            self.health = Health.UNHEALTHY
        elif self.release != to_release and self.moved and self.revert_fault:
            self.health = Health.FAILED
        elif self.sick:
            self.health = Health.UNHEALTHY
        else:
            self.health = Health.HEALTHY

    def report(self) -> HostObserved:
        observed = HostObserved(
            self.name, self.release, self.generation, self.health, self.connected
        )
        self.reports.append(observed)
        return observed


def _operator_pair_legal(state: RolloutState, command: Command) -> bool:
    if (state.phase, command.value) not in TABLE:
        return False
    if command is Command.PROMOTE and state.phase is P.RUNNING:
        # the table lets promote reach its handler; the handler refuses when the rollout
        # is not at a pause step (nothing to promote)
        current = state.plan[state.step_index] if state.step_index < len(state.plan) else None
        return isinstance(current, Pause)
    # paused in a rollback (its shift back failed): promote is refused, nothing goes forward
    return not (command is Command.PROMOTE and state.phase is P.PAUSED and state.final_status is not None)


class RolloutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.broken = False

    # ------------------------------------------------------------- set-up

    @initialize(
        hosts=st.integers(3, 20),
        batch=st.one_of(st.integers(1, 6), st.sampled_from(["10%", "25%", "50%", "100%"])),
        max_unavailable=st.one_of(st.none(), st.integers(1, 4), st.sampled_from(["20%", "50%"])),
        min_healthy=st.sampled_from([0.0, 1.0, 5.0, 10.0]),
        deadline=st.sampled_from([15.0, 30.0, 60.0, 120.0]),
        failure_budget=st.integers(0, 2),
        auto_rollback=st.sampled_from([True, True, True, False]),
        first=st.integers(0, 9),
        faults=st.lists(
            st.tuples(st.integers(0, 19), st.sampled_from(["fail", "unhealthy", "revert"])),
            max_size=3,
        ),
        at_start=st.lists(
            st.tuples(st.integers(0, 19), st.sampled_from(["on-target", "sick", "offline"])),
            max_size=3,
        ),
        pauses=st.lists(st.sampled_from([None, 5.0, 30.0]), max_size=2),
        kind=st.sampled_from(["rolling", "rolling", "canary", "blue-green"]),
        traffic=st.sampled_from([False, True, True]),
        canary_steps=st.lists(
            st.one_of(st.sampled_from(["5%", "25%", "50%", "1", "2"]), st.sampled_from([None, 5.0, 30.0])),
            min_size=1,
            max_size=4,
        ),
        shifts=st.sampled_from([["100%"], ["50%", "100%"], ["10%", "50%", "100%"]]),
        shift_pause=st.sampled_from([0.0, 5.0, None]),
        window=st.sampled_from([0.0, 10.0, 60.0]),
        max_rps=st.sampled_from([None, None, 10.0, 50.0]),
    )
    def start(
        self,
        hosts: int,
        batch: int | str,
        max_unavailable: int | str | None,
        min_healthy: float,
        deadline: float,
        failure_budget: int,
        auto_rollback: bool,
        first: int,
        faults: list[tuple[int, str]],
        at_start: list[tuple[int, str]],
        pauses: list[float | None],
        kind: str,
        traffic: bool,
        canary_steps: list[str | float | None],
        shifts: list[str],
        shift_pause: float | None,
        window: float,
        max_rps: float | None,
    ) -> None:
        self.now = 1000.0
        self.from_release: int | None = None if first == 0 else 1
        self.to_release = 2
        self.agents: dict[str, Agent] = {}
        for i in range(hosts):
            name = f"h{i:02d}"
            if self.from_release is None:
                agent = Agent(name, None, 0, Health.UNKNOWN)
            else:
                agent = Agent(name, 1, 1, Health.HEALTHY)
            for index, fault in faults:
                if index == i and fault == "revert":
                    agent.revert_fault = True
                elif index == i:
                    agent.fault = fault
            for index, how in at_start:
                if index != i:
                    continue
                if how == "on-target":  # a host some earlier attempt already moved
                    agent.release = self.to_release
                elif how == "sick":
                    agent.sick = True
                else:
                    agent.connected = False
                agent.settle(self.to_release)
            self.agents[name] = agent
        policy: dict[str, object] = {
            "max_unavailable": max_unavailable,
            "min_healthy_time": min_healthy,
            "progress_deadline": deadline,
            "failure_budget": failure_budget,
            "auto_rollback": auto_rollback,
        }
        strategy: Strategy
        if kind == "canary":
            steps = _canary_steps(canary_steps)
            strategy = CanaryStrategy.model_validate({**policy, "steps": steps})
            shape = f"canary {steps}"
        elif kind == "blue-green":
            strategy = BlueGreenStrategy.model_validate(
                {**policy, "shift": shifts, "pause": "promote" if shift_pause is None else shift_pause,
                 "rollback_window": window}
            )
            shape = f"blue-green shift={shifts} pause={shift_pause} window={window:g}"
        else:
            strategy = RollingStrategy.model_validate({**policy, "batch_size": batch})
            shape = f"rolling batch={batch} pauses={pauses}"
        self.pools = {a: ("blue" if i < hosts // 2 else "green") for i, a in enumerate(self.agents)}
        views = [
            HostView(
                name=a.name,
                service="web",
                address="127.0.0.1",
                labels={"pool": self.pools[a.name]},
                desired_release=a.release,
                generation=a.generation,
                observed_release=a.release,
                observed_generation=a.generation,
                health=a.health,
                connected=a.connected,
            )
            for a in self.agents.values()
        ]
        decision = machine.new_rollout(
            rollout_id="r",
            service="web",
            from_release=self.from_release,
            to_release=self.to_release,
            strategy=strategy,
            hosts=views,
            now=self.now,
            traffic=traffic,
            live_pool="blue",
            max_rps_per_host=max_rps,
        )
        self.state = _with_pauses(decision.state, pauses) if kind == "rolling" else decision.state
        self.twin = _round_trip(self.state)
        self.ledger = Ledger.start(decision)
        self.pending: list[SetDesired] = []
        self.balancer: list[Drain | Admit] = []  # issued, not answered yet
        self.answered: list[TrafficDone] = []
        self.outage = False  # the balancer fails every call until it is back
        self.joined = 0
        self.steps = 0
        self.ended_checked = False
        self._queue(decision.actions)
        self.started = True
        note(
            f"fleet of {hosts}, v{self.from_release} -> v2, {shape}, traffic={traffic} "
            f"max_rps={max_rps} "
            f"max_unavailable={max_unavailable} (resolved {self.state.policy.max_unavailable}) "
            f"min_healthy={min_healthy:g} deadline={deadline:g} budget={failure_budget} "
            f"auto_rollback={auto_rollback}; faults: "
            + ", ".join(
                f"{a.name}:{a.fault}{'+revert' if a.revert_fault else ''}"
                for a in self.agents.values()
                if a.fault != "ok" or a.revert_fault
            )
        )

    # ------------------------------------------------------------- plumbing

    def _queue(self, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, SetDesired):
                self.pending.append(action)
                note(f"  -> SetDesired {action.host}=v{action.release} g{action.generation}")
            elif isinstance(action, (Drain, Admit)):
                self.balancer.append(action)
                weight = f" weight {action.weight}" if isinstance(action, Admit) and action.weight else ""
                note(f"  -> {type(action).__name__} {action.host}{weight} ({action.action_id})")

    def _step(self, event: EngineEvent) -> machine.Decision | None:
        """Feed one event to the engine and to its round-tripped twin; check both agree."""
        self.steps += 1
        try:
            return self._checked_step(event)
        except AssertionError:
            self.broken = True  # the twin and the ledger are out of step: no teardown
            raise

    def _checked_step(self, event: EngineEvent) -> machine.Decision | None:
        state = self.state
        kind = event.command if isinstance(event, OperatorCommand) else None
        legal = kind is None or _operator_pair_legal(state, kind)
        before = state.to_dict()
        try:
            decision = self.ledger.step(state, event, self.now)
        except IllegalTransition as error:
            assert not legal, f"{event} refused in {state.phase.value}: {error}"
            if kind is not Command.PROMOTE or state.phase is not P.RUNNING:
                named = state.phase.value in str(error) and event_name(event) in str(error)
                assert named, f"the refusal does not name the phase and the event: {error}"
            assert state.to_dict() == before, "a refused event changed the state"
            try:
                machine.step(self.twin, event, self.now)
            except IllegalTransition:
                pass
            else:
                raise AssertionError("the twin accepted what the original refused") from None
            note(f"  refused: {error}")
            return None
        assert legal, f"{event} accepted in {RolloutStatus(before['phase']).value}"
        twin_decision = machine.step(self.twin, event, self.now)
        assert twin_decision.actions == decision.actions, "the round-tripped twin acted differently"
        assert self.twin.to_dict() == state.to_dict(), "the round-tripped twin diverged"
        assert machine.next_deadline(self.twin) == machine.next_deadline(state)
        self._queue(decision.actions)
        return decision

    def _deliver_report(self, agent: Agent) -> None:
        self._step(agent.report())

    def _agent(self, index: int) -> Agent:
        names = list(self.agents)
        return self.agents[names[index % len(names)]]

    # ------------------------------------------------------------- rules: agents

    @precondition(lambda self: any(self.agents[a.host].connected for a in self.pending))
    @rule(index=st.integers(0, 1000), lose=st.integers(0, 5))
    def deliver(self, index: int, lose: int) -> None:
        """The driver hands a SetDesired to its agent; the agent converges and reports."""
        ready = [i for i, a in enumerate(self.pending) if self.agents[a.host].connected]
        action = self.pending.pop(ready[index % len(ready)])
        agent = self.agents[action.host]
        if action.generation <= agent.generation:
            note(f"deliver {action.host} g{action.generation}: older than g{agent.generation}")
            return
        agent.release = action.release
        agent.generation = action.generation
        agent.moved = True
        agent.settle(self.to_release)
        note(f"deliver {action.host}=v{action.release} g{action.generation} -> {agent.health}")
        if lose == 0:
            note("  report lost")
            return
        self._deliver_report(agent)

    @rule(index=st.integers(0, 1000))
    def heartbeat(self, index: int) -> None:
        """An agent reports what it observes now (level-triggered)."""
        agent = self._agent(index)
        if agent.connected:
            note(f"heartbeat {agent.name}: v{agent.release} g{agent.generation} {agent.health}")
            self._deliver_report(agent)

    @rule(index=st.integers(0, 1000), pick=st.integers(0, 1000))
    def repeat_old_report(self, index: int, pick: int) -> None:
        """A delayed or duplicated report arrives again (maybe of an older generation)."""
        agent = self._agent(index)
        if agent.reports:
            old = agent.reports[pick % len(agent.reports)]
            note(f"repeat {old.host}: v{old.release} g{old.generation} {old.health}")
            self._step(old)

    @rule(index=st.integers(0, 1000))
    def break_host(self, index: int) -> None:
        """A host fails on its own, whatever the rollout does with it."""
        agent = self._agent(index)
        agent.sick = True
        agent.settle(self.to_release)
        note(f"break {agent.name} -> {agent.health}")
        if agent.connected:
            self._deliver_report(agent)

    @precondition(lambda self: any(h.phase is HostPhase.VERIFYING for h in self.state.hosts.values()))
    @rule(index=st.integers(0, 1000))
    def flap(self, index: int) -> None:
        """A host being verified on the new release stops being healthy for a moment."""
        verifying = [n for n, h in self.state.hosts.items() if h.phase is HostPhase.VERIFYING]
        agent = self.agents[verifying[index % len(verifying)]]
        agent.sick = True
        agent.settle(self.to_release)
        note(f"flap {agent.name} -> {agent.health}")
        self._deliver_report(agent)
        agent.sick = False
        agent.settle(self.to_release)

    @rule(index=st.integers(0, 1000))
    def mend_host(self, index: int) -> None:
        agent = self._agent(index)
        agent.sick = False
        agent.settle(self.to_release)
        note(f"mend {agent.name} -> {agent.health}")
        if agent.connected:
            self._deliver_report(agent)

    @rule(index=st.integers(0, 1000))
    def disconnect(self, index: int) -> None:
        """The agent's channel drops: the server reports its last observation, disconnected."""
        agent = self._agent(index)
        if agent.connected:
            agent.connected = False
            note(f"disconnect {agent.name}")
            self._step(
                HostObserved(agent.name, agent.release, agent.generation, agent.health, False)
            )

    @rule(index=st.integers(0, 1000))
    def reconnect(self, index: int) -> None:
        agent = self._agent(index)
        if not agent.connected:
            agent.connected = True
            note(f"reconnect {agent.name}")
            self._deliver_report(agent)

    @precondition(lambda self: self.joined < 3)
    @rule(fresh=st.booleans())
    def register_host(self, fresh: bool) -> None:
        """A new host registers mid-rollout: nothing installed yet, or serving the old release."""
        name = f"n{self.joined}"
        self.joined += 1
        if fresh or self.from_release is None:
            agent = Agent(name, None, 0, Health.STARTING)
        else:
            agent = Agent(name, self.from_release, 1, Health.HEALTHY)
        self.agents[name] = agent
        self.ledger.generation[name] = agent.generation
        self.ledger.desired[name] = agent.release
        note(f"register {name}: v{agent.release} {agent.health}")
        self._deliver_report(agent)

    # ------------------------------------------------------------- rules: the balancer

    @precondition(lambda self: bool(self.balancer))
    @rule(index=st.integers(0, 1000), ok=st.sampled_from([True, True, True, False]))
    def balancer_answers(self, index: int, ok: bool) -> None:
        """The balancer answers one of the calls under way (any of them: they run at once)."""
        action = self.balancer.pop(index % len(self.balancer))
        ok = ok and not self.outage
        answer = TrafficDone(action.action_id, action.host, ok, "" if ok else "haproxy: timeout")
        outcome = "ok" if ok else "FAILED"
        note(f"balancer: {type(action).__name__} {action.host} ({action.action_id}) {outcome}")
        self.answered.append(answer)
        self._step(answer)

    @rule(down=st.booleans())
    def balancer_outage(self, down: bool) -> None:
        """The balancer goes down (every call fails, long enough to use up retries) or comes back."""
        self.outage = down
        note(f"balancer {'down' if down else 'back'}")

    @precondition(lambda self: bool(self.answered))
    @rule(index=st.integers(0, 1000))
    def balancer_answers_again(self, index: int) -> None:
        """An action executed twice (the driver restarted) answers twice."""
        answer = self.answered[index % len(self.answered)]
        note(f"balancer again: {answer.host} ({answer.action_id}) {'ok' if answer.ok else 'failed'}")
        self._step(answer)

    @precondition(lambda self: self.state.policy.max_rps_per_host is not None)
    @rule(rps=st.sampled_from([0.0, 15.0, 40.0, 100.0, 1000.0]))
    def load(self, rps: float) -> None:
        note(f"load {rps:g} req/s")
        self._step(LoadReport(rps))

    # ------------------------------------------------------------- rules: time

    @rule(seconds=st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 10.0, 30.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        note(f"advance {seconds:g}s (t={self.now:g})")
        self._step(Tick())

    @rule(late=st.sampled_from([0.0, 0.001, 2.0, 45.0]))
    def timer_fires(self, late: float) -> None:
        """The driver wakes up at (or some time after) next_deadline."""
        deadline = machine.next_deadline(self.state)
        if deadline is not None:
            self.now = max(self.now, deadline + late)
            note(f"timer at t={self.now:g} (deadline {deadline:g})")
            self._step(Tick())

    @rule(fraction=st.sampled_from([0.0, 0.5, 0.999]))
    def early_tick(self, fraction: float) -> None:
        """A Tick before next_deadline changes nothing."""
        deadline = machine.next_deadline(self.state)
        if deadline is None or deadline <= self.now:
            return
        at = self.now + fraction * (deadline - self.now)
        if at >= deadline:  # float rounding left no room before the deadline
            return
        self.now = at
        before = self.state.to_dict()
        note(f"early tick at t={self.now:g} (deadline {deadline:g})")
        decision = self._step(Tick())
        assert decision is not None and decision.actions == [], "an early tick acted"
        assert self.state.to_dict() == before, "an early tick changed the state"
        assert machine.next_deadline(self.state) == deadline

    # ------------------------------------------------------------- rules: operators

    @rule(command=st.sampled_from(list(Command)), actor=st.sampled_from(["", "alice"]))
    def operator(self, command: Command, actor: str) -> None:
        note(f"{command.value} by {actor or '-'} (phase {self.state.phase.value})")
        self._step(OperatorCommand(command, actor=actor))

    @rule()
    def round_trip(self) -> None:
        """The state is stored and loaded (JSON): the copy carries on exactly like the original."""
        self.twin = _round_trip(self.state)

    # ------------------------------------------------------------- invariants

    @invariant()
    def counters_agree(self) -> None:
        if self.started:
            check_state(self.state)

    @invariant()
    def ended_well(self) -> None:
        if self.started and self.state.phase.terminal and not self.ended_checked:
            self.ended_checked = True
            self.ledger.check_end(self.state, _planned(self.state))

    def teardown(self) -> None:
        """Liveness: once the fleet behaves, ticking to next_deadline ends the rollout."""
        if not self.started or self.broken:
            return
        note("--- the fleet behaves from here on")
        self.steps_before_teardown = self.steps
        for agent in self.agents.values():
            if agent.sick or not agent.connected:
                agent.sick = False
                agent.connected = True
                agent.settle(self.to_release)
                self._deliver_report(agent)
        for _ in range(600):
            if self.state.phase.terminal:
                break
            if self.balancer:
                action = self.balancer.pop(0)
                self._step(TrafficDone(action.action_id, action.host, True))
                continue
            if self.pending:
                action = self.pending.pop(0)
                agent = self.agents[action.host]
                if action.generation > agent.generation:
                    agent.release, agent.generation = action.release, action.generation
                    agent.moved = True
                    agent.settle(self.to_release)
                    self._deliver_report(agent)
                continue
            for agent in self.agents.values():
                track = self.state.hosts.get(agent.name)
                if track is None or (
                    track.observed_generation,
                    track.health,
                    track.connected,
                ) != (agent.generation, agent.health, True):
                    self._deliver_report(agent)  # a report lost earlier
            if self.pending or self.balancer or self.state.phase.terminal:
                continue
            if self.state.blocked.startswith("capacity guard"):
                # the load drawn so far held the rollout back (and every drain until now
                # was checked against it): the load goes down
                self._step(LoadReport(0.0))
                continue
            if self.state.waiting_promote and self.state.phase is P.RUNNING:
                self._step(OperatorCommand(Command.PROMOTE, actor="teardown"))
                continue
            deadline = machine.next_deadline(self.state)
            if deadline is None and self.state.phase is P.PAUSED:
                # hosts in flight have finished while paused: now resume
                self._step(OperatorCommand(Command.RESUME, actor="teardown"))
                continue
            assert deadline is not None, (
                f"stuck: {self.state.phase.value} with nothing to wait for ({self.state.blocked})"
            )
            self.now = max(self.now, deadline)
            self._step(Tick())
        assert self.state.phase.terminal, f"the rollout did not end: {self.state.phase.value}"
        note(f"ended {self.state.phase.value}: {self.state.reason}")
        event(f"ended {self.state.phase.value}")
        kinds = {a.kind for a in self.ledger.actions if isinstance(a, RecordEvent)}
        for kind in (
            "rollout.promoted",
            "rollout.paused",
            "host.flapped",
            "host.reverted",
            "host.drained",
            "traffic.failed",
            "traffic.late",
            "traffic.shifted",
            "traffic.backoff",
            "traffic.retry",
            "traffic.held",
            "traffic.admitted",
        ):
            if kind in kinds:
                event(f"saw {kind}")
        event(f"strategy {self.state.strategy}{' with a balancer' if self.state.traffic else ''}")
        if any(
            isinstance(a, RecordEvent) and a.kind == "rollout.paused" and "rollback paused" in a.message
            for a in self.ledger.actions
        ):
            event("saw a rollback paused by its shift back")
        for why in (
            "rollback is off",
            "brought back",
            "rollback stopped",
            "no previous",
            "no progress",
            "capacity guard",
        ):
            if why in self.state.reason:
                event(f"  because {why}")
        event(f"steps before teardown: {min(self.steps_before_teardown // 20 * 20, 60)}+")
        self.ended_well()


def event_name(event: EngineEvent) -> str:
    return event_kind(event)


def _canary_steps(drawn: list[str | float | None]) -> list[dict[str, object]]:
    """Drawn steps made valid: host steps keep growing, and a pause never comes first."""
    steps: list[dict[str, object]] = []
    last: dict[bool, int] = {}  # percent? -> last value
    for item in drawn:
        if isinstance(item, str):
            percent, value = item.endswith("%"), int(item.rstrip("%"))
            if value <= last.get(percent, 0):
                continue
            last[percent] = value
            steps.append({"hosts": item})
        elif steps:
            steps.append({"pause": "promote" if item is None else item})
    return steps or [{"hosts": "1"}]


def _round_trip(state: RolloutState) -> RolloutState:
    return RolloutState.from_dict(json.loads(json.dumps(state.to_dict())))


def _with_pauses(state: RolloutState, pauses: list[float | None]) -> RolloutState:
    """The same rollout with pause steps after its next batches, as a canary planner makes.

    The rolling planner makes no pauses yet; a stored state may hold them, and the
    engine runs them (promote, timed pauses), so the rules exercise them too.
    """
    if state.phase.terminal or not pauses:
        return state
    data = state.to_dict()
    plan = data["plan"]
    for k, seconds in enumerate(pauses):
        plan.insert(min(state.step_index + 1 + 2 * k, len(plan)), {"type": "pause", "seconds": seconds})
    batch_of = {n: i for i, s in enumerate(plan) if s["type"] == "batch" for n in s["hosts"]}
    for host in data["hosts"]:
        host["batch"] = batch_of.get(host["name"], -1)
    return RolloutState.from_dict(data)


def _planned(state: RolloutState) -> list[str]:
    return [name for step in state.plan if isinstance(step, Batch) for name in step.hosts]


RolloutMachine.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=80,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRollout = RolloutMachine.TestCase
