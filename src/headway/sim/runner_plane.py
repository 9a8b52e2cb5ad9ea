"""Runner mode: the real `Runner` over a real `Store` (SQLite in a temporary directory).

The simulator does what `Runner.run` and the agent channel do, without an
event loop: messages that reach the server within a few simulated
milliseconds form one batch for `Runner._handle` (which persists state,
audit events, desired states and the outbox in one transaction, then acts);
a batch also runs when `_seconds_to_next_deadline` says a deadline is due.
A crash drops the runner object (and its hub, balancer and gate tasks); the
next one starts with `_recover()` from the store. A crash "mid-batch"
happens after the commit and before the actions are carried out, so the
recovery must re-run the outbox.

`TracedRunner` subclasses the runner only to see each engine step (the
request, the engine event it becomes, the actions, the phase before and
after) so the monitor checks exactly what the engine decided, and to
inject the mid-batch crash. The ports are fakes that hand their work to
the simulated world: `SimHub` (desired states to agents), `SimTraffic`
(the balancer), `SimVerifier` (the gates).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from headway.domain.models import ArtifactRef, Health, HostView, RolloutStatus
from headway.domain.spec import ServiceSpec
from headway.engine.actions import Action, RecordEvent
from headway.engine.events import (
    AnalysisDone,
    EngineEvent,
    HostObserved,
    OperatorCommand,
    Tick,
    TrafficDone,
)
from headway.engine.state import RolloutState
from headway.errors import Fenced, HeadwayError
from headway.protocol.messages import Desired, Observation
from headway.server.hub import AgentHub
from headway.server.requests import (
    HostGone,
    HostHello,
    HostReport,
    Request,
    RolloutCommand,
    StartRollout,
    TrafficResult,
    VerificationResult,
)
from headway.server.runner import Runner
from headway.server.traffic_driver import TrafficDriver, TrafficOutcome, _should_serve
from headway.server.verification import VerificationOutcome, Verifier
from headway.sim.engine_plane import FULL_CHECK_HOSTS, log_actions
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
from headway.store import Store, Tx

BATCH_WINDOW = 0.005  # messages reaching the server this close together form one batch
ARTIFACT = ArtifactRef(digest="sha256:" + "ab" * 32, size=1024, url="artifacts/web.tar.gz")


class SimClock:
    """The simulated world's time, as a `headway.clock.Clock`."""

    def __init__(self, out: Outbound) -> None:
        self._out = out

    def now(self) -> float:
        return self._out.now

    def monotonic(self) -> float:
        return self._out.now


class SimHub(AgentHub):
    def __init__(self, out: Outbound) -> None:
        super().__init__()
        self._out = out

    def push(self, host: str, message: Desired) -> bool:
        self._out.push(host, message.generation, message.release.number if message.release else None)
        return True


class SimTraffic(TrafficDriver):
    def __init__(self, out: Outbound, clock: SimClock) -> None:
        super().__init__(lambda _: None, clock, _NO_RANDOM)
        self._out = out

    def start(
        self,
        *,
        rollout_id: str,
        action_id: str,
        kind: str,
        spec: ServiceSpec,
        host: HostView,
        weight: int | None = None,
    ) -> None:
        self._out.balancer_start(rollout_id, action_id, kind, host.name)


class SimVerifier(Verifier):
    def __init__(self, out: Outbound) -> None:
        super().__init__(None, lambda _: None)
        self._out = out

    def start(
        self,
        *,
        rollout_id: str,
        action_id: str,
        spec: ServiceSpec,
        canary: list[HostView],
        baseline: list[HostView],
        comparative: bool,
    ) -> None:
        self._out.verify_start(rollout_id, action_id, len(canary), len(baseline))


class _NoRandom:
    """The balancer driver's jitter source; the fakes never draw from it."""

    def random(self) -> float:
        raise AssertionError("the simulation draws every random number from its own generator")


_NO_RANDOM: Any = _NoRandom()


class _Crash(Exception):
    """The simulated server process dies here."""


class _AllBut(set[str]):
    """Every host but one: lets `_mark_absent_hosts` mark one host per call (so each step is seen)."""

    def __init__(self, absent: str) -> None:
        super().__init__()
        self.absent = absent

    def __contains__(self, name: object) -> bool:
        return name != self.absent


