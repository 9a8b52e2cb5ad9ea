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

`check_state` checks the state's counters against a recount, and `check_end`
checks I2 once the rollout has ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from headway.domain.models import Health, RolloutStatus
from headway.engine import machine
from headway.engine.actions import Action, RecordEvent, SetDesired
from headway.engine.events import EngineEvent, HostObserved, OperatorCommand, event_kind
from headway.engine.plan import Batch
from headway.engine.state import HostPhase, HostTrack, RolloutState
from headway.engine.table import TABLE

P = RolloutStatus
H = HostPhase

OUT_OF_SERVICE_PHASES = frozenset({H.UPDATING, H.VERIFYING, H.REVERTING, H.FAILED, H.REVERT_FAILED})

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
        reverting += host.phase is H.REVERTING
    assert state.unavailable == recount, (
        f"state.unavailable is {state.unavailable}, a recount gives {recount}"
    )
    if not state.phase.terminal:
        assert state.revert_open == reverting, (
            f"revert_open is {state.revert_open}, {reverting} host(s) are reverting"
        )
    if state.phase in (P.RUNNING, P.PAUSED) and state.step_index < len(state.plan):
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
    sent_target: set[str] = field(default_factory=set)  # hosts told to run to_release
    actions: list[Action] = field(default_factory=list)
    # reliability 18: since when each host has been seen healthy on what it was told
    healthy_since: dict[str, float] = field(default_factory=dict)
    seen_generation: dict[str, int] = field(default_factory=dict)
    now: float = 0.0

    @classmethod
    def start(cls, decision: machine.Decision) -> Ledger:
        """Adopt a fresh rollout: the hosts' desired state before it, then its first actions."""
        state = decision.state
        ledger = cls(max_unavailable=state.policy.max_unavailable, now=state.created_at)
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
        self._check_i1(state, pre, actions)
        for i, action in enumerate(actions):
            if isinstance(action, SetDesired):
                self._account_send(state, action, actions[i + 1 : i + 2])
            elif isinstance(action, RecordEvent) and action.kind in ("host.done", "host.failed"):
                seen = self.done if action.kind == "host.done" else self.failed
                if action.host in seen:
                    raise InvariantBroken(f"I3: {action.host} reported {action.kind} twice")
                seen.add(action.host)
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
        self.issued.add((host, action.generation))
        self.issued_to.add(host)
        self.healthy_since.pop(host, None)
        self.generation[host] = action.generation
        self.desired[host] = action.release
        if action.release == state.to_release:
            self.sent_target.add(host)

    def _check_i1(
        self, state: RolloutState, pre: dict[str, HostPhase], actions: list[Action]
    ) -> None:
        """I1 at the moment of each SetDesired.

        Health and connectivity only change with the event itself, before the
        engine decides anything; a host's phase changes are each announced by a
        record. So walking the actions in order from the pre-step phases tells
        the phase of every host at the moment of each SetDesired, and with it
        the number of hosts out of service at that moment.
        """
        phase = dict(pre)
        sends: list[tuple[str, bool]] = []  # (host, was available when told)
        first_send = -1
        for i, action in enumerate(actions):
            if isinstance(action, SetDesired):
                host = state.hosts[action.host]
                before = phase.get(action.host, H.PENDING)
                sends.append((action.host, available(before, host.connected, host.health)))
                if first_send < 0:
                    first_send = i
            elif isinstance(action, RecordEvent) and action.kind in _PHASE_OF_RECORD:
                new = _PHASE_OF_RECORD[action.kind]
                # after the first send the only other change is a host found already on
                # the target (pending -> done, in service before and after)
                if (
                    first_send >= 0
                    and action.kind not in ("host.updating", "host.reverting")
                    and not (action.kind == "host.done" and phase.get(action.host) is H.PENDING)
                ):
                    raise InvariantBroken(
                        f"I1 check: {action.kind} for {action.host} after a SetDesired "
                        "in the same step; the availability walk cannot tell the order"
                    )
                phase[action.host] = new
        if not sends:
            return
        sent = {name for name, _ in sends}
        if len(sent) != len(sends):
            raise InvariantBroken(f"I3: one host told twice in one step: {sends}")
        out = sum(
            not host_available(h) for name, h in state.hosts.items() if name not in sent
        ) + sum(not was_up for _, was_up in sends)
        for name, was_up in sends:
            if was_up:
                if out >= self.max_unavailable:
                    raise InvariantBroken(
                        f"I1: {name} was in service and taken out while {out} host(s) were "
                        f"already out (max_unavailable={self.max_unavailable})"
                    )
                out += 1

    def check_end(self, state: RolloutState, planned: Iterable[str]) -> None:
        """I2 (and I3's 'none skipped') once the rollout has ended."""
        assert state.phase.terminal
        for name, release in self.desired.items():
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
        if state.phase in (P.ROLLED_BACK, P.ABORTED):
            for name in self.sent_target:
                host = state.hosts[name]
                if host.phase is not H.REVERTED or self.desired[name] != state.from_release:
                    raise InvariantBroken(
                        f"I2: {state.phase.value}, but touched host {name} is "
                        f"{host.phase.value} desiring v{self.desired[name]}"
                    )
