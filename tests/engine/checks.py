"""Invariant checks shared by the scenario runner and the property tests.

Everything here is recomputed from scratch, independently of the engine's own
bookkeeping, so a counter that drifts or a decision taken on a stale count
shows up at the step that caused it.

`Ledger.step` wraps `machine.step` and checks, for that one step:

- the phase it leads to is one the transition table lists for the pair;
- I1: no SetDesired takes an *available* host out of service while at least
  ``max_unavailable`` hosts are already out (counted at the moment of the
  action, see `_check_i1`);
- I3: per host, generations strictly increase, no (host, generation) pair or
  action id is issued twice, no host is marked done (or failed) twice;
- I4: every SetDesired and every phase change comes with its audit record;
- reliability 18: a host the rollout changed is done only after it was seen
  connected and healthy on what it was told, without a break, for
  ``min_healthy_time`` (`_healthy_since` follows the reports the engine is fed).

With a load balancer in front (``traffic``), the ledger also keeps a model of
the balancer, moved only by the answers the engine is fed (`TrafficDone`):

- a host leaves service by its ``Drain`` (not its SetDesired): I1 and the
  capacity guard are checked at the moment of each Drain of a host in service;
- reliability 20: a SetDesired for a host the rollout drains is issued only
  once the balancer confirmed its drain, and while no admit of it is under way
  (the app is never stopped in rotation); an admit of a failed host that has
  not answered within a progress deadline of the failure counts as lost;
- an ``Admit`` of a host (other than the final ones of an ended rollout) comes
  only after the host was seen healthy on what it was last told;
- blue-green: during a shift (forward or back), a pool is never drained while its
  replacement's admit is outstanding: at the moment of each ``Drain``, every host of
  the other pool has had an admit answered ok, no drain answered ok since, and no
  call of it is under way (`_check_replacement_in`);
- I5 when the rollout ends: every host the answers left drained, or with a
  drain still under way, has an Admit under way issued after it (blue-green's
  drained pool excepted: there the last shift decides, and a rollback shifts
  back without touching a host).

`check_state` checks the state's counters against a recount, and `check_end`
checks I2 and I5 once the rollout has ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from headway.domain.models import Health, RolloutStatus
from headway.engine import machine
from headway.engine.actions import Action, Admit, Drain, RecordEvent, SetDesired, SetLivePool
from headway.engine.events import (
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    TrafficDone,
    event_kind,
)
from headway.engine.plan import Batch, Shift
from headway.engine.state import HostPhase, HostTrack, RolloutState
from headway.engine.table import TABLE

P = RolloutStatus
H = HostPhase

REVERT_PHASES = frozenset({H.REVERT_DRAINING, H.REVERTING, H.REVERT_ADMITTING})
OUT_OF_SERVICE_PHASES = (
    frozenset({H.DRAINING, H.UPDATING, H.ADMITTING, H.VERIFYING, H.FAILED, H.REVERT_FAILED})
    | REVERT_PHASES
)

# the host phase a record tells us a host has just entered
_PHASE_OF_RECORD = {
    "host.healthy": H.VERIFYING,
    "host.done": H.DONE,
    "host.failed": H.FAILED,
    "host.flapped": H.UPDATING,
    "host.reverted": H.REVERTED,
    "host.revert_failed": H.REVERT_FAILED,
    "host.updating": H.UPDATING,
    "host.reverting": H.REVERTING,
}
_TERMINAL_RECORDS = frozenset(
    {"rollout.succeeded", "rollout.failed", "rollout.rolled_back", "rollout.aborted"}
)

# the audit record a phase change must come with
_RECORD_OF_PHASE = {
    P.PAUSED: ("rollout.paused",),
    P.RUNNING: ("rollout.resumed", "rollout.promoted"),
    P.ROLLING_BACK: ("rollout.rolling_back",),
    P.SUCCEEDED: ("rollout.succeeded",),
    P.FAILED: ("rollout.failed",),
    P.ROLLED_BACK: ("rollout.rolled_back",),
    P.ABORTED: ("rollout.aborted",),
}


def available(phase: HostPhase, connected: bool, health: Health) -> bool:
    """In service: not being changed or verified, not failed, connected and healthy."""
    return phase not in OUT_OF_SERVICE_PHASES and connected and health is Health.HEALTHY


def host_available(host: HostTrack) -> bool:
    return available(host.phase, host.connected, host.health)


def check_state(state: RolloutState) -> None:
    """The engine's incremental counters agree with a count from scratch."""
    recount = 0
    reverting = 0
    for host in state.hosts.values():
        up = host_available(host)
        assert host.available == up, f"{host.name}: available flag {host.available}, truly {up}"
        recount += not up
        reverting += host.phase in REVERT_PHASES
    assert state.unavailable == recount, (
        f"state.unavailable is {state.unavailable}, a recount gives {recount}"
    )
    if not state.phase.terminal:
        assert state.revert_open == reverting, (
            f"revert_open is {state.revert_open}, {reverting} host(s) are reverting"
        )
    going_forward = state.phase is P.RUNNING or (state.phase is P.PAUSED and state.final_status is None)
    if going_forward and state.step_index < len(state.plan):  # (not kept in a paused rollback)
        current = state.plan[state.step_index]
        if isinstance(current, Batch):
            open_hosts = sum(
                state.hosts[n].phase not in (H.DONE, H.FAILED) for n in current.hosts
            )
            assert state.step_open == open_hosts, (
                f"step_open is {state.step_open}, {open_hosts} host(s) of the batch are open"
            )
    if state.phase.terminal:
        assert machine.next_deadline(state) is None, "an ended rollout asks for a wakeup"
    if state.drains_held:  # a blue-green shift's drains, held until its admits are in
        assert not state.phase.terminal, f"drains held ({state.drains_held}) in an ended rollout"
        if state.phase is P.ROLLING_BACK or state.final_status is not None:
            held = state.shift_back
        else:
            held = state.plan[state.step_index] if state.step_index < len(state.plan) else None
        assert isinstance(held, Shift) and held.drain, f"drains held ({state.drains_held}) outside a shift"
        assert state.shift_open >= state.drains_held + len(held.drain), (
            f"shift_open is {state.shift_open}, but {len(held.drain)} drain(s) are held, waiting "
            f"for {state.drains_held} answer(s)"
        )