@dataclass
class Traced:
    rollout_id: str
    event: EngineEvent | None  # None: the rollout started
    actions: list[Action]
    before: RolloutStatus
    after: RolloutStatus
    views: list[HostView] | None = None


class TracedRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trace: list[Traced] = []
        self.crash_on_execute = False
        self._sizes: dict[str, int] = {}
        self._phase: dict[str, RolloutStatus] = {}

    def _handle(self, batch: list[Request]) -> None:
        self.trace = []
        self._sizes = {}
        self._phase = {rid: s.phase for rid, s in self.states.items()}
        super()._handle(batch)

    def _engine_event(self, tx: Tx, request: Request) -> tuple[str | None, EngineEvent | None]:
        """Which rollout the runner will step for ``request``, and with what event."""
        if isinstance(request, HostHello | HostReport):
            service = (
                request.service if isinstance(request, HostHello) else self.host_service.get(request.host)
            )
            o = request.observed
            event = HostObserved(request.host, o.release, o.generation, o.health, True, o.detail)
            return self.by_service.get(service or ""), event
        if isinstance(request, HostGone):
            view = tx.get_host(request.host)
            gone = HostObserved(
                request.host, view.observed_release, view.observed_generation, view.health, connected=False
            )
            return self.by_service.get(self.host_service.get(request.host, "")), gone
        if isinstance(request, TrafficResult):
            t = request.outcome
            return t.rollout_id, TrafficDone(t.action_id, t.host, t.ok, t.detail)
        if isinstance(request, VerificationResult):
            v = request.outcome
            return v.rollout_id, AnalysisDone(v.action_id, v.verdict, v.summary, v.errored)
        if isinstance(request, RolloutCommand):
            return request.rollout_id, OperatorCommand(request.command, request.actor, request.reason)
        return None, None

    def _apply(
        self, tx: Tx, request: Request, now: float, changed: dict[str, list[Action]], pushes: list[str]
    ) -> Any:
        rollout_id, event = self._engine_event(tx, request)
        state = self.states.get(rollout_id) if rollout_id is not None else None
        known = set(self.states)
        result = super()._apply(tx, request, now, changed, pushes)
        if isinstance(request, StartRollout):
            for rid in self.states:
                if rid not in known:
                    views = tx.list_hosts(request.service)
                    self._traced(rid, None, changed[rid], RolloutStatus.RUNNING, views)
        elif state is not None and rollout_id is not None and event is not None:
            self._traced(rollout_id, event, changed[rollout_id], state.phase, None)
        return result

    def _traced(
        self,
        rid: str,
        event: EngineEvent | None,
        actions: list[Action],
        after: RolloutStatus,
        views: list[HostView] | None,
    ) -> None:
        start = self._sizes.get(rid, 0)
        self._sizes[rid] = len(actions)
        before = self._phase.get(rid, RolloutStatus.RUNNING)
        self._phase[rid] = after
        self.trace.append(Traced(rid, event, actions[start:], before, after, views))

    def _mark_absent_hosts(self, tx: Tx, now: float, changed: dict[str, list[Action]]) -> None:
        real = self.connected_since_start
        absent = [
            (state, name)
            for state in self.states.values()
            for name, track in state.hosts.items()
            if name not in real and track.connected
        ]
        try:
            for state, name in absent:
                track = state.hosts[name]
                event = HostObserved(
                    name, track.observed_release, track.observed_generation, track.health, connected=False
                )
                self.connected_since_start = _AllBut(name)
                super()._mark_absent_hosts(tx, now, changed)
                self._traced(state.rollout_id, event, changed.get(state.rollout_id, []), state.phase, None)
        finally:
            self.connected_since_start = real

    def _persist(self, tx: Tx, rollout_id: str, actions: list[Action], now: float) -> Any:
        state = self.states[rollout_id]
        if len(actions) > self._sizes.get(rollout_id, 0):  # the deadline tick after the requests
            self._traced(rollout_id, Tick(), actions, state.phase, None)
        return super()._persist(tx, rollout_id, actions, now)

    def _execute(self, items: Any) -> None:
        if self.crash_on_execute:
            self.crash_on_execute = False
            raise _Crash
        super()._execute(items)


