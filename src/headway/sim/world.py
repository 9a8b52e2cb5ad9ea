"""The simulated world around the control plane: agents, connections, balancer, gates, people.

Everything happens on one agenda of timed events; time jumps from one event
to the next (nothing sleeps), and every random choice comes from the run's
one `random.Random`, so a seed replays exactly. Each line of the event log
(messages reaching the server, the engine's decisions, faults) feeds a
SHA-256; two runs of a seed print the same hash.

The world models, per host, an agent process and its connection to the
server, and the app it runs:

- a desired state starts a switch that takes the host's restart time (ten
  times longer on slow hosts); the host then reports healthy, or failed on a
  bad host; a newer desired state cancels a switch under way;
- connections are FIFO: a late message delays those behind it; a lost report
  is repeated by the agent's next heartbeat; a duplicate arrives twice; a
  broken connection is noticed by both ends, the agent says hello again;
- agents restart (their own state kept or lost: a lost one reports
  generation 0 and what is running, and never switches twice), hosts fail
  their health checks on their own for a while, the server crashes (between
  batches, or after a commit and before acting) and recovers from its store;
- the balancer drains (sometimes slowly, up to the drain timeout) and admits,
  and fails calls; gates answer pass, fail, inconclusive or error after the
  verification's duration, sometimes late or twice;
- an operator resumes or promotes a paused rollout after a while, and may
  pause, abort or roll back on their own.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from headway.domain.models import Health, RolloutStatus
from headway.engine.events import Command, Verdict
from headway.sim.monitor import InvariantBroken, WorldHost
from headway.sim.scenario import Scenario
from headway.sim.wire import (
    GateAnswer,
    Gone,
    Hello,
    Inbound,
    Obs,
    Operator,
    Plane,
    Report,
    TrafficAnswer,
)

START = 1_000_000.0
HORIZON = 12 * 3600.0  # simulated seconds a rollout may take before liveness fails
SILENCE = 3600.0  # simulated seconds without a single engine decision: the rollout is stuck
SETTLE = 1800.0  # after the end: time for the world to come to rest
FROM_RELEASE, TO_RELEASE = 1, 2

_Handler = Callable[[Any], None]


class SimulationFailure(AssertionError):
    """An invariant broke (or the code under test raised); the message says how to replay it.

    ``diagnosis`` names a known engine problem the stuck rollout matches ("" if none).
    """

    def __init__(self, message: str, diagnosis: str = "") -> None:
        super().__init__(message)
        self.diagnosis = diagnosis


@dataclass
class SimResult:
    seed: int
    mode: str
    profile: str
    hosts: int
    status: str
    reason: str
    sim_seconds: float
    wall_seconds: float
    events: int
    log_lines: int
    log_hash: str
    stats: dict[str, int] = field(default_factory=dict)


class _Agent:
    __slots__ = (
        "alive",
        "bad",
        "bad_revert",
        "conv_gen",
        "converging",
        "detail",
        "epoch",
        "flapping",
        "generation",
        "hb",
        "health",
        "linked",
        "name",
        "release",
        "seen_gen",
        "session_gen",
        "slow",
        "switches",
        "token",
        "up_free",
        "want",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.release: int | None = FROM_RELEASE
        self.generation = 1
        self.health = Health.HEALTHY
        self.detail = ""
        self.alive = True
        self.linked = True
        self.epoch = 1
        self.seen_gen = 1
        self.want: int | None = FROM_RELEASE
        self.converging: int | None = None
        self.conv_gen = 0
        self.token = 0
        self.bad = False
        self.bad_revert = False
        self.slow = False
        self.flapping = False
        self.hb = False
        self.up_free = 0.0  # FIFO: when the connection to the server is free again
        self.session_gen = -1  # newest generation pushed on this connection
        self.switches: list[int | None] = []

    def obs(self) -> Obs:
        return (self.release, self.generation, self.health, self.detail)


class _Op:
    __slots__ = ("action_id", "host", "incarnation", "kind", "ok", "rollout_id")

    def __init__(self, rollout_id: str, action_id: str, kind: str, host: str, incarnation: int) -> None:
        self.rollout_id = rollout_id
        self.action_id = action_id
        self.kind = kind
        self.host = host
        self.incarnation = incarnation
        self.ok = True


class World:
    def __init__(self, scenario: Scenario, rng: Random, tail: int = 60) -> None:
        self.sc = scenario
        self.f = scenario.faults
        self.rng = rng
        self.start = START
        self.now = START
        self.agenda: list[tuple[float, int, _Handler, Any]] = []
        self.seq = 0
        self.events = 0
        self.digest = hashlib.sha256()
        self.tail: deque[str] = deque(maxlen=tail)
        self.lines = 0
        width = len(str(max(scenario.hosts - 1, 0)))
        self.agents = {f"h{i:0{width}d}": _Agent(f"h{i:0{width}d}") for i in range(scenario.hosts)}
        self.names = list(self.agents)
        self.session: dict[str, int] = {}  # host -> epoch of the connection the server attached
        self.server_up = True
        self.incarnation = 0
        self.admitted = dict.fromkeys(self.agents, True)
        self.out_of_lb: dict[str, None] = {}  # hosts the balancer does not send traffic to, in order
        self.last_lb: dict[str, tuple[str, bool]] = {}
        self.ops: dict[tuple[int, str], _Op] = {}
        self.draining: dict[str, list[tuple[int, str]]] = {}  # host -> drains under way
        self.active = False
        self.ended_at: float | None = None
        self.wake_pending: float | None = None
        self.patience: float | None = None
        self.crashes_left = self.f.server_restarts
        self.stats = {
            "server_restarts": 0,
            "agent_restarts": 0,
            "flaps": 0,
            "lost": 0,
            "duplicated": 0,
            "late": 0,
            "link_breaks": 0,
            "balancer_failures": 0,
            "operator_commands": 0,
        }
        self.plane: Plane | None = None
        for agent in self.agents.values():
            agent.bad = self.rng.random() < self.f.bad_hosts
            agent.bad_revert = self.rng.random() < self.f.bad_revert
            agent.slow = self.rng.random() < self.f.slow_hosts

    # --------------------------------------------------------------- plumbing

    def at(self, when: float, handler: _Handler, arg: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.agenda, (when, self.seq, handler, arg))

    def log(self, text: str) -> None:
        line = f"{self.now - START:.6f} {text}"
        self.digest.update(line.encode())
        self.digest.update(b"\n")
        self.tail.append(line)
        self.lines += 1

    def wake_at(self, when: float) -> None:
        if self.wake_pending is not None and self.wake_pending <= when:
            return
        self.wake_pending = when
        self.at(max(when, self.now), self._wake, when)

    def _wake(self, when: float) -> None:
        if self.wake_pending != when:
            return  # superseded by an earlier request
        self.wake_pending = None
        if self.server_up and self.plane is not None:
            self.plane.wake()

    def _chance(self, p: float) -> bool:
        return p > 0.0 and self.rng.random() < p

    # ------------------------------------------------------------------- run

    def run(self, plane: Plane) -> SimResult:
        self.plane = plane
        started = time.perf_counter()
        sc = self.sc
        self.log(f"scenario {sc.describe()}")
        for agent in self.agents.values():
            if plane.says_hello:
                agent.linked = False
                self._connect(agent)
            else:
                self.session[agent.name] = agent.epoch
        self.at(START + 1.0, self._begin)
        while self.agenda:
            when, _, handler, arg = heapq.heappop(self.agenda)
            self.now = when
            self.events += 1
            handler(arg)
            if self.active and plane.ended:
                self.active = False
                self.ended_at = self.now
                self.log("rollout ended; the world settles")
                if self.sc.traffic:
                    self.at(self.now + 1.0, self._reconcile)
            if self.ended_at is None and when > START + HORIZON:
                raise InvariantBroken(f"liveness: the rollout has not ended after {HORIZON:g}s simulated")
            if self.ended_at is not None and when > self.ended_at + SETTLE:
                break
        state, desired = plane.final()
        if state is None or self.ended_at is None:
            raise InvariantBroken("liveness: the rollout never ended")
        for agent in self.agents.values():
            if agent.converging is not None:
                raise InvariantBroken(f"liveness: {agent.name} still switching {SETTLE:g}s after the end")
        world = [
            WorldHost(
                name=a.name,
                running=a.release,
                admitted=self.admitted[a.name],
                last_admit_failed=self.last_lb.get(a.name) == ("admit", False),
                switches=tuple(a.switches),
            )
            for a in self.agents.values()
        ]
        end_stats = plane.monitor.check_end(state, world, desired)
        self.stats |= end_stats
        self.log(f"end {state.phase.value}: {state.reason}")
        return SimResult(
            seed=sc.seed,
            mode=sc.mode,
            profile=sc.profile,
            hosts=sc.hosts,
            status=state.phase.value,
            reason=state.reason,
            sim_seconds=round((self.ended_at or self.now) - START - 1.0, 3),
            wall_seconds=time.perf_counter() - started,
            events=self.events,
            log_lines=self.lines,
            log_hash=self.digest.hexdigest(),
            stats=self.stats | {"peak_out": plane.monitor.peak_out, "engine_steps": plane.monitor.steps},
        )

    def _begin(self, _: Any) -> None:
        assert self.plane is not None
        self.active = True
        self.log("operator starts the rollout")
        self.plane.begin()
        f = self.f
        hosts = self.sc.hosts
        if f.flaps:
            self._next(self._flap, f.flaps * hosts / 3600.0)
        if f.agent_restarts:
            self._next(self._agent_crash, f.agent_restarts * hosts / 3600.0)
        if self.crashes_left:
            self.at(self.now + self.rng.uniform(*f.server_restart_gap), self._server_crash)
        for delay, command in f.operator:
            self.at(self.now + delay, self._operator_noise, command)
        self.at(self.now + 20.0, self._operator_watch)
        self.at(self.now + SILENCE, self._watchdog, -1)

    def _watchdog(self, records: int) -> None:
        """Liveness: every progress deadline, verification and operator wait is far shorter."""
        if not self.active or self.plane is None:
            return
        now_records = self.plane.monitor.records
        if now_records == records:
            state = self.plane.rollout
            raise InvariantBroken(
                f"liveness: no engine decision for {SILENCE:g}s simulated; the rollout is "
                + (
                    f"{state.phase.value} ({state.reason or state.blocked or 'no reason given'})"
                    if state
                    else "gone"
                )
            )
        self.at(self.now + SILENCE, self._watchdog, now_records)

    def _next(self, handler: _Handler, rate: float) -> None:
        self.at(self.now + self.rng.expovariate(rate), handler, rate)

    def _random_agent(self) -> _Agent:
        return self.agents[self.names[self.rng.randrange(len(self.names))]]

    # ------------------------------------------------------ agent -> server

    def _send(self, agent: _Agent, message: Inbound, faults: bool = True) -> None:
        """Put ``message`` on the agent's connection (FIFO), with the message faults."""
        if not agent.linked or not agent.alive:
            return
        delay = self.rng.uniform(0.001, 0.02)
        copies = 1
        if faults:
            if self._chance(self.f.loss):
                self.stats["lost"] += 1
                self._heartbeat_later(agent)
                return
            if self._chance(self.f.late):
                self.stats["late"] += 1
                delay += self.rng.uniform(0.5, self.f.late_max)
            if self._chance(self.f.duplicate):
                self.stats["duplicated"] += 1
                copies = 2
        arrive = max(self.now + delay, agent.up_free)
        agent.up_free = arrive
        for _ in range(copies):
            self.at(arrive, self._arrive, (agent.epoch, self.incarnation, message))

    def _heartbeat_later(self, agent: _Agent) -> None:
        if not agent.hb:
            agent.hb = True
            self.at(self.now + self.sc.heartbeat, self._heartbeat, agent)

    def _heartbeat(self, agent: _Agent) -> None:
        agent.hb = False
        self._send(agent, Report(agent.name, agent.obs()))

    def _arrive(self, arg: tuple[int, int, Inbound]) -> None:
        epoch, incarnation, message = arg
        assert self.plane is not None
        agent = self.agents[message.host] if isinstance(message, Hello | Report) else None
        if not self.server_up or incarnation != self.incarnation:
            return  # sent to a server that has died since
        if agent is not None and agent.epoch != epoch:
            return  # the connection it travelled on broke
        if isinstance(message, Hello):
            self.session[message.host] = epoch  # the channel attaches its session
            assert agent is not None
            agent.session_gen = -1
            self.log(f"hello {message.host} {_obs(message.obs)}")
        elif isinstance(message, Report):
            self.log(f"report {message.host} {_obs(message.obs)}")
        self.plane.deliver(message)

    def _gone(self, arg: tuple[str, int, int]) -> None:
        host, epoch, incarnation = arg
        if not self.server_up or incarnation != self.incarnation or self.session.get(host) != epoch:
            return  # a newer session replaced it, or the server died
        del self.session[host]
        self.log(f"gone {host}")
        assert self.plane is not None
        self.plane.deliver(Gone(host))

    # ------------------------------------------------------ server -> agent

    def push(self, host: str, generation: int, release: int | None) -> None:
        agent = self.agents[host]
        if self.session.get(host) != agent.epoch or not agent.linked:
            return  # no session: the agent gets it with its next hello
        if generation < agent.session_gen:
            return  # the session never sends an older state than one queued
        agent.session_gen = generation
        if self._chance(self.f.link_break):
            self._break_link(agent)
            return
        delay = self.rng.uniform(0.001, 0.02)
        self.at(self.now + delay, self._desired, (host, agent.epoch, generation, release))

    def _desired(self, arg: tuple[str, int, int, int | None]) -> None:
        host, epoch, generation, release = arg
        agent = self.agents[host]
        if not agent.alive or agent.epoch != epoch:
            return
        if generation < agent.seen_gen or (generation == agent.seen_gen and release == agent.want):
            return  # older than, or the same as, what it has
        agent.seen_gen = generation
        agent.want = release
        if agent.converging is not None:
            if agent.converging == release:
                agent.conv_gen = generation
                return
            agent.token += 1  # a newer target cancels the switch under way
            agent.converging = None
        if release == agent.release:
            agent.generation = generation
            self._settle(agent)
            self._send(agent, Report(host, agent.obs()))
            return
        agent.health = Health.STARTING
        agent.detail = f"switching to v{release}"
        self._send(agent, Report(host, agent.obs()))
        agent.converging = release
        agent.conv_gen = generation
        agent.token += 1
        lo, hi = self.sc.restart_time
        took = self.rng.uniform(lo, hi) * (10.0 if agent.slow else 1.0)
        self.at(self.now + took, self._switched, (agent, agent.token))

    def _switched(self, arg: tuple[_Agent, int]) -> None:
        agent, token = arg
        if agent.token != token:
            return
        agent.release = agent.converging
        agent.switches.append(agent.release)
        agent.generation = agent.conv_gen
        agent.converging = None
        self._settle(agent)
        if agent.alive:
            self._send(agent, Report(agent.name, agent.obs()))

    def _settle(self, agent: _Agent) -> None:
        if agent.release == TO_RELEASE and agent.bad:
            agent.health, agent.detail = Health.FAILED, "the app exits at start"
        elif agent.release == FROM_RELEASE and agent.bad_revert and TO_RELEASE in agent.switches:
            agent.health, agent.detail = Health.FAILED, "the previous release no longer starts"
        elif agent.flapping:
            agent.health, agent.detail = Health.UNHEALTHY, "health check failing"
        else:
            agent.health, agent.detail = Health.HEALTHY, ""

    # ------------------------------------------------------------ connections

    def _break_link(self, agent: _Agent) -> None:
        self.stats["link_breaks"] += 1
        self.log(f"fault: connection of {agent.name} breaks")
        self._drop_link(agent)
        self.at(self.now + self.rng.uniform(0.2, 5.0), self._connect, agent)

    def _drop_link(self, agent: _Agent) -> None:
        if agent.linked:
            self.at(
                self.now + self.rng.uniform(0.01, 3.0),
                self._gone,
                (agent.name, agent.epoch, self.incarnation),
            )
        agent.linked = False
        agent.epoch += 1

    def _connect(self, agent: _Agent) -> None:
        if not agent.alive or agent.linked:
            return
        if not self.server_up:
            self.at(self.now + self.rng.uniform(0.5, 3.0), self._connect, agent)
            return
        agent.epoch += 1
        agent.linked = True
        agent.up_free = self.now
        self._send(agent, Hello(agent.name, agent.obs()), faults=False)

    # ---------------------------------------------------------------- faults

    def _flap(self, rate: float) -> None:
        if not self.active:
            return
        self._next(self._flap, rate)
        agent = self._random_agent()
        if not agent.alive or agent.flapping or agent.health is not Health.HEALTHY:
            return
        self.stats["flaps"] += 1
        agent.flapping = True
        self._settle(agent)
        long = self._chance(self.f.long_flap)
        self.log(f"fault: {agent.name} fails its health checks{' for long' if long else ''}")
        self._send(agent, Report(agent.name, agent.obs()))
        self.at(
            self.now + (self.rng.uniform(200, 600) if long else self.rng.uniform(3, 40)), self._mend, agent
        )

    def _mend(self, agent: _Agent) -> None:
        agent.flapping = False
        if agent.health is Health.UNHEALTHY:
            self._settle(agent)
            self._send(agent, Report(agent.name, agent.obs()))

    def _agent_crash(self, rate: float) -> None:
        if not self.active:
            return
        self._next(self._agent_crash, rate)
        agent = self._random_agent()
        if not agent.alive:
            return
        self.stats["agent_restarts"] += 1
        lost = self._chance(self.f.state_lost)
        self.log(f"fault: agent {agent.name} restarts{', its state lost' if lost else ''}")
        agent.alive = False
        self._drop_link(agent)
        if lost:
            if agent.converging is not None:  # the switch had not happened: what runs stays
                agent.token += 1
                agent.converging = None
            agent.generation = 0
            agent.seen_gen = 0
            agent.want = None
            if agent.health is Health.STARTING:
                self._settle(agent)
        self.at(self.now + self.rng.uniform(1.0, 30.0), self._agent_boot, agent)

    def _agent_boot(self, agent: _Agent) -> None:
        agent.alive = True
        self._connect(agent)

    def _server_crash(self, _: Any) -> None:
        if not self.active or not self.server_up or self.crashes_left <= 0:
            return
        assert self.plane is not None
        self.crashes_left -= 1
        mid = self._chance(self.f.crash_mid_batch)
        self.log(f"fault: the server crashes{' mid-batch' if mid else ''}")
        self.plane.crash(mid)
        if self.crashes_left > 0:
            self.at(self.now + self.rng.uniform(*self.f.server_restart_gap), self._server_crash)

    def server_died(self) -> None:
        if not self.server_up:
            return
        self.stats["server_restarts"] += 1
        self.log("the server is down")
        self.server_up = False
        self.session.clear()
        self.wake_pending = None
        for op in self.ops.values():  # its admits die with it, maybe after acting
            if (
                op.incarnation == self.incarnation
                and op.ok
                and op.kind == "admit"
                and self.rng.random() < 0.5
            ):
                self._set_lb(op.host, True)
        for agent in self.agents.values():
            if agent.linked:
                agent.linked = False
                agent.epoch += 1
                self.at(self.now + self.rng.uniform(0.2, 3.0), self._connect, agent)
        self.at(self.now + self.rng.uniform(1.0, 8.0), self._server_boot)

    def _server_boot(self, _: Any) -> None:
        assert self.plane is not None
        self.incarnation += 1
        self.server_up = True
        self.log("the server starts and recovers")
        self.plane.boot()

    # -------------------------------------------------------------- balancer

    def balancer_start(self, rollout_id: str, action_id: str, kind: str, host: str) -> None:
        """Like `headway.traffic.drain`: a drain sets DRAIN at once, then waits for the requests
        in flight (slowly, up to the drain timeout, sometimes), and drains the host again if
        something readmits it meanwhile; an admit sets READY when it ends."""
        key = (self.incarnation, action_id)
        if key in self.ops:
            return  # the driver runs one task per action id
        op = _Op(rollout_id, action_id, kind, host, self.incarnation)
        self.ops[key] = op
        rng = self.rng
        if self._chance(self.f.lb_fail):
            op.ok = False
            took = rng.uniform(1.0, 5.0)
        elif kind == "drain":
            self._set_lb(host, False)
            self.draining.setdefault(host, []).append(key)
            took = rng.uniform(5.0, 30.0) if self._chance(self.f.slow_drain) else rng.uniform(0.05, 1.0)
        else:
            took = rng.uniform(0.05, 0.5)
        self.at(self.now + took, self._lb_done, key)

    def _lb_done(self, key: tuple[int, str]) -> None:
        op = self.ops.pop(key)
        if op.kind == "drain" and op.ok:
            keys = self.draining[op.host]
            keys.remove(key)
            if not keys:
                del self.draining[op.host]
        if op.incarnation != self.incarnation:
            return  # its server died; the effect, if any, happened then
        self.last_lb[op.host] = (op.kind, op.ok)
        if op.ok:
            detail = "drained" if op.kind == "drain" else "admitted"
            if op.kind == "admit":
                self._admit(op.host)
        else:
            self.stats["balancer_failures"] += 1
            detail = "balancer API error after retries"
        self.log(f"balancer {op.kind} {op.host} {'ok' if op.ok else 'failed'} ({_seq(op.action_id)})")
        self._answer(TrafficAnswer(op.rollout_id, op.action_id, op.host, op.kind, op.ok, detail))

    def _set_lb(self, host: str, admitted: bool) -> None:
        self.admitted[host] = admitted
        if admitted:
            self.out_of_lb.pop(host, None)
        else:
            self.out_of_lb[host] = None

    def _admit(self, host: str) -> None:
        self._set_lb(host, True)
        for key in self.draining.get(host, ()):
            self.at(self.now + 0.05, self._redrain, key)

    def _redrain(self, key: tuple[int, str]) -> None:
        op = self.ops.get(key)
        if op is not None and op.incarnation == self.incarnation and self.admitted[op.host]:
            self._set_lb(op.host, False)
            self.log(
                f"balancer: {op.host} readmitted while its drain ({_seq(op.action_id)}) runs; drained again"
            )

    def _reconcile(self, _: Any) -> None:
        """The server's traffic loop once no rollout handles the hosts: admit idle healthy ones."""
        assert self.plane is not None
        if self.server_up and self.out_of_lb:
            for host, serve in self.plane.serving(list(self.out_of_lb)).items():
                if serve and not self.admitted[host]:
                    self.log(f"reconciler admits {host}")
                    self.last_lb[host] = ("reconcile", True)
                    self._admit(host)
        # until every host is back in load balancing (or it is clear some never will be)
        if (
            (self.ops or self.out_of_lb)
            and self.ended_at is not None
            and self.now < self.ended_at + SETTLE / 2
        ):
            self.at(self.now + 2.0, self._reconcile)

    def _answer(self, message: TrafficAnswer | GateAnswer) -> None:
        """An answer from a task inside the server process: late, or twice, sometimes."""
        delay = self.rng.uniform(5.0, 60.0) if self._chance(self.f.late_answer) else 0.0
        self.at(self.now + delay, self._answer_arrives, (self.incarnation, message))
        if self._chance(self.f.repeated_answer):
            self.at(
                self.now + delay + self.rng.uniform(0.1, 30.0),
                self._answer_arrives,
                (self.incarnation, message),
            )

    def _answer_arrives(self, arg: tuple[int, TrafficAnswer | GateAnswer]) -> None:
        incarnation, message = arg
        if not self.server_up or incarnation != self.incarnation:
            return
        assert self.plane is not None
        self.plane.deliver(message)

    # ----------------------------------------------------------------- gates

    def verify_start(self, rollout_id: str, action_id: str, canary: int, baseline: int) -> None:
        key = (self.incarnation, "gate:" + action_id)
        if key in self.ops:
            return
        self.ops[key] = _Op(rollout_id, action_id, "verify", "", self.incarnation)
        verification = self.sc.spec.verification
        duration = verification.duration if verification else 0.0
        self.log(f"gates start ({_seq(action_id)}): {canary} canary, {baseline} baseline")
        self.at(self.now + duration, self._gates_done, key)

    def _gates_done(self, key: tuple[int, str]) -> None:
        op = self.ops.pop(key)
        if op.incarnation != self.incarnation:
            return
        verdict = self.rng.choices(
            [Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.FAIL, Verdict.INCONCLUSIVE], self.f.verdicts
        )[0]
        errored = verdict is Verdict.INCONCLUSIVE and self.rng.random() < 0.3
        summary = {
            Verdict.PASS: "errors: canary within 1 point of the baseline",
            Verdict.FAIL: "errors: canary 4.2 points above the baseline",
            Verdict.INCONCLUSIVE: "errors: metrics source failed" if errored else "errors: not enough data",
        }[verdict]
        self.log(f"gates {verdict.value}{' (errored)' if errored else ''} ({_seq(op.action_id)})")
        self._answer(GateAnswer(op.rollout_id, op.action_id, verdict, summary, errored))

    # -------------------------------------------------------------- operator

    def _operator_noise(self, command: str) -> None:
        if self.active and self.server_up and self.plane is not None:
            self.stats["operator_commands"] += 1
            self.log(f"operator: {command}")
            self.plane.deliver(Operator(Command(command), "sim-operator"))

    def _operator_watch(self, _: Any) -> None:
        """A person who resumes a paused rollout, or promotes a waiting one, after a while."""
        if not self.active:
            return
        self.at(self.now + 20.0, self._operator_watch)
        state = self.plane.rollout if self.server_up and self.plane is not None else None
        waiting = state is not None and (state.phase is RolloutStatus.PAUSED or state.waiting_promote)
        if not waiting:
            self.patience = None
            return
        if self.patience is None:
            self.patience = self.now + self.rng.uniform(10.0, 120.0)
            return
        if self.now < self.patience:
            return
        self.patience = None
        assert state is not None and self.plane is not None
        promote = state.waiting_promote or self.rng.random() < 0.2
        command = Command.PROMOTE if promote else Command.RESUME
        self.stats["operator_commands"] += 1
        self.log(f"operator on call: {command.value} ({state.reason or 'waiting'})")
        self.plane.deliver(Operator(command, "on-call"))


def _obs(obs: Obs) -> str:
    release, generation, health, _ = obs
    return f"v{release} g{generation} {health.value}"


def _seq(action_id: str) -> str:
    """An action id without its rollout id (the runner's ids carry a random part)."""
    return action_id.rsplit(":", 1)[-1]
