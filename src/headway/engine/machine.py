"""The rollout engine: a pure state machine.

    new_rollout(...)              -> Decision(state, actions)
    step(state, event, now)       -> Decision(state, actions)
    next_deadline(state)          -> when to call `step(..., Tick(), now)` next

No awaits, no clock, no database, no randomness: the caller (the runner)
persists the decision's state and actions in one transaction, then acts.
Each event costs O(1) amortised in the number of hosts: batches are walked
with a cursor, counters are kept incrementally, deadlines sit in a heap.

Rules, in the spirit of Kubernetes' deployment controller:

- A host is *out of service* while it is being changed, while it has not
  stayed healthy for ``min_healthy_time``, and whenever it is disconnected
  or unhealthy, whether or not this rollout touched it (I1).
- A host that is in service is only taken out while fewer than
  ``max_unavailable`` hosts are out; a host already out costs nothing.
- A host not done within ``progress_deadline`` of its change has failed;
  more failures than ``failure_budget`` start a rollback (or stop the
  rollout as failed when ``auto_rollback`` is off).
- Rollback is a roll forward to the previous release, of the hosts this
  rollout touched only, under the same budget; a reverted host counts as
  back once it reports healthy (the previous release was proven already).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import RollingStrategy
from headway.engine.actions import Action, RecordEvent, SetDesired, SetServiceRelease
from headway.engine.events import (
    Command,
    EngineEvent,
    HostObserved,
    OperatorCommand,
    event_kind,
)
from headway.engine.plan import Batch, Pause
from headway.engine.planners import plan_rolling, resolve_max_unavailable
from headway.engine.state import IN_FLIGHT, TOUCHED, HostPhase, HostTrack, Policy, RolloutState
from headway.engine.table import TABLE
from headway.errors import IllegalTransition

P = RolloutStatus


@dataclass
class Decision:
    state: RolloutState
    actions: list[Action] = field(default_factory=list)

    @property
    def events(self) -> list[RecordEvent]:
        return [a for a in self.actions if isinstance(a, RecordEvent)]


class _Ctx:
    """The decision being built: the state, the time and the actions so far."""

    def __init__(self, state: RolloutState, now: float, actor: str = "") -> None:
        self.s = state
        self.now = now
        self.actor = actor
        self.actions: list[Action] = []

    def record(self, kind: str, message: str, host: str = "") -> None:
        self.actions.append(RecordEvent(kind, message, host=host, actor=self.actor))


# ---------------------------------------------------------------- entry points


def new_rollout(
    *,
    rollout_id: str,
    service: str,
    from_release: int | None,
    to_release: int,
    strategy: RollingStrategy,
    hosts: Sequence[HostView],
    now: float,
    actor: str = "",
) -> Decision:
    """Compile the strategy into a plan over ``hosts`` and take the first steps."""
    names = sorted(h.name for h in hosts)
    plan = plan_rolling(strategy, names)
    policy = Policy(
        max_unavailable=resolve_max_unavailable(strategy, len(names)),
        min_healthy_time=strategy.min_healthy_time,
        progress_deadline=strategy.progress_deadline,
        failure_budget=strategy.failure_budget,
        auto_rollback=strategy.auto_rollback,
    )
    state = RolloutState(
        rollout_id=rollout_id,
        service=service,
        from_release=from_release,
        to_release=to_release,
        strategy=strategy.type.value,
        policy=policy,
        plan=plan,
        created_at=now,
        step_started_at=now,
    )
    batch_of = {
        name: i for i, step in enumerate(plan) if isinstance(step, Batch) for name in step.hosts
    }
    for view in hosts:
        track = HostTrack(
            name=view.name,
            desired_release=view.desired_release,
            generation=view.generation,
            observed_release=view.observed_release,
            observed_generation=view.observed_generation,
            health=view.health,
            connected=view.connected,
            detail=view.detail,
            batch=batch_of.get(view.name, -1),
        )
        state.hosts[view.name] = track
        state.unavailable += 1  # counted out until _refresh says otherwise
        _refresh(state, track)
    ctx = _Ctx(state, now, actor)
    ctx.record(
        "rollout.started",
        f"{service}: v{from_release} -> v{to_release}, {strategy.type.value} in {len(plan)} "
        f"step(s) over {len(names)} host(s), at most {policy.max_unavailable} out of service",
    )
    _enter_step(ctx)
    _advance(ctx)
    return Decision(state, ctx.actions)


def step(state: RolloutState, event: EngineEvent, now: float) -> Decision:
    """Apply one event. Raises `IllegalTransition` for a pair the table forbids."""
    kind = event_kind(event)
    transition = TABLE.get((state.phase, kind))
    if transition is None:
        raise IllegalTransition(
            f"rollout {state.rollout_id} is {state.phase.value}; it cannot take '{kind}'",
            hint=_hint_for(state.phase),
        )
    actor = event.actor if isinstance(event, OperatorCommand) else ""
    ctx = _Ctx(state, now, actor)
    handler = _HANDLERS[transition.handler]
    handler(ctx, event)
    return Decision(state, ctx.actions)


def next_deadline(state: RolloutState) -> float | None:
    """The earliest time at which a `Tick` would change something, or None."""
    if state.phase.terminal:
        return None
    timers = state.timers
    while timers:
        at, name, generation = timers[0]
        host = state.hosts[name]
        if host.deadline == at and host.generation == generation:
            break
        heapq.heappop(timers)  # stale entry: lazily dropped
    candidates = [timers[0][0]] if timers else []
    if state.phase is not P.PAUSED:
        if state.pause_until is not None:
            candidates.append(state.pause_until)
        if state.blocked_since is not None:
            candidates.append(state.blocked_since + state.policy.progress_deadline)
    return min(candidates) if candidates else None


def _hint_for(phase: RolloutStatus) -> str:
    if phase.terminal:
        return "the rollout has ended; start a new one or use `headway rollback SERVICE`"
    if phase is P.ROLLING_BACK:
        return "wait for the rollback to finish"
    return "see `headway rollout status` for what the rollout is waiting for"


# ------------------------------------------------------------------- handlers


def _noop(ctx: _Ctx, event: EngineEvent) -> None:
    if isinstance(event, OperatorCommand):
        ctx.record(
            "rollout.noop", f"{event.command.value}: nothing to do, rollout is {ctx.s.phase.value}"
        )


def _observe(ctx: _Ctx, event: EngineEvent) -> None:
    assert isinstance(event, HostObserved)
    s = ctx.s
    host = s.hosts.get(event.host)
    joined = host is None
    if host is None:
        host = HostTrack(name=event.host, generation=event.generation)
        s.hosts[event.host] = host
        s.unavailable += 1
    elif event.connected and event.generation < host.observed_generation:
        return  # a report older than one already seen
    host.observed_release = event.release
    host.observed_generation = event.generation
    host.health = event.health
    host.connected = event.connected
    host.detail = event.detail
    converged = event.generation >= host.generation and event.release == host.desired_release
    # a lost agent is reported with its last known health: that is not "seen healthy"
    healthy_now = converged and event.connected and event.health is Health.HEALTHY
    failed_now = event.health is Health.FAILED and event.generation >= host.generation
    if host.phase in (HostPhase.UPDATING, HostPhase.REVERTING):
        if healthy_now:
            _host_healthy(ctx, host)
        elif failed_now:
            _host_failed(ctx, host, event.detail or "the agent reported the release failed")
    elif host.phase is HostPhase.VERIFYING and not healthy_now:
        if failed_now:
            _host_failed(ctx, host, event.detail or "the agent reported the release failed")
        else:
            host.phase = HostPhase.UPDATING
            host.healthy_since = None
            s.push_timer(host.changed_at + s.policy.progress_deadline, host)
            ctx.record(
                "host.flapped",
                f"{host.name} stopped being healthy before {s.policy.min_healthy_time:g}s "
                f"({event.health.value if event.connected else 'disconnected'}); waiting again",
                host.name,
            )
    _refresh(s, host)
    if joined:
        _adopt_new_host(ctx, host)
    _advance(ctx)


def _tick(ctx: _Ctx, event: EngineEvent) -> None:
    s = ctx.s
    while s.timers and s.timers[0][0] <= ctx.now:
        at, name, generation = heapq.heappop(s.timers)
        host = s.hosts[name]
        if host.deadline != at or host.generation != generation:
            continue
        host.deadline = None
        if host.phase is HostPhase.VERIFYING:
            _host_done(ctx, host)
        elif host.phase in (HostPhase.UPDATING, HostPhase.REVERTING):
            _host_failed(
                ctx,
                host,
                f"not healthy on v{host.desired_release} within the progress deadline "
                f"of {s.policy.progress_deadline:g}s"
                + (f" (last seen: {host.health.value}{', ' + host.detail if host.detail else ''})"),
            )
        _refresh(s, host)
    if (
        s.phase in (P.RUNNING, P.ROLLING_BACK)
        and s.blocked_since is not None
        and ctx.now >= s.blocked_since + s.policy.progress_deadline
    ):
        _stalled(ctx)
        return
    _advance(ctx)


def _stalled(ctx: _Ctx) -> None:
    """No host could be started for a whole progress deadline: stop waiting (liveness)."""
    s = ctx.s
    reason = f"no progress for {s.policy.progress_deadline:g}s: {s.blocked}"
    s.blocked = ""
    s.blocked_since = None
    if s.phase is P.ROLLING_BACK:
        _finish(ctx, P.FAILED, f"{s.reason}; rollback stopped, {reason}")
    elif s.policy.auto_rollback:
        _begin_rollback(ctx, reason, P.ROLLED_BACK)
        _advance(ctx)
    else:
        _finish(ctx, P.FAILED, reason + "; automatic rollback is off")


def _pause(ctx: _Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    ctx.s.phase = P.PAUSED
    ctx.s.reason = f"paused by {event.actor or 'an operator'}" + (
        f": {event.reason}" if event.reason else ""
    )
    # waiting while paused is not "no progress": the stall clock starts again on resume
    _set_blocked(ctx, "")
    ctx.record("rollout.paused", ctx.s.reason + "; hosts already changing finish their change")


def _resume(ctx: _Ctx, event: EngineEvent) -> None:
    ctx.s.phase = P.RUNNING
    ctx.s.reason = ""
    ctx.record("rollout.resumed", "resumed")
    _advance(ctx)


def _promote(ctx: _Ctx, event: EngineEvent) -> None:
    s = ctx.s
    current = s.plan[s.step_index] if s.step_index < len(s.plan) else None
    if not isinstance(current, Pause) and s.phase is not P.PAUSED:
        raise IllegalTransition(
            f"rollout {s.rollout_id} is not waiting at a pause step; nothing to promote",
            hint="promote applies to a rollout paused at a pause step or by an operator",
        )
    if s.phase is P.PAUSED:
        s.phase = P.RUNNING
        s.reason = ""
    if isinstance(current, Pause):
        ctx.record(
            "rollout.promoted", f"promoted past step {s.step_index + 1} ({current.describe()})"
        )
        _next_step(ctx)
    else:
        ctx.record("rollout.promoted", "promoted: resumed")
    _advance(ctx)


def _abort(ctx: _Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    who = event.actor or "an operator"
    reason = f"aborted by {who}" + (f": {event.reason}" if event.reason else "")
    _begin_rollback(ctx, reason, P.ABORTED)
    _advance(ctx)


def _rollback(ctx: _Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    who = event.actor or "an operator"
    reason = f"rollback requested by {who}" + (f": {event.reason}" if event.reason else "")
    _begin_rollback(ctx, reason, P.ROLLED_BACK)
    _advance(ctx)


_HANDLERS = {
    "noop": _noop,
    "observe": _observe,
    "tick": _tick,
    "pause": _pause,
    "resume": _resume,
    "promote": _promote,
    "abort": _abort,
    "rollback": _rollback,
}


# ------------------------------------------------------------ host transitions


def _is_available(host: HostTrack) -> bool:
    if host.phase in IN_FLIGHT or host.phase in (HostPhase.FAILED, HostPhase.REVERT_FAILED):
        return False
    return host.connected and host.health is Health.HEALTHY


def _refresh(s: RolloutState, host: HostTrack) -> None:
    available = _is_available(host)
    if available != host.available:
        s.unavailable += -1 if available else 1
        host.available = available


def _send(ctx: _Ctx, host: HostTrack, release: int, phase: HostPhase) -> None:
    s = ctx.s
    host.generation += 1
    host.desired_release = release
    host.phase = phase
    host.changed_at = ctx.now
    host.healthy_since = None
    s.push_timer(ctx.now + s.policy.progress_deadline, host)
    ctx.actions.append(SetDesired(s.next_action_id(), host.name, release, host.generation))
    verb = "reverting to" if phase is HostPhase.REVERTING else "updating to"
    ctx.record(f"host.{phase.value}", f"{host.name}: {verb} v{release}", host.name)
    _refresh(s, host)


def _host_healthy(ctx: _Ctx, host: HostTrack) -> None:
    s = ctx.s
    if host.phase is HostPhase.REVERTING:
        host.phase = HostPhase.REVERTED
        host.deadline = None
        s.revert_open -= 1
        ctx.record("host.reverted", f"{host.name}: back on v{host.desired_release}", host.name)
    elif s.policy.min_healthy_time <= 0:
        _host_done(ctx, host)
    else:
        host.phase = HostPhase.VERIFYING
        host.healthy_since = ctx.now
        s.push_timer(ctx.now + s.policy.min_healthy_time, host)
        ctx.record(
            "host.healthy",
            f"{host.name}: healthy on v{host.desired_release}; must stay so for "
            f"{s.policy.min_healthy_time:g}s",
            host.name,
        )


def _host_done(ctx: _Ctx, host: HostTrack) -> None:
    s = ctx.s
    host.phase = HostPhase.DONE
    host.deadline = None
    s.done += 1
    if host.batch == s.step_index and s.phase is not P.ROLLING_BACK:
        s.step_open -= 1
    ctx.record("host.done", f"{host.name}: done on v{host.desired_release}", host.name)
    _refresh(s, host)


def _host_failed(ctx: _Ctx, host: HostTrack, why: str) -> None:
    s = ctx.s
    host.deadline = None
    if host.phase is HostPhase.REVERTING:
        host.phase = HostPhase.REVERT_FAILED
        s.revert_open -= 1
        s.revert_failed += 1
        ctx.record("host.revert_failed", f"{host.name}: could not go back: {why}", host.name)
        _refresh(s, host)
        return
    host.phase = HostPhase.FAILED
    s.failed += 1
    if host.batch == s.step_index:
        s.step_open -= 1
    ctx.record("host.failed", f"{host.name}: {why}", host.name)
    _refresh(s, host)
    if s.phase in (P.RUNNING, P.PAUSED) and s.failed > s.policy.failure_budget:
        reason = (
            f"{s.failed} host(s) failed, more than the failure budget of {s.policy.failure_budget}"
            f" (last: {host.name}: {why})"
        )
        if s.policy.auto_rollback:
            _begin_rollback(ctx, reason, P.ROLLED_BACK)
        else:
            _finish(ctx, P.FAILED, reason + "; automatic rollback is off")


def _adopt_new_host(ctx: _Ctx, host: HostTrack) -> None:
    """A host that registered mid-rollout gets the rollout's current target (reliability 11).

    One that is out of service anyway (nothing installed yet, unhealthy) is told at
    once: that costs no capacity. One that is in service waits for its turn under the
    budget (I1): going forward, in a batch of its own at the end of the plan; going
    back, at the end of the revert queue. Either way the rollout does not end before
    the host has been dealt with.
    """
    s = ctx.s
    if s.phase in (P.RUNNING, P.PAUSED):
        s.plan.append(Batch((host.name,)))
        host.batch = len(s.plan) - 1
        if not host.available:
            s.touched.append(host.name)
            _send(ctx, host, s.to_release, HostPhase.UPDATING)
    elif s.phase is P.ROLLING_BACK and s.from_release is not None:
        if host.available:
            s.revert_queue.append(host.name)
        else:
            s.revert_open += 1
            _send(ctx, host, s.from_release, HostPhase.REVERTING)


# ------------------------------------------------------------------- progress


def _enter_step(ctx: _Ctx) -> None:
    s = ctx.s
    s.cursor = 0
    s.step_started_at = ctx.now
    s.pause_until = None
    s.waiting_promote = False
    if s.step_index < len(s.plan):
        current = s.plan[s.step_index]
        s.step_open = 0
        if isinstance(current, Batch):
            # a host adopted mid-rollout may be done (or failed) before its batch comes
            closed = (HostPhase.DONE, HostPhase.FAILED)
            s.step_open = sum(s.hosts[name].phase not in closed for name in current.hosts)
        ctx.record("step.started", f"step {s.step_index + 1}/{len(s.plan)}: {current.describe()}")


def _next_step(ctx: _Ctx) -> None:
    ctx.s.step_index += 1
    _enter_step(ctx)


def _advance(ctx: _Ctx) -> None:
    s = ctx.s
    if s.phase is P.ROLLING_BACK:
        _advance_rollback(ctx)
        return
    while s.phase is P.RUNNING:
        if s.step_index >= len(s.plan):
            _finish(ctx, P.SUCCEEDED, "")
            return
        current = s.plan[s.step_index]
        if isinstance(current, Batch):
            if not _start_batch_hosts(ctx, current):
                return
            if s.step_open > 0:
                return
            _next_step(ctx)
        else:
            if current.seconds is None:
                if not s.waiting_promote:
                    s.waiting_promote = True
                    ctx.record("rollout.waiting", "waiting for `headway rollout promote`")
                return
            if s.pause_until is None:
                s.pause_until = ctx.now + current.seconds
            if ctx.now < s.pause_until:
                return
            _next_step(ctx)


def _start_batch_hosts(ctx: _Ctx, batch: Batch) -> bool:
    """Start as many hosts of the batch as the budget allows; False if blocked."""
    s = ctx.s
    while s.cursor < len(batch.hosts):
        host = s.hosts[batch.hosts[s.cursor]]
        if host.phase is not HostPhase.PENDING:
            s.cursor += 1
            continue
        if (
            host.desired_release == s.to_release
            and host.observed_release == s.to_release
            and host.observed_generation >= host.generation
            and host.available
        ):
            s.cursor += 1
            _host_done(ctx, host)  # already there: nothing to change
            continue
        if host.available and s.unavailable >= s.policy.max_unavailable:
            _set_blocked(
                ctx,
                f"waiting for capacity: {s.unavailable} host(s) out of service, "
                f"at most {s.policy.max_unavailable} allowed",
            )
            return False
        s.cursor += 1
        s.blocked_since = None  # progress: the stall clock starts again
        s.touched.append(host.name)
        _send(ctx, host, s.to_release, HostPhase.UPDATING)
    _set_blocked(ctx, "")
    return True


def _set_blocked(ctx: _Ctx, reason: str) -> None:
    s = ctx.s
    if reason and s.blocked_since is None:
        s.blocked_since = ctx.now
    elif not reason:
        s.blocked_since = None
    if reason != s.blocked:
        s.blocked = reason
        if reason:
            ctx.record("rollout.waiting", reason)


def _begin_rollback(ctx: _Ctx, reason: str, final: RolloutStatus) -> None:
    s = ctx.s
    if s.from_release is None:
        _finish(ctx, P.FAILED, reason + "; there is no previous release to roll back to")
        return
    s.phase = P.ROLLING_BACK
    s.final_status = final
    s.reason = reason
    s.waiting_promote = False
    s.pause_until = None
    s.blocked = ""
    s.blocked_since = None
    touched = [name for name in s.touched if s.hosts[name].phase in TOUCHED]
    # hosts already out of service go first: reverting them costs no capacity
    s.revert_queue = sorted(touched, key=lambda name: s.hosts[name].available)
    s.cursor = 0
    ctx.record(
        "rollout.rolling_back",
        f"rolling back {len(touched)} host(s) to v{s.from_release}: {reason}",
    )


def _advance_rollback(ctx: _Ctx) -> None:
    s = ctx.s
    assert s.from_release is not None
    while s.cursor < len(s.revert_queue):
        host = s.hosts[s.revert_queue[s.cursor]]
        # touched hosts, and hosts that registered during the rollback (still pending)
        if host.phase not in TOUCHED and host.phase is not HostPhase.PENDING:
            s.cursor += 1
            continue
        if host.available and s.unavailable >= s.policy.max_unavailable:
            _set_blocked(
                ctx,
                f"waiting for capacity to revert: {s.unavailable} host(s) out of service, "
                f"at most {s.policy.max_unavailable} allowed",
            )
            return
        s.cursor += 1
        s.blocked_since = None
        s.revert_open += 1
        _send(ctx, host, s.from_release, HostPhase.REVERTING)
    _set_blocked(ctx, "")
    if s.revert_open == 0:
        final = s.final_status or P.ROLLED_BACK
        if s.revert_failed:
            _finish(
                ctx,
                P.FAILED,
                f"{s.reason}; {s.revert_failed} host(s) could not be brought back to "
                f"v{s.from_release} (see host.revert_failed events)",
            )
        else:
            _finish(ctx, final, s.reason)


def _finish(ctx: _Ctx, status: RolloutStatus, reason: str) -> None:
    s = ctx.s
    s.phase = status
    s.reason = reason
    s.waiting_promote = False
    s.pause_until = None
    s.blocked = ""
    s.blocked_since = None
    s.timers.clear()
    if status is P.SUCCEEDED:
        ctx.actions.append(SetServiceRelease(s.next_action_id(), s.service, s.to_release))
        ctx.record(
            "rollout.succeeded",
            f"{s.service}: every host done on v{s.to_release} ({s.done} done, {s.failed} failed)",
        )
    else:
        ctx.record(f"rollout.{status.value}", reason or status.value)


# ---------------------------------------------------------------------- views


def progress(state: RolloutState) -> dict[str, int]:
    """Counts for summaries, O(1)."""
    return {
        "step": min(state.step_index + 1, len(state.plan)),
        "steps": len(state.plan),
        "hosts_total": len(state.hosts),
        "hosts_done": state.done,
        "hosts_failed": state.failed + state.revert_failed,
        "unavailable": state.unavailable,
    }


__all__ = [
    "Command",
    "Decision",
    "new_rollout",
    "next_deadline",
    "progress",
    "step",
]