def _fast_tmp() -> str | None:
    """A memory file system when there is one: commits need no disk flush there."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


class RunnerPlane:
    says_hello = True

    def __init__(
        self, out: Outbound, scenario: Scenario, names: list[str], from_release: int, to_release: int
    ):
        self.out = out
        self.sc = scenario
        self.from_release = from_release
        self.to_release = to_release
        self._tmp = tempfile.TemporaryDirectory(prefix="headway-sim-", dir=_fast_tmp())
        self.store = Store(f"sqlite:///{self._tmp.name}/state.db")
        self.store.migrate()
        self.clock = SimClock(out)
        self.loop = asyncio.new_event_loop()
        self.monitor = Monitor([], from_release, to_release)
        self.inbox: list[Request] = []
        self.rid: str | None = None
        self.state: RolloutState | None = None
        self.ended = False
        self.up = True
        self.events_seen = 0
        self.full = scenario.hosts <= FULL_CHECK_HOSTS
        self.step_index = -1
        now = out.now
        with self.store.tx() as tx:
            tx.put_service(scenario.spec, now)
            tx.create_release("web", ARTIFACT, {}, "sim", "", now)
            tx.create_release("web", ARTIFACT, {"BUILD": "2"}, "sim", "", now)
            tx.set_service_current_release("web", from_release)
            for name in names:
                tx.upsert_host(name, "web", "127.0.0.1", {"service": "web"}, now)
                tx.set_host_desired(name, from_release, 1)
                tx.record_observation(name, from_release, 1, Health.HEALTHY, "", now)
                tx.set_disconnected(name, now)
        self.runner = self._new_runner()
        self.runner._recover()

    def _new_runner(self) -> TracedRunner:
        """A runner that leads: it takes the lease, so every earlier runner is fenced."""
        runner = TracedRunner(
            self.store,
            SimHub(self.out),
            self.clock,
            reconnect_grace=self.sc.reconnect_grace,
            traffic=SimTraffic(self.out, self.clock),
            verifier=SimVerifier(self.out),
        )
        with self.store.tx() as tx:
            runner.fence = tx.take_lease("sim", f"runner {id(runner)}", ttl=1e9)
        return runner

    def _check_deposed(self, old: TracedRunner) -> None:
        """The runner before a restart, still holding its in-memory rollouts (a leader that
        was paused, not killed), tries one more batch: the store must refuse it whole."""
        with self.store.tx() as tx:
            before = (tx.active_rollouts(), tx.list_events(limit=1_000_000)[-1:], tx.list_hosts())
        try:
            old._handle([])
        except Fenced:
            pass
        else:
            raise InvariantBroken("a deposed runner's batch was not refused (fencing token)")
        with self.store.tx() as tx:
            after = (tx.active_rollouts(), tx.list_events(limit=1_000_000)[-1:], tx.list_hosts())
        if after != before:
            raise InvariantBroken("a deposed runner changed the store")

    @property
    def rollout(self) -> RolloutState | None:
        if not self.up or self.rid is None:
            return None
        return self.runner.states.get(self.rid)

    # -------------------------------------------------------------- requests

    def begin(self) -> None:
        self._handle([StartRollout("web", self.to_release, "sim-operator")])

    def deliver(self, message: Inbound) -> None:
        if not self.up:
            return
        request: Request
        if isinstance(message, Hello):
            release, generation, health, detail = message.obs
            observed = Observation(release=release, generation=generation, health=health, detail=detail)
            request = HostHello(message.host, "web", "127.0.0.1", {"service": "web"}, observed)
        elif isinstance(message, Report):
            release, generation, health, detail = message.obs
            observed = Observation(release=release, generation=generation, health=health, detail=detail)
            request = HostReport(message.host, observed)
        elif isinstance(message, Gone):
            request = HostGone(message.host)
        elif isinstance(message, TrafficAnswer):
            m = message
            request = TrafficResult(TrafficOutcome(m.rollout_id, m.action_id, m.host, m.kind, m.ok, m.detail))
        elif isinstance(message, GateAnswer):
            g = message
            request = VerificationResult(
                VerificationOutcome(g.rollout_id, g.action_id, g.verdict, g.summary, g.errored)
            )
        else:
            assert isinstance(message, Operator)
            if self.rid is None:
                return
            request = RolloutCommand(self.rid, message.command, message.actor)
        self.inbox.append(request)
        self.out.wake_at(self.out.now + BATCH_WINDOW)

    def wake(self) -> None:
        if not self.up:
            return
        batch, self.inbox = self.inbox, []
        while not self.runner.queue.empty():
            batch.append(self.runner.queue.get_nowait())
        due = self.runner._seconds_to_next_deadline()
        if batch or due == 0.0:
            self._handle(batch)
        else:
            self._schedule()

    def _handle(self, batch: list[Request]) -> None:
        for request in batch:
            if isinstance(request, HostHello | StartRollout | RolloutCommand):
                request.reply = self.loop.create_future()
        runner = self.runner
        crashed = False
        try:
            runner._handle(batch)
        except _Crash:
            crashed = True
        self._check(runner.trace)
        for request in batch:
            reply = request.reply
            if reply is None or not reply.done():
                continue
            try:
                result = reply.result()
            except HeadwayError as error:
                self.out.log(f"refused: {self._clean(error.message)}")
                continue
            if isinstance(request, HostHello) and isinstance(result, Desired) and not crashed:
                # a runner that answers a hello with its desired state (the channel pushes it)
                self.out.push(
                    request.host, result.generation, result.release.number if result.release else None
                )
        if crashed:
            self._die()
        else:
            self._schedule()

    def _clean(self, text: str) -> str:
        return text.replace(self.rid, "R") if self.rid else text

    def _schedule(self) -> None:
        seconds = self.runner._seconds_to_next_deadline()
        if seconds is not None:
            self.out.wake_at(self.out.now + seconds)

    # ---------------------------------------------------------------- checks

    def _check(self, trace: list[Traced]) -> None:
        if not trace:
            return
        records: list[RecordEvent] = []
        for t in trace:
            if t.event is None:
                assert t.views is not None
                self.rid = t.rollout_id
                self.monitor = Monitor(t.views, self.from_release, self.to_release)
                self.state = self.runner.states[t.rollout_id]
                self.monitor.started(self.state, t.actions)
            else:
                self.monitor.step(self.state or _missing(), t.event, t.actions, t.before, t.after)
            log_actions(self.out, t.actions)
            records.extend(a for a in t.actions if isinstance(a, RecordEvent))
            if t.after.terminal:
                self.ended = True
        state = self.state
        assert state is not None
        self.monitor.check_counts(state)
        if self.full or state.step_index != self.step_index or self.ended:
            self.step_index = state.step_index
            self.monitor.check_full(state)
        self._check_audit(records)

    def _check_audit(self, records: list[RecordEvent]) -> None:
        """I4: the engine's records of this batch are in the store's audit log, in order."""
        with self.store.tx() as tx:
            stored = tx.list_events(rollout_id=self.rid, after=self.events_seen, limit=1_000_000)
        if stored:
            self.events_seen = stored[-1].id
        logged = [(e.kind, e.host, e.message, e.actor) for e in stored if not e.kind.startswith("gate.")]
        decided = [(r.kind, r.host, r.message, r.actor) for r in records]
        if logged != decided:
            missing = [d for d in decided if d not in logged][:3]
            raise InvariantBroken(
                f"I4: the audit log does not hold the engine's decisions (missing: {missing})"
            )

    # ------------------------------------------------------------- restarts

    def crash(self, mid_batch: bool) -> None:
        if mid_batch:
            self.runner.crash_on_execute = True
        else:
            self._die()

    def _die(self) -> None:
        self.up = False
        self.inbox = []
        self.out.server_died()

    def boot(self) -> None:
        self.up = True
        old, self.runner = self.runner, self._new_runner()
        self._check_deposed(old)
        self.runner._started_at = self.clock.now()
        self.runner._recover()
        if self.rid is not None and self.rid in self.runner.states:
            self.state = self.runner.states[self.rid]
            self.monitor.check_full(self.state)
        self._schedule()

    def serving(self, hosts: list[str]) -> dict[str, bool]:
        with self.store.tx() as tx:
            return {name: _should_serve(self.sc.spec, tx.get_host(name), None) for name in hosts}

    def final(self) -> tuple[RolloutState | None, dict[str, int | None] | None]:
        if self.rid is None:
            return None, None
        with self.store.tx() as tx:
            _, raw = tx.get_rollout(self.rid)
            desired = {h.name: h.desired_release for h in tx.list_hosts("web")}
        return RolloutState.from_dict(raw), desired

    def close(self) -> None:
        self.store.close()
        self.loop.close()
        self._tmp.cleanup()


def _missing() -> RolloutState:
    raise InvariantBroken("the runner stepped a rollout the simulation never saw start")