class InvariantBroken(AssertionError):
    pass


@dataclass
class Ledger:
    """What the engine has done so far, as seen from outside, for one rollout."""

    max_unavailable: int
    generation: dict[str, int] = field(default_factory=dict)
    desired: dict[str, int | None] = field(default_factory=dict)
    issued: set[tuple[str, int]] = field(default_factory=set)
    issued_to: set[str] = field(default_factory=set)
    action_ids: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    failed_at: dict[str, float] = field(default_factory=dict)
    sent_target: set[str] = field(default_factory=set)  # hosts told to run to_release
    sent_previous: set[str] = field(default_factory=set)  # hosts told to go back
    actions: list[Action] = field(default_factory=list)
    # reliability 18: since when each host has been seen healthy on what it was told
    healthy_since: dict[str, float] = field(default_factory=dict)
    seen_generation: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    # the load balancer, as far as the answers fed to the engine tell
    traffic: bool = False  # a balancer fronts the service
    blue_green: bool = False  # drains and admits are traffic shifts, not host changes
    idle: frozenset[str] = frozenset()  # hosts changed away from traffic (no drain, no budget)
    max_rps: float | None = None
    load: float | None = None
    out_of_rotation: set[str] = field(default_factory=set)  # drains answered ok, not readmitted
    outstanding: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (kind, host)
    weights: dict[str, int | None] = field(default_factory=dict)  # admit id -> weight
    weight: dict[str, int | None] = field(default_factory=dict)  # host -> weight it was admitted at
    answers: dict[str, bool] = field(default_factory=dict)  # id -> ok
    traffic_log: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # host -> (kind, id)
    seen_healthy: set[str] = field(default_factory=set)  # healthy on what it was last told
    live_pool: list[str] = field(default_factory=list)  # SetLivePool actions
    old_pool: frozenset[str] = frozenset()  # blue-green: the pool serving when it started
    in_rotation: set[str] = field(default_factory=set)  # an admit answered ok, no drain since

    @classmethod
    def start(cls, decision: machine.Decision) -> Ledger:
        """Adopt a fresh rollout: the hosts' desired state before it, then its first actions."""
        state = decision.state
        ledger = cls(
            max_unavailable=state.policy.max_unavailable,
            now=state.created_at,
            traffic=state.traffic,
            blue_green=state.shift_back is not None,
            idle=frozenset(
                n for s in state.plan if isinstance(s, Batch) and not s.traffic for n in s.hosts
            ),
            max_rps=state.policy.max_rps_per_host,
            old_pool=frozenset(h for h, _ in state.shift_back.admit) if state.shift_back else frozenset(),
        )
        pre: dict[str, HostPhase] = {}
        for host in state.hosts.values():
            ledger.seen_generation[host.name] = host.observed_generation
            sent = [a for a in decision.actions if isinstance(a, SetDesired) and a.host == host.name]
            ledger.generation[host.name] = host.generation - len(sent)
            ledger.desired[host.name] = None if sent else host.desired_release
            pre[host.name] = H.PENDING
        ledger._account(state, pre, decision.actions, None, None)
        check_state(state)
        return ledger

    def step(self, state: RolloutState, event: EngineEvent, now: float) -> machine.Decision:
        """`machine.step` with every per-step invariant checked."""
        before_phase = state.phase
        pre = {name: host.phase for name, host in state.hosts.items()}
        decision = machine.step(state, event, now)
        self.now = now
        if isinstance(event, HostObserved):
            self._follow_health(event)
        elif isinstance(event, TrafficDone):
            self._follow_balancer(event)
        elif isinstance(event, LoadReport) and not before_phase.terminal:
            self.load = max(0.0, event.rps)
        self._account(state, pre, decision.actions, before_phase, event)
        check_state(state)
        return decision

    def _account(
        self,
        state: RolloutState,
        pre: dict[str, HostPhase],
        actions: list[Action],
        before_phase: RolloutStatus | None,
        event: EngineEvent | None,
    ) -> None:
        if before_phase is not None and event is not None:
            kind = event_kind(event)
            allowed = TABLE[(before_phase, kind)].to
            if state.phase not in allowed:
                raise InvariantBroken(
                    f"({before_phase.value}, {kind}) led to {state.phase.value}, but the "
                    f"table only allows {[p.value for p in allowed]}"
                )
            if isinstance(event, OperatorCommand):
                records = [a for a in actions if isinstance(a, RecordEvent)]
                if not records or any(r.actor != event.actor for r in records):
                    raise InvariantBroken(f"I4: {kind} by {event.actor!r} not in the audit log")
            if state.phase is not before_phase:
                wanted = _RECORD_OF_PHASE[state.phase]
                if not any(isinstance(a, RecordEvent) and a.kind in wanted for a in actions):
                    raise InvariantBroken(
                        f"I4: {before_phase.value} -> {state.phase.value} without a "
                        f"{' or '.join(wanted)} record"
                    )
        self._check_i1(state, pre, actions, before_phase)
        ended = False  # admits after the end record... or in the step that ended it
        ending = state.phase.terminal and (before_phase is None or not before_phase.terminal)
        for i, action in enumerate(actions):
            if isinstance(action, SetDesired):
                self._account_send(state, action, actions[i + 1 : i + 2])
            elif isinstance(action, (Drain, Admit)):
                self._account_traffic(action, final=ending or ended)
            elif isinstance(action, SetLivePool):
                self.live_pool.append(action.pool)
            elif isinstance(action, RecordEvent) and action.kind in _TERMINAL_RECORDS:
                ended = True
            elif isinstance(action, RecordEvent) and action.kind in ("host.done", "host.failed"):
                seen = self.done if action.kind == "host.done" else self.failed
                if action.host in seen:
                    raise InvariantBroken(f"I3: {action.host} reported {action.kind} twice")
                seen.add(action.host)
                if action.kind == "host.failed":
                    self.failed_at[action.host] = self.now
                if action.kind == "host.done" and action.host in self.issued_to:
                    since = self.healthy_since.get(action.host)
                    needed = state.policy.min_healthy_time
                    if since is None or since + needed > self.now:
                        raise InvariantBroken(
                            f"{action.host} done at t={self.now:g}, but seen healthy on what it "
                            f"was told only since {since} (min_healthy_time {needed:g}s)"
                        )
            if not isinstance(action, RecordEvent):
                if action.action_id in self.action_ids:
                    raise InvariantBroken(f"I3: action id {action.action_id} issued twice")
                self.action_ids.add(action.action_id)
        self.actions.extend(actions)

    def _follow_health(self, event: HostObserved) -> None:
        """Mirror of the engine's rule for stale reports, then the healthy streak."""
        name = event.host
        seen = self.seen_generation.get(name)
        if seen is not None and event.connected and event.generation < seen:
            return  # older than a report already seen: the engine ignores it
        self.seen_generation[name] = event.generation
        on_target = (
            event.connected
            and event.health is Health.HEALTHY
            and event.release == self.desired.get(name)
            and event.generation >= self.generation.get(name, 0)
        )
        if not on_target:
            self.healthy_since.pop(name, None)
        else:
            self.healthy_since.setdefault(name, self.now)
            self.seen_healthy.add(name)

    def _follow_balancer(self, event: TrafficDone) -> None:
        """The balancer did (ok) or did not do what the answered action asked."""
        sent = self.outstanding.pop(event.action_id, None)
        if sent is None:
            return  # answered before: an action executed twice changes nothing more
        kind, host = sent
        if host != event.host:
            raise InvariantBroken(f"answer for {event.host} to {kind} {event.action_id} of {host}")
        self.answers[event.action_id] = event.ok
        if event.ok and kind == "drain":
            self.out_of_rotation.add(host)
            self.in_rotation.discard(host)
        elif event.ok:
            self.out_of_rotation.discard(host)
            self.in_rotation.add(host)
            self.weight[host] = self.weights[event.action_id]

    def _account_traffic(self, action: Drain | Admit, *, final: bool) -> None:
        kind = "drain" if isinstance(action, Drain) else "admit"
        if not self.traffic and not self.blue_green:
            raise InvariantBroken(f"{kind} {action.host} for a service with no load balancer")
        if self.blue_green and kind == "drain":
            self._check_replacement_in(action.host)
        self.outstanding[action.action_id] = (kind, action.host)
        if isinstance(action, Admit):
            self.weights[action.action_id] = action.weight
        self.traffic_log.setdefault(action.host, []).append((kind, action.action_id))
        if kind == "admit" and not final and not self.blue_green and action.host not in self.seen_healthy:
            raise InvariantBroken(
                f"{action.host} admitted before it was seen healthy on v{self.desired.get(action.host)}"
            )

    def _check_replacement_in(self, drained: str) -> None:
        """Blue-green: a host of one pool is drained only once the other pool, which takes its
        traffic, is surely in: every host of it admitted (answered ok, not drained since), and
        no call of it under way (an admit still out may land after this drain; a drain still
        out would take it out again)."""
        replacement = self.old_pool if drained in self.idle else self.idle
        busy = {host for _, host in self.outstanding.values()}
        for name in sorted(replacement):
            if name in busy or name not in self.in_rotation:
                calls = [(kind, self.answers.get(aid)) for kind, aid in self.traffic_log.get(name, [])]
                raise InvariantBroken(
                    f"blue-green: {drained} drained while {name}, of the pool replacing it, is not "
                    f"surely in load balancing (its calls, with their answers so far: {calls})"
                )

    def _account_send(self, state: RolloutState, action: SetDesired, after: list[Action]) -> None:
        host = action.host
        last = self.generation.get(host, -1)
        if action.generation <= last:
            raise InvariantBroken(
                f"I3: {host} sent generation {action.generation} after generation {last}"
            )
        if (host, action.generation) in self.issued:
            raise InvariantBroken(f"I3: SetDesired({host}, g{action.generation}) issued twice")
        if not (
            after
            and isinstance(after[0], RecordEvent)
            and after[0].host == host
            and after[0].kind in ("host.updating", "host.reverting")
        ):
            raise InvariantBroken(f"I4: SetDesired for {host} without its audit record")
        if action.release not in (state.to_release, state.from_release):
            raise InvariantBroken(f"I2: {host} told to run v{action.release}")
        if self.drains_hosts and host not in self.idle:
            if host not in self.out_of_rotation:
                raise InvariantBroken(
                    f"reliability 20: {host} told to run v{action.release} before the balancer "
                    "confirmed its drain"
                )
            failed_at = self.failed_at.get(host)
            given_up = failed_at is not None and self.now >= failed_at + state.policy.progress_deadline
            if not given_up and any(sent == ("admit", host) for sent in self.outstanding.values()):
                raise InvariantBroken(
                    f"reliability 20: {host} told to run v{action.release} while an admit of it "
                    "is under way (it may rejoin traffic mid-change)"
                )
        if self.blue_green and host not in self.idle:
            raise InvariantBroken(f"blue-green changed {host}, outside the idle pool")
        self.issued.add((host, action.generation))
        self.issued_to.add(host)
        self.healthy_since.pop(host, None)
        self.seen_healthy.discard(host)
        self.generation[host] = action.generation
        self.desired[host] = action.release
        if action.release == state.to_release:
            self.sent_target.add(host)
        else:
            self.sent_previous.add(host)

    @property
    def drains_hosts(self) -> bool:
        """Hosts leave service by a Drain before they change (not blue-green's shifts)."""
        return self.traffic and not self.blue_green

    def _check_i1(
        self,
        state: RolloutState,
        pre: dict[str, HostPhase],
        actions: list[Action],
        before_phase: RolloutStatus | None,
    ) -> None:
        """I1 (and the capacity guard) at the moment each host is taken out of service.

        A host is taken out by its SetDesired, or with a balancer by its Drain.
        Health and connectivity only change with the event itself, before the
        engine decides anything; a host's phase changes are each announced by a
        record (or its Drain). So walking the actions in order from the pre-step
        phases tells the phase of every host at the moment of each take-out, and
        with it the number of hosts out of service at that moment.
        """
        phase = dict(pre)
        takeouts: list[tuple[str, bool, bool]] = []  # (host, was available, going forward)
        sends: list[str] = []
        forward = before_phase in (None, P.RUNNING, P.PAUSED)
        first = -1
        for i, action in enumerate(actions):
            drain = isinstance(action, Drain) and self.drains_hosts
            if isinstance(action, SetDesired) or drain:
                assert isinstance(action, (SetDesired, Drain))
                name = action.host
                host = state.hosts[name]
                before = phase.get(name, H.PENDING)
                up = available(before, host.connected, host.health) and name not in self.idle
                takeouts.append((name, up, forward))
                phase[name] = H.DRAINING if drain else H.UPDATING
                if isinstance(action, SetDesired):
                    sends.append(name)
                if first < 0:
                    first = i
            elif isinstance(action, RecordEvent) and action.kind == "rollout.rolling_back":
                forward = False
            elif isinstance(action, RecordEvent) and action.kind in _PHASE_OF_RECORD:
                new = _PHASE_OF_RECORD[action.kind]
                # after the first take-out the only other change is a host found already on
                # the target (pending -> done, in service before and after)
                if (
                    first >= 0
                    and action.kind not in ("host.updating", "host.reverting")
                    and not (action.kind == "host.done" and phase.get(action.host) is H.PENDING)
                ):
                    raise InvariantBroken(
                        f"I1 check: {action.kind} for {action.host} after a host was taken out "
                        "in the same step; the availability walk cannot tell the order"
                    )
                phase[action.host] = new
        if len(set(sends)) != len(sends):
            raise InvariantBroken(f"I3: one host told twice in one step: {sends}")
        if not takeouts:
            return
        taken = {name for name, _, _ in takeouts}
        if len(taken) != len(takeouts):
            raise InvariantBroken(f"one host taken out twice in one step: {takeouts}")
        out = sum(
            not host_available(h) for name, h in state.hosts.items() if name not in taken
        ) + sum(not was_up for _, was_up, _ in takeouts)
        total = len(state.hosts)
        for name, was_up, going_forward in takeouts:
            if not was_up:
                continue
            if out >= self.max_unavailable:
                raise InvariantBroken(
                    f"I1: {name} was in service and taken out while {out} host(s) were "
                    f"already out (max_unavailable={self.max_unavailable})"
                )
            if going_forward and self.max_rps is not None and self.load is not None:
                left = total - out - 1
                if left <= 0 or self.load / left > self.max_rps:
                    raise InvariantBroken(
                        f"capacity guard: {name} taken out with {self.load:g} req/s left to "
                        f"{left} host(s), above {self.max_rps:g} each"
                    )
            out += 1

    def check_end(self, state: RolloutState, planned: Iterable[str]) -> None:
        """I2 (and I3's 'none skipped') and I5 once the rollout has ended."""
        assert state.phase.terminal
        for name, release in self.desired.items():
            if release is None and name not in self.issued_to:
                continue  # registered with nothing installed, never told anything: as it was
            if release not in (state.to_release, state.from_release):
                raise InvariantBroken(
                    f"I2: {name} ends desiring v{release}, neither v{state.to_release} "
                    f"nor v{state.from_release}"
                )
        if state.phase is P.SUCCEEDED:
            failed = 0
            for name in planned:
                host = state.hosts[name]
                if host.phase is H.FAILED:
                    failed += 1
                    continue
                if host.phase is not H.DONE or self.desired[name] != state.to_release:
                    raise InvariantBroken(
                        f"I2: succeeded, but {name} is {host.phase.value} desiring "
                        f"v{self.desired[name]}"
                    )
                if host.observed_release != state.to_release:
                    raise InvariantBroken(f"I2: succeeded, but {name} runs v{host.observed_release}")
            if failed > state.policy.failure_budget:
                raise InvariantBroken(f"succeeded with {failed} failed hosts")
        if state.phase in (P.ROLLED_BACK, P.ABORTED) and not self.blue_green:
            for name in self.sent_target:
                host = state.hosts[name]
                if host.phase is not H.REVERTED or self.desired[name] != state.from_release:
                    raise InvariantBroken(
                        f"I2: {state.phase.value}, but touched host {name} is "
                        f"{host.phase.value} desiring v{self.desired[name]}"
                    )
        if self.blue_green:
            self._check_blue_green_end(state)
        elif self.traffic:
            self._check_i5()

    def _check_i5(self) -> None:
        """No host left drained: each host the answers left out of load balancing, or with a
        drain still under way, has an admit under way, issued after its last such drain."""
        for name, log in self.traffic_log.items():
            under_way = [(i, kind) for i, (kind, aid) in enumerate(log) if aid in self.outstanding]
            last_drain = max((i for i, kind in under_way if kind == "drain"), default=-1)
            last_admit = max((i for i, kind in under_way if kind == "admit"), default=-1)
            if (name in self.out_of_rotation or last_drain >= 0) and last_admit <= last_drain:
                raise InvariantBroken(
                    f"I5: the rollout ended with {name} left drained (traffic actions: "
                    f"{[(kind, self.answers.get(aid)) for kind, aid in log]}, answered in order: "
                    f"{'out' if name in self.out_of_rotation else 'in'})"
                )

    def _check_blue_green_end(self, state: RolloutState) -> None:
        """Succeeded: the new pool serves, at full weight, the old one is drained, and the
        new pool is the live pool. Rolled back: traffic is back on the old pool at the
        shift back's weight and the new pool is drained, with nothing left under way at
        the balancer that could undo it; no host was changed back."""
        if self.sent_previous:
            raise InvariantBroken(f"blue-green reverted hosts {sorted(self.sent_previous)}")
        back = state.shift_back
        assert back is not None
        if state.phase is P.SUCCEEDED:
            if self.live_pool != [state.live_pool]:
                raise InvariantBroken(f"succeeded with SetLivePool {self.live_pool}")
            last = state.plan[-1] if isinstance(state.plan[-1], Shift) else state.plan[-2]
            assert isinstance(last, Shift)
            serving, drained = dict(last.admit), last.drain
        elif state.phase in (P.ROLLED_BACK, P.ABORTED):
            if self.live_pool:
                raise InvariantBroken(f"{state.phase.value} but SetLivePool {self.live_pool}")
            serving, drained = dict(back.admit), back.drain
        else:
            return
        for name in [*serving, *drained]:
            if any(host == name for _, host in self.outstanding.values()):
                raise InvariantBroken(f"blue-green {state.phase.value} with a call for {name} under way")
        for name, weight in serving.items():
            if name in self.out_of_rotation or self.weight.get(name) != weight:
                raise InvariantBroken(
                    f"blue-green {state.phase.value}: {name} is not in load balancing at weight "
                    f"{weight} (drained: {name in self.out_of_rotation}, weight {self.weight.get(name)})"
                )
        for name in drained:
            if name not in self.out_of_rotation:
                raise InvariantBroken(f"blue-green {state.phase.value}: {name} still in load balancing")
