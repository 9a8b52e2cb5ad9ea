"""The rollout engine: a pure state machine.

    new_rollout(...)              -> Decision(state, actions)
    step(state, event, now)       -> Decision(state, actions)
    next_deadline(state)          -> when to call `step(..., Tick(), now)` next

No awaits, no clock, no database, no randomness: the caller (the runner)
persists the decision's state and actions in one transaction, then acts.
Each event costs O(1) amortised in the number of hosts: batches are walked
with a cursor, counters are kept incrementally, deadlines sit in a heap.

Rules, in the spirit of Kubernetes' deployment controller:

- A host is *out of service* while it is being changed (drained, switched,
  readmitted), while it has not stayed healthy for ``min_healthy_time``,
  and whenever it is disconnected or unhealthy, whether or not this rollout
  touched it (I1).
- A host that is in service is only taken out while fewer than
  ``max_unavailable`` hosts are out (and, with a capacity guard, while the
  rest can carry its load); a host already out costs nothing.
- A host not done within ``progress_deadline`` of its change has failed;
  more failures than ``failure_budget`` start a rollback (or stop the
  rollout as failed when ``auto_rollback`` is off).
- Rollback is a roll forward to the previous release, of the hosts this
  rollout touched only, under the same budget; a reverted host counts as
  back once it reports healthy (the previous release was proven already).
  A blue-green rollback shifts traffic back to the old pool at once.
- A blue-green shift (forward or back) admits first and drains only once every
  admit of it has succeeded, so the balancer always has a server to send to.
- A balancer call that fails after its retries pauses the rollout with the
  reason; `resume` tries again. A rollback does not wait for a person: a host's
  call is tried again at once; a blue-green shift back that fails is tried
  again in a bounded number of rounds with growing delays, then the rollback
  pauses with the reason, and `resume` tries again. No host is left drained
  when a rollout ends (I5).

The transitions are in `table.py`; what happens next is in `progress.py`.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import Strategy
from headway.domain.verification import OnFail, VerificationSpec
from headway.engine import progress as pr
from headway.engine.context import Ctx, Decision
from headway.engine.events import (
    AnalysisDone,
    Command,
    EngineEvent,
    HostObserved,
    LoadReport,
    OperatorCommand,
    TrafficDone,
    Verdict,
    event_kind,
)
from headway.engine.plan import Batch, Pause, Verify
from headway.engine.planners import compile_plan
from headway.engine.state import IN_FLIGHT, HostPhase, HostTrack, Policy, RolloutState
from headway.engine.table import TABLE
from headway.errors import IllegalTransition

P = RolloutStatus
H = HostPhase


# ---------------------------------------------------------------- entry points


def new_rollout(
    *,
    rollout_id: str,
    service: str,
    from_release: int | None,
    to_release: int,
    strategy: Strategy,
    hosts: Sequence[HostView],
    now: float,
    actor: str = "",
    traffic: bool = False,
    live_pool: str | None = None,
    max_rps_per_host: float | None = None,
    verification: VerificationSpec | None = None,
) -> Decision:
    """Compile the strategy into a plan over ``hosts`` and take the first steps.

    ``traffic``: a load balancer fronts the service, so hosts are drained
    before they change and readmitted once healthy. ``live_pool``: for
    blue-green, the pool that takes traffic now.
    """
    compiled = compile_plan(strategy, hosts, live_pool=live_pool, verification=verification)
    policy = Policy(
        max_unavailable=compiled.max_unavailable,
        min_healthy_time=strategy.min_healthy_time,
        progress_deadline=strategy.progress_deadline,
        failure_budget=strategy.failure_budget,
        auto_rollback=strategy.auto_rollback,
        max_rps_per_host=max_rps_per_host,
        pause_on_fail=verification is not None and verification.on_fail is OnFail.PAUSE,
        max_inconclusive=verification.max_inconclusive if verification else 3,
    )
    state = RolloutState(
        rollout_id=rollout_id,
        service=service,
        from_release=from_release,
        to_release=to_release,
        strategy=strategy.type.value,
        policy=policy,
        plan=compiled.steps,
        created_at=now,
        step_started_at=now,
        traffic=traffic,
        shift_back=compiled.shift_back,
        live_pool=compiled.live_pool,
    )
    batch_of = {
        name: i for i, step in enumerate(compiled.steps) if isinstance(step, Batch) for name in step.hosts
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
            admitted=traffic,  # drained before any change; a drain is harmless if it was out
        )
        state.hosts[view.name] = track
        state.unavailable += 1  # counted out until refresh says otherwise
        pr.refresh(state, track)
    ctx = Ctx(state, now, actor)
    ctx.record(
        "rollout.started",
        f"{service}: v{from_release} -> v{to_release}, {strategy.type.value} in "
        f"{len(compiled.steps)} step(s) over {len(hosts)} host(s), at most "
        f"{policy.max_unavailable} out of service"
        + (", draining each host at the load balancer" if traffic else ""),
    )
    pr.enter_step(ctx)
    pr.advance(ctx)
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
    ctx = Ctx(state, now, actor)
    _HANDLERS[transition.handler](ctx, event)
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
    retry = state.shift_back_retry
    if state.phase is P.ROLLING_BACK and retry is not None and retry.at is not None:
        candidates.append(retry.at)
    if state.phase is not P.PAUSED:
        if state.pause_until is not None:
            candidates.append(state.pause_until)
        if state.blocked_since is not None:
            candidates.append(state.blocked_since + state.policy.progress_deadline)
    return min(candidates) if candidates else None


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


def _hint_for(phase: RolloutStatus) -> str:
    if phase.terminal:
        return "the rollout has ended; start a new one or use `headway rollback SERVICE`"
    if phase is P.ROLLING_BACK:
        return "wait for the rollback to finish"
    return "see `headway rollout status` for what the rollout is waiting for"


# ------------------------------------------------------------------- handlers


def _noop(ctx: Ctx, event: EngineEvent) -> None:
    if isinstance(event, OperatorCommand):
        ctx.record("rollout.noop", f"{event.command.value}: nothing to do, rollout is {ctx.s.phase.value}")


def _observe(ctx: Ctx, event: EngineEvent) -> None:
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
    if host.phase in (H.UPDATING, H.REVERTING):
        if healthy_now:
            pr.host_healthy(ctx, host)
        elif failed_now:
            pr.host_failed(ctx, host, event.detail or "the agent reported the release failed")
    elif host.phase is H.VERIFYING and not healthy_now:
        if failed_now:
            pr.host_failed(ctx, host, event.detail or "the agent reported the release failed")
        else:
            host.phase = H.UPDATING
            host.healthy_since = None
            s.push_timer(host.changed_at + s.policy.progress_deadline, host)
            ctx.record(
                "host.flapped",
                f"{host.name} stopped being healthy before {s.policy.min_healthy_time:g}s "
                f"({event.health.value if event.connected else 'disconnected'}); waiting again",
                host.name,
            )
    pr.refresh(s, host)
    if joined:
        pr.adopt_new_host(ctx, host)
    pr.advance(ctx)


def _tick(ctx: Ctx, event: EngineEvent) -> None:
    s = ctx.s
    while s.timers and s.timers[0][0] <= ctx.now:
        at, name, generation = heapq.heappop(s.timers)
        host = s.hosts[name]
        if host.deadline != at or host.generation != generation:
            continue
        host.deadline = None
        if host.phase is H.VERIFYING:
            pr.host_done(ctx, host)
        elif host.phase in IN_FLIGHT:
            last = f"{host.health.value}{', ' + host.detail if host.detail else ''}"
            pr.host_failed(
                ctx,
                host,
                f"not {'back in service' if host.phase.value.endswith('admitting') else 'healthy'}"
                f" on v{host.next_release or host.desired_release} within the progress deadline "
                f"of {s.policy.progress_deadline:g}s ({host.phase.value}; last seen: {last})",
            )
        elif host.pending_action:
            host.pending_action = ""  # a failed host's admit never answered: stop waiting for it
        pr.refresh(s, host)
    retry = s.shift_back_retry
    if s.phase is P.ROLLING_BACK and retry is not None and retry.at is not None and ctx.now >= retry.at:
        pr.shift_back_round(ctx)
    if (
        s.phase in (P.RUNNING, P.ROLLING_BACK)
        and s.blocked_since is not None
        and ctx.now >= s.blocked_since + s.policy.progress_deadline
    ):
        _stalled(ctx)
        return
    pr.advance(ctx)


def _stalled(ctx: Ctx) -> None:
    """No host could be started for a whole progress deadline: stop waiting (liveness)."""
    s = ctx.s
    reason = f"no progress for {s.policy.progress_deadline:g}s: {s.blocked}"
    s.blocked = ""
    s.blocked_since = None
    if s.phase is P.ROLLING_BACK:
        pr.finish(ctx, P.FAILED, f"{s.reason}; rollback stopped, {reason}")
    elif s.policy.auto_rollback:
        pr.begin_rollback(ctx, reason, P.ROLLED_BACK)
        pr.advance(ctx)
    else:
        pr.finish(ctx, P.FAILED, reason + "; automatic rollback is off")


def _traffic(ctx: Ctx, event: EngineEvent) -> None:
    """The balancer answered a drain or an admit."""
    assert isinstance(event, TrafficDone)
    s = ctx.s
    pending = s.pending_traffic.get(event.action_id)
    if pending is None or pending["failed"]:
        return  # an answer already counted (an action executed twice); a failed one waits for resume
    del s.pending_traffic[event.action_id]
    host = s.hosts.get(event.host)
    kind, purpose = pending["kind"], pending["purpose"]
    if purpose == "host" and (
        host is None or host.pending_action != event.action_id or host.phase in (H.FAILED, H.REVERT_FAILED)
    ):
        _traffic_late(ctx, host, str(kind), event)
        return
    if not event.ok:
        ctx.record("traffic.failed", f"{kind} of {event.host} failed: {event.detail}", event.host)
        _traffic_failed(ctx, pending, event)
        return
    if kind == "drain":
        ctx.record("host.drained", f"{event.host}: {event.detail or 'drained'}", event.host)
    if purpose in ("shift", "shift_back"):
        if host is not None:
            host.admitted = kind == "admit"
        s.shift_open -= 1
        if purpose == "shift" and pr.rolling_back(s):
            pr.shift_back_again(ctx, event.host)
        pr.shift_answered(ctx, str(purpose), str(kind), ok=True)
    elif purpose == "host" and host is not None:
        if host.phase in (H.DRAINING, H.REVERT_DRAINING):
            pr.host_drained(ctx, host)
        elif host.phase in (H.ADMITTING, H.REVERT_ADMITTING):
            pr.host_admitted(ctx, host)
        pr.refresh(s, host)
    pr.advance(ctx)


def _traffic_late(ctx: Ctx, host: HostTrack | None, kind: str, event: TrafficDone) -> None:
    """The answer for a host that stopped waiting for it (it failed, or timed out, meanwhile).

    Nothing waits on it and nothing is retried; only where the balancer has the host
    matters now: a drain that did take it out, or an admit that did not put it back, means
    it must be readmitted in the end (I5); an admit that did put it back means it must be
    drained before it changes again.
    """
    if host is not None and (event.ok or kind == "admit"):
        host.admitted = event.ok and kind == "admit"
    outcome = "done" if event.ok else f"failed: {event.detail}"
    ctx.record("traffic.late", f"{kind} of {event.host} answered late: {outcome}", event.host)
    if host is not None and host.pending_action == event.action_id:
        host.pending_action = ""  # a failed host waited for this answer
        host.deadline = None
        pr.advance(ctx)


def _traffic_failed(ctx: Ctx, pending: dict[str, object], event: TrafficDone) -> None:
    """A balancer call failed after its retries.

    Going forward, the rollout pauses with the reason and `resume` tries again (a
    host whose drain failed was never stopped: it waits for its turn again). A
    rollback does not wait for a person first: a host's call is tried again at once,
    bounded by the host's progress deadline; a call of a blue-green shift back is
    tried again in rounds after growing delays (`pr.shift_back_failed`), and only
    when those are used up does the rollback pause with the reason, for `resume`.
    """
    s = ctx.s
    host = s.hosts.get(event.host)
    for_host = pending["purpose"] == "host" and host is not None and host.pending_action == event.action_id
    if pr.rolling_back(s):
        if pending["purpose"] == "shift_back":
            s.pending_traffic[event.action_id] = {**pending, "failed": True}
            pr.shift_back_failed(ctx, f"{pending['kind']} of {event.host} failed: {event.detail}")
        elif pending["purpose"] == "shift":  # the shift under way did not happen: one less to wait for
            s.shift_open -= 1
            pr.shift_answered(ctx, "shift", str(pending["kind"]), ok=False)
            pr.advance(ctx)
        elif for_host and host is not None:
            pr.issue_traffic(ctx, host.name, str(pending["kind"]), purpose="host")
        return
    if for_host and host is not None:
        host.pending_action = ""
        host.deadline = None  # no deadline runs while a person fixes the balancer
        if host.phase is H.DRAINING:
            host.phase = H.PENDING  # never stopped: started again on resume
            s.retry_hosts.append(host.name)
        else:
            s.pending_traffic[event.action_id] = {**pending, "failed": True}
        pr.refresh(s, host)
    elif pending["purpose"] == "shift":
        s.pending_traffic[event.action_id] = {**pending, "failed": True}
    if s.phase is P.RUNNING:
        s.phase = P.PAUSED
        s.reason = (
            f"load balancer: {pending['kind']} of {event.host} failed ({event.detail}); "
            "fix the balancer, then `headway rollout resume`"
        )
        pr.set_blocked(ctx, "")
        ctx.record("rollout.paused", s.reason)


def _analysis(ctx: Ctx, event: EngineEvent) -> None:
    """The gates' verdict: pass moves on, fail rolls back (or pauses), inconclusive extends.

    "Not enough data yet" never passes: the verification runs again, up to
    ``max_inconclusive`` times, then the rollout pauses with the reason. A metrics
    source that errors pauses at once; it neither passes nor rolls back on its own.
    """
    assert isinstance(event, AnalysisDone)
    s = ctx.s
    if event.action_id != s.analysis_pending or pr.rolling_back(s):
        return  # an old or repeated answer
    s.analysis_pending = ""
    current = s.plan[s.step_index] if s.step_index < len(s.plan) else None
    if not isinstance(current, Verify):
        return
    ctx.record(f"verify.{event.verdict.value}", event.summary)
    if event.verdict is Verdict.PASS:
        s.verified = True
    elif event.verdict is Verdict.FAIL:
        reason = f"verification failed at step {s.step_index + 1}: {event.summary}"
        if s.policy.pause_on_fail or not s.policy.auto_rollback:
            _pause_for(ctx, reason + "; decide: `headway rollout resume` or `headway rollback`")
        else:
            pr.begin_rollback(ctx, reason, P.ROLLED_BACK)
    elif event.errored:
        _pause_for(ctx, f"a metrics source failed: {event.summary}; fix it, then resume")
    else:
        s.inconclusive += 1
        if s.inconclusive > s.policy.max_inconclusive:
            _pause_for(
                ctx,
                f"verification inconclusive {s.inconclusive} times in a row: {event.summary}; "
                "resume to observe again, or promote to go on without it",
            )
        elif s.phase is P.RUNNING:
            pr.issue_analysis(ctx, current)
    pr.advance(ctx)


def _pause_for(ctx: Ctx, reason: str) -> None:
    s = ctx.s
    if s.phase is not P.RUNNING:
        s.reason = reason
        return
    s.phase = P.PAUSED
    s.reason = reason
    pr.set_blocked(ctx, "")
    ctx.record("rollout.paused", reason)


def _load(ctx: Ctx, event: EngineEvent) -> None:
    assert isinstance(event, LoadReport)
    ctx.s.load_rps = max(0.0, event.rps)
    pr.advance(ctx)


def _pause(ctx: Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    ctx.s.phase = P.PAUSED
    ctx.s.reason = f"paused by {event.actor or 'an operator'}" + (f": {event.reason}" if event.reason else "")
    # waiting while paused is not "no progress": the stall clock starts again on resume
    pr.set_blocked(ctx, "")
    ctx.record("rollout.paused", ctx.s.reason + "; hosts already changing finish their change")


def _resume(ctx: Ctx, event: EngineEvent) -> None:
    s = ctx.s
    if pr.rolling_back(s):  # paused in a rollback: its failed shift back goes out again
        pr.resume_rollback(ctx)
        pr.advance(ctx)
        return
    s.phase = P.RUNNING
    s.reason = ""
    ctx.record("rollout.resumed", "resumed")
    _retry_failed_traffic(ctx)
    _reverify(ctx)
    pr.advance(ctx)


def _reverify(ctx: Ctx) -> None:
    """Back from a pause at a verification step whose verdict is not in: observe again."""
    s = ctx.s
    current = s.plan[s.step_index] if s.step_index < len(s.plan) else None
    if isinstance(current, Verify) and not s.verified and not s.analysis_pending:
        s.inconclusive = 0
        pr.issue_analysis(ctx, current)


def _retry_failed_traffic(ctx: Ctx) -> None:
    s = ctx.s
    failed = [(aid, p) for aid, p in s.pending_traffic.items() if p.get("failed")]
    for action_id, pending in failed:
        del s.pending_traffic[action_id]
        host = s.hosts.get(str(pending["host"]))
        weight = pending.get("weight")
        new_id = pr.issue_traffic(
            ctx,
            str(pending["host"]),
            str(pending["kind"]),
            purpose=str(pending["purpose"]),
            weight=int(weight) if weight is not None else None,
        )
        if host is not None and pending["purpose"] == "host":
            host.pending_action = new_id
            s.push_timer(ctx.now + s.policy.progress_deadline, host)


def _promote(ctx: Ctx, event: EngineEvent) -> None:
    s = ctx.s
    if pr.rolling_back(s):
        raise IllegalTransition(
            f"rollout {s.rollout_id} is paused in its rollback; it cannot take 'promote': "
            "the new release is not going forward",
            hint=f"fix the load balancer, then `headway rollout resume {s.rollout_id}` to shift "
            "traffic back to the old pool",
        )
    current = s.plan[s.step_index] if s.step_index < len(s.plan) else None
    if not isinstance(current, Pause | Verify) and s.phase is not P.PAUSED:
        raise IllegalTransition(
            f"rollout {s.rollout_id} is not waiting at a pause step; nothing to promote",
            hint="promote applies to a rollout paused at a pause step or by an operator",
        )
    if s.phase is P.PAUSED:
        s.phase = P.RUNNING
        s.reason = ""
        _retry_failed_traffic(ctx)
    if isinstance(current, Pause | Verify):
        # an operator's promote at a verification step goes on without its verdict
        ctx.record("rollout.promoted", f"promoted past step {s.step_index + 1} ({current.describe()})")
        s.analysis_pending = ""
        s.waiting_promote = False
        pr.next_step(ctx)
    else:
        ctx.record("rollout.promoted", "promoted: resumed")
    pr.advance(ctx)


def _already_rolling_back(ctx: Ctx, event: EngineEvent) -> bool:
    """Abort or rollback of a rollback paused by a failed shift back: nothing new to do."""
    assert isinstance(event, OperatorCommand)
    if not pr.rolling_back(ctx.s):
        return False
    ctx.record(
        "rollout.noop",
        f"{event.command.value}: the rollout is already rolling back (paused); "
        f"`headway rollout resume {ctx.s.rollout_id}` tries the shift back again",
    )
    return True


def _abort(ctx: Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    if _already_rolling_back(ctx, event):
        return
    who = event.actor or "an operator"
    reason = f"aborted by {who}" + (f": {event.reason}" if event.reason else "")
    pr.begin_rollback(ctx, reason, P.ABORTED)
    pr.advance(ctx)


def _rollback(ctx: Ctx, event: EngineEvent) -> None:
    assert isinstance(event, OperatorCommand)
    if _already_rolling_back(ctx, event):
        return
    who = event.actor or "an operator"
    reason = f"rollback requested by {who}" + (f": {event.reason}" if event.reason else "")
    pr.begin_rollback(ctx, reason, P.ROLLED_BACK)
    pr.advance(ctx)


_HANDLERS = {
    "noop": _noop,
    "observe": _observe,
    "tick": _tick,
    "traffic": _traffic,
    "load": _load,
    "analysis": _analysis,
    "pause": _pause,
    "resume": _resume,
    "promote": _promote,
    "abort": _abort,
    "rollback": _rollback,
}

__all__ = ["Command", "Decision", "new_rollout", "next_deadline", "progress", "step"]
