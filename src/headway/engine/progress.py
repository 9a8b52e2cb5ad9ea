"""What the engine does next: hosts through their change, steps through the plan,
rollbacks, and the end of a rollout. Called by the handlers in `machine`.

A host's change, with a balancer in front (``managed``)::

    pending -> draining -> updating -> admitting -> verifying -> done
    (back:)    revert_draining -> reverting -> revert_admitting -> reverted

Without one, ``draining`` and ``admitting`` are skipped. The app is stopped
(the agent told the new release) only once the drain is confirmed or timed
out; a host rejoins traffic only once healthy on its new release.

A blue-green shift (forward, or the shift back of a rollback) admits first and
drains only once every admit of it has succeeded (``drains_held``): the
balancer carries out the calls concurrently, and a drain that landed before
the admit it makes room for would leave it with no server for a moment.
"""

from __future__ import annotations

import zlib

from headway.domain.models import Health, RolloutStatus
from headway.engine.actions import (
    Admit,
    Analyze,
    Drain,
    SetDesired,
    SetLivePool,
    SetServiceRelease,
)
from headway.engine.context import Ctx
from headway.engine.plan import Batch, Pause, Shift, Verify
from headway.engine.state import (
    IN_FLIGHT,
    REVERTING_PHASES,
    TOUCHED,
    HostPhase,
    HostTrack,
    RolloutState,
    ShiftBackRetry,
)

P = RolloutStatus
H = HostPhase

# A blue-green shift back that fails at the balancer (after the traffic driver's own
# retries) is issued again this many rounds, the first after about SHIFT_BACK_DELAY
# seconds, each delay twice the last, up to SHIFT_BACK_MAX_DELAY; then the rollout pauses.
SHIFT_BACK_ROUNDS = 5
SHIFT_BACK_DELAY = 5.0
SHIFT_BACK_MAX_DELAY = 60.0


def rolling_back(s: RolloutState) -> bool:
    """A rollback is under way: rolling back, or paused in it (its shift back failed)."""
    return s.phase is P.ROLLING_BACK or (s.phase is P.PAUSED and s.final_status is not None)


# ------------------------------------------------------------ availability


def is_available(host: HostTrack) -> bool:
    if host.phase in IN_FLIGHT or host.phase in (H.FAILED, H.REVERT_FAILED):
        return False
    return host.connected and host.health is Health.HEALTHY


def refresh(s: RolloutState, host: HostTrack) -> None:
    available = is_available(host)
    if available != host.available:
        s.unavailable += -1 if available else 1
        host.available = available


# ------------------------------------------------------------ host changes


def start_host(ctx: Ctx, host: HostTrack, release: int, *, reverting: bool, traffic: bool) -> None:
    """Begin changing ``host`` to ``release``: drain it first when a balancer fronts it."""
    s = ctx.s
    host.managed = traffic and s.traffic
    host.next_release = release
    host.changed_at = ctx.now  # the progress deadline counts from here, drain included
    if host.managed and host.admitted:
        host.phase = H.REVERT_DRAINING if reverting else H.DRAINING
        s.push_timer(ctx.now + s.policy.progress_deadline, host)
        issue_traffic(ctx, host.name, "drain", purpose="host")
        refresh(s, host)
    else:
        send(ctx, host, release, H.REVERTING if reverting else H.UPDATING)


def issue_traffic(ctx: Ctx, host_name: str, kind: str, *, purpose: str, weight: int | None = None) -> str:
    s = ctx.s
    action_id = s.next_action_id()
    s.pending_traffic[action_id] = {
        "host": host_name,
        "kind": kind,
        "purpose": purpose,
        "weight": weight,
        "failed": False,
    }
    if kind == "drain":
        ctx.actions.append(Drain(action_id, host_name))
        ctx.record("traffic.drain", f"{host_name}: draining at the load balancer", host_name)
    else:
        ctx.actions.append(Admit(action_id, host_name, weight))
        at = f" at weight {weight}" if weight is not None else ""
        ctx.record("traffic.admit", f"{host_name}: admitting at the load balancer{at}", host_name)
    if purpose == "host":
        s.hosts[host_name].pending_action = action_id
    return action_id


def send(ctx: Ctx, host: HostTrack, release: int, phase: HostPhase) -> None:
    s = ctx.s
    host.generation += 1
    host.desired_release = release
    host.next_release = None
    host.phase = phase
    host.healthy_since = None
    s.push_timer(host.changed_at + s.policy.progress_deadline, host)
    ctx.actions.append(SetDesired(s.next_action_id(), host.name, release, host.generation))
    verb = "reverting to" if phase is H.REVERTING else "updating to"
    ctx.record(f"host.{phase.value}", f"{host.name}: {verb} v{release}", host.name)
    refresh(s, host)


def host_drained(ctx: Ctx, host: HostTrack) -> None:
    s = ctx.s
    host.admitted = False
    host.pending_action = ""
    reverting = host.phase is H.REVERT_DRAINING
    if not reverting and s.phase is P.ROLLING_BACK and s.from_release is not None:
        # the rollback began while it drained: it never ran the target and never will;
        # it is told the previous release (no restart: it runs it) and readmitted
        reverting = True
        host.next_release = s.from_release
        s.revert_open += 1
    assert host.next_release is not None
    send(ctx, host, host.next_release, H.REVERTING if reverting else H.UPDATING)


def healthy_on_desired(host: HostTrack) -> bool:
    """Seen connected and healthy on what it was last told."""
    return (
        host.connected
        and host.health is Health.HEALTHY
        and host.observed_release == host.desired_release
        and host.observed_generation >= host.generation
    )


def host_admitted(ctx: Ctx, host: HostTrack) -> None:
    """Back in load balancing. If it stopped being healthy while the admit was under way,
    it is not verified from now: it waits to be healthy again (reliability 18), or fails."""
    s = ctx.s
    host.admitted = True
    ctx.record("host.admitted", f"{host.name}: back in load balancing", host.name)
    if healthy_on_desired(host):
        host_serving(ctx, host)
        return
    host.pending_action = ""
    if host.health is Health.FAILED and host.observed_generation >= host.generation:
        host_failed(ctx, host, host.detail or "the agent reported the release failed")
        return
    host.phase = H.REVERTING if host.phase is H.REVERT_ADMITTING else H.UPDATING
    if host.deadline is None:
        s.push_timer(ctx.now + s.policy.progress_deadline, host)
    ctx.record(
        "host.flapped",
        f"{host.name} stopped being healthy while it was readmitted "
        f"({host.health.value if host.connected else 'disconnected'}); waiting again",
        host.name,
    )


def host_healthy(ctx: Ctx, host: HostTrack) -> None:
    if host.managed and not host.admitted:
        reverting = host.phase is H.REVERTING
        host.phase = H.REVERT_ADMITTING if reverting else H.ADMITTING
        issue_traffic(ctx, host.name, "admit", purpose="host")
        return
    host_serving(ctx, host)


def host_serving(ctx: Ctx, host: HostTrack) -> None:
    """Healthy on its release and (if managed) back in load balancing."""
    s = ctx.s
    host.pending_action = ""
    if host.phase in (H.REVERTING, H.REVERT_ADMITTING):
        host.phase = H.REVERTED
        host.deadline = None
        s.revert_open -= 1
        ctx.record("host.reverted", f"{host.name}: back on v{host.desired_release}", host.name)
        refresh(s, host)
    elif s.policy.min_healthy_time <= 0:
        host_done(ctx, host)
    else:
        host.phase = H.VERIFYING
        host.healthy_since = ctx.now
        s.push_timer(ctx.now + s.policy.min_healthy_time, host)
        ctx.record(
            "host.healthy",
            f"{host.name}: healthy on v{host.desired_release}; must stay so for "
            f"{s.policy.min_healthy_time:g}s",
            host.name,
        )


def host_done(ctx: Ctx, host: HostTrack) -> None:
    s = ctx.s
    host.phase = H.DONE
    host.deadline = None
    s.done += 1
    if host.batch == s.step_index and not rolling_back(s):
        s.step_open -= 1
    ctx.record("host.done", f"{host.name}: done on v{host.desired_release}", host.name)
    refresh(s, host)


def host_failed(ctx: Ctx, host: HostTrack, why: str) -> None:
    s = ctx.s
    host.deadline = None
    if host.pending_action and host.phase in (H.ADMITTING, H.REVERT_ADMITTING):
        # its admit may still land: until it answers (or a progress deadline passes) it
        # counts as in traffic, and a rollback waits for the answer before changing it
        host.admitted = True
        s.push_timer(ctx.now + s.policy.progress_deadline, host)
    else:
        host.pending_action = ""
    if host.phase in REVERTING_PHASES:
        host.phase = H.REVERT_FAILED
        s.revert_open -= 1
        s.revert_failed += 1
        ctx.record("host.revert_failed", f"{host.name}: could not go back: {why}", host.name)
        refresh(s, host)
        return
    host.phase = H.FAILED
    s.failed += 1
    if host.batch == s.step_index:
        s.step_open -= 1
    ctx.record("host.failed", f"{host.name}: {why}", host.name)
    refresh(s, host)
    if s.phase in (P.RUNNING, P.PAUSED) and not rolling_back(s) and s.failed > s.policy.failure_budget:
        reason = (
            f"{s.failed} host(s) failed, more than the failure budget of {s.policy.failure_budget}"
            f" (last: {host.name}: {why})"
        )
        if s.policy.auto_rollback:
            begin_rollback(ctx, reason, P.ROLLED_BACK)
        else:
            finish(ctx, P.FAILED, reason + "; automatic rollback is off")


def adopt_new_host(ctx: Ctx, host: HostTrack) -> None:
    """A host that registered mid-rollout gets the rollout's current target (reliability 11).

    One that is out of service anyway (nothing installed yet, unhealthy) is told at
    once: that costs no capacity. One that is in service waits for its turn under the
    budget (I1): going forward, in a batch of its own at the end of the plan; going
    back, at the end of the revert queue. Either way the rollout does not end before
    the host has been dealt with.
    """
    s = ctx.s
    if s.shift_back is not None:
        return  # blue-green: pools are fixed when the rollout starts
    host.admitted = s.traffic
    if s.phase in (P.RUNNING, P.PAUSED):
        s.plan.append(Batch((host.name,)))
        host.batch = len(s.plan) - 1
        if not host.available:
            s.touched.append(host.name)
            start_host(ctx, host, s.to_release, reverting=False, traffic=True)
    elif s.phase is P.ROLLING_BACK and s.from_release is not None:
        if host.available:
            s.revert_queue.append(host.name)
        else:
            s.revert_open += 1
            start_host(ctx, host, s.from_release, reverting=True, traffic=True)


# ------------------------------------------------------------------- steps


def enter_step(ctx: Ctx) -> None:
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
            closed = (H.DONE, H.FAILED)
            s.step_open = sum(s.hosts[name].phase not in closed for name in current.hosts)
        ctx.record("step.started", f"step {s.step_index + 1}/{len(s.plan)}: {current.describe()}")
        if isinstance(current, Shift):
            issue_shift(ctx, current)
        elif isinstance(current, Verify):
            s.verified = False
            s.inconclusive = 0
            issue_analysis(ctx, current)


def issue_analysis(ctx: Ctx, verify: Verify) -> None:
    """Ask for the gates' verdict: hosts done on the target against hosts still on the old one.

    Walking the hosts is O(n) once per verification step, not per event.
    """
    s = ctx.s
    canary = tuple(sorted(n for n, h in s.hosts.items() if h.phase is H.DONE))
    baseline = tuple(sorted(n for n, h in s.hosts.items() if h.phase is H.PENDING and h.available))
    if s.shift_back is not None:  # blue-green: the new pool against the old one
        canary = s.shift_back.drain
        baseline = tuple(h for h, _ in s.shift_back.admit)
    if not verify.comparative:
        baseline = ()
    action_id = s.next_action_id()
    s.analysis_pending = action_id
    ctx.actions.append(Analyze(action_id, canary, baseline, verify.comparative))


def issue_shift(ctx: Ctx, shift: Shift, purpose: str = "shift", under_way: int = 0) -> None:
    """Issue a shift's admits; its drains go out once every admit has succeeded.

    The balancer carries out calls concurrently: a drain issued with the admits could
    land before the admit it makes room for took effect, and leave the balancer with
    no server for a moment (503s). So the drains are held (``drains_held`` counts the
    answers they wait for; they count in ``shift_open`` already) and `shift_answered`
    issues them after the last admit's success. ``under_way``: answers of an
    interrupted forward shift a shift back also waits for (see `begin_rollback`).
    """
    s = ctx.s
    s.shift_open = len(shift.admit) + len(shift.drain) + under_way
    for name, weight in shift.admit:
        issue_traffic(ctx, name, "admit", purpose=purpose, weight=weight)
    s.drains_held = 0
    if not shift.drain:
        return
    s.drains_held = len(shift.admit) + under_way
    if s.drains_held == 0:
        issue_drains(ctx)
        return
    waits_for = f"{len(shift.admit)} admit(s) have succeeded"
    if under_way:
        waits_for += f" and the {under_way} answer(s) of the shift under way are in"
    ctx.record("traffic.held", f"{len(shift.drain)} host(s) leave load balancing once {waits_for}")


def issue_drains(ctx: Ctx) -> None:
    """The drains of the current shift (the shift back's in a rollback) go out."""
    s = ctx.s
    s.drains_held = 0
    if rolling_back(s):
        assert s.shift_back is not None
        drains, purpose = s.shift_back.drain, "shift_back"
    else:
        current = s.plan[s.step_index]
        assert isinstance(current, Shift)
        drains, purpose = current.drain, "shift"
    for name in drains:
        issue_traffic(ctx, name, "drain", purpose=purpose)


def shift_answered(ctx: Ctx, purpose: str, kind: str, ok: bool) -> None:
    """A call of a shift answered: held drains go out once the last answer they wait for is in.

    Going forward they wait for the shift's admits to succeed (a failed admit pauses the
    rollout, and its drains stay held until `resume` issues it again and it succeeds, or
    are dropped by a rollback). In a shift back they wait for its admits to succeed (after
    retries) and for every answer of the forward shift it interrupted: a forward drain of
    the old pool landing after the shift back's admit would take that pool out again (the
    traffic driver's drain even sets DRAIN again when it sees the host readmitted), so the
    new pool is only drained once `shift_back_again` has readmitted it and that succeeded.
    """
    s = ctx.s
    if s.drains_held <= 0:
        return
    if rolling_back(s):
        counts = purpose == "shift" or (purpose == "shift_back" and kind == "admit" and ok)
    else:
        counts = purpose == "shift" and kind == "admit" and ok
    if not counts:
        return
    s.drains_held -= 1
    if s.drains_held == 0:
        ctx.record("traffic.admitted", "every admit of the shift succeeded: the other pool is drained now")
        issue_drains(ctx)


def shift_back_again(ctx: Ctx, name: str) -> None:
    """A shift that was under way when the rollback began has just set ``name`` at the
    balancer, maybe after the shift back did: set it as the shift back wants, again.

    A readmit is one more admit the held drains wait for; a drain while the drains are
    held is one of them already (it goes out after this answer, so after what it undoes).
    """
    s = ctx.s
    assert s.shift_back is not None
    for admitted, weight in s.shift_back.admit:
        if admitted == name:
            issue_traffic(ctx, name, "admit", purpose="shift_back", weight=weight)
            s.shift_open += 1
            if s.drains_held > 0:
                s.drains_held += 1
    if name in s.shift_back.drain and s.drains_held == 0:
        issue_traffic(ctx, name, "drain", purpose="shift_back")
        s.shift_open += 1


def shift_back_failed(ctx: Ctx, failure: str) -> None:
    """A call of the shift back failed after the traffic driver's retries (reliability 20).

    The caller has kept it in ``pending_traffic``, marked failed (it still counts in
    ``shift_open``: traffic is not back until it succeeds). The next round of failed
    calls is scheduled after a growing delay, unless one is already due; once
    `SHIFT_BACK_ROUNDS` rounds are used up, the rollout pauses with the reason, and
    ``resume`` tries again. Paused already, the call waits for that resume.
    """
    s = ctx.s
    if s.phase is P.PAUSED:
        return
    retry = s.shift_back_retry
    if retry is None:
        retry = s.shift_back_retry = ShiftBackRetry()
    if retry.at is not None:
        return  # it goes out with the round already due
    if retry.rounds < SHIFT_BACK_ROUNDS:
        delay = shift_back_delay(s.rollout_id, retry.rounds + 1)
        retry.at = ctx.now + delay
        ctx.record(
            "traffic.backoff",
            f"shifting traffic back: {failure}; trying again in {delay:.1f}s "
            f"(round {retry.rounds + 1} of {SHIFT_BACK_ROUNDS})",
        )
        return
    retry.reason = s.reason
    s.phase = P.PAUSED
    s.reason = (
        f"{s.reason}; rollback paused: shifting traffic back to the old pool still fails after "
        f"{retry.rounds} retries ({failure}), so part of the traffic may still go to the new "
        f"pool; fix the load balancer, then `headway rollout resume {s.rollout_id}` to try the "
        "shift back again"
    )
    set_blocked(ctx, "")
    ctx.record("rollout.paused", s.reason)


def shift_back_delay(rollout_id: str, round_: int) -> float:
    """The wait before retry round ``round_`` (from 1) of a failed shift back.

    Exponential and capped, with "equal jitter": between half of the ceiling and all
    of it. The jitter is derived from the rollout id and the round (the engine has no
    randomness), so rollouts failing at one balancer at the same moment spread out.
    """
    ceiling = min(SHIFT_BACK_MAX_DELAY, SHIFT_BACK_DELAY * 2.0 ** (round_ - 1))
    spread = zlib.crc32(f"{rollout_id}:{round_}".encode()) / 2**32
    return ceiling / 2 + spread * ceiling / 2


def retry_shift_back(ctx: Ctx) -> None:
    """Issue every failed call of the shift back again.

    O(calls under way) once per round: the rounds are bounded.
    """
    s = ctx.s
    failed = [
        (action_id, pending)
        for action_id, pending in s.pending_traffic.items()
        if pending["purpose"] == "shift_back" and pending["failed"]
    ]
    for action_id, pending in failed:
        del s.pending_traffic[action_id]  # still counted in shift_open: the new call takes its place
        weight = pending.get("weight")
        issue_traffic(
            ctx,
            str(pending["host"]),
            str(pending["kind"]),
            purpose="shift_back",
            weight=int(weight) if weight is not None else None,
        )


def shift_back_round(ctx: Ctx) -> None:
    """The delay of a failed shift back has passed: the next round goes out."""
    s = ctx.s
    retry = s.shift_back_retry
    assert retry is not None and retry.at is not None
    retry.at = None
    retry.rounds += 1
    ctx.record(
        "traffic.retry",
        f"shifting traffic back to the old pool again (round {retry.rounds} of {SHIFT_BACK_ROUNDS})",
    )
    retry_shift_back(ctx)


def resume_rollback(ctx: Ctx) -> None:
    """``resume`` of a rollback paused by a failed shift back: issue the failed calls again,
    with a fresh set of retry rounds."""
    s = ctx.s
    retry = s.shift_back_retry
    s.phase = P.ROLLING_BACK
    if retry is not None and retry.reason:
        s.reason = retry.reason
    s.shift_back_retry = None
    ctx.record("rollout.resumed", "resumed: the rollback goes on")
    ctx.record("rollout.rolling_back", f"shifting traffic back to the old pool again: {s.reason}")
    retry_shift_back(ctx)


def next_step(ctx: Ctx) -> None:
    ctx.s.step_index += 1
    enter_step(ctx)


def advance(ctx: Ctx) -> None:
    s = ctx.s
    if s.phase is P.ROLLING_BACK:
        advance_rollback(ctx)
        return
    while s.phase is P.RUNNING:
        if s.step_index >= len(s.plan):
            finish(ctx, P.SUCCEEDED, "")
            return
        current = s.plan[s.step_index]
        if isinstance(current, Batch):
            if not start_batch_hosts(ctx, current):
                return
            if s.step_open > 0:
                return
            next_step(ctx)
        elif isinstance(current, Shift):
            if s.shift_open > 0:
                return
            ctx.record("traffic.shifted", f"{current.share}% of traffic on the new pool")
            next_step(ctx)
        elif isinstance(current, Verify):
            if not s.verified:
                return
            if current.approval and not s.waiting_promote:
                s.waiting_promote = True
                ctx.record("rollout.waiting", "gates passed; waiting for `headway rollout promote`")
            if current.approval:
                return
            next_step(ctx)
        else:
            if not wait_pause(ctx, current):
                return
            next_step(ctx)


def wait_pause(ctx: Ctx, pause: Pause) -> bool:
    s = ctx.s
    if pause.seconds is None:
        if not s.waiting_promote:
            s.waiting_promote = True
            ctx.record("rollout.waiting", "waiting for `headway rollout promote`")
        return False
    if s.pause_until is None:
        s.pause_until = ctx.now + pause.seconds
    return ctx.now >= s.pause_until


def start_batch_hosts(ctx: Ctx, batch: Batch) -> bool:
    """Start as many hosts of the batch as the budget allows; False if blocked."""
    s = ctx.s
    while s.retry_hosts:  # drains that failed before a pause go first
        host = s.hosts[s.retry_hosts[0]]
        if host.available and batch.traffic and not _room_for_one_more(ctx):
            return False
        s.retry_hosts.pop(0)
        start_host(ctx, host, s.to_release, reverting=False, traffic=batch.traffic)
    while s.cursor < len(batch.hosts):
        host = s.hosts[batch.hosts[s.cursor]]
        if host.phase is not H.PENDING:
            s.cursor += 1
            continue
        if (
            host.desired_release == s.to_release
            and host.observed_release == s.to_release
            and host.observed_generation >= host.generation
            and host.available
        ):
            s.cursor += 1
            host_done(ctx, host)  # already there: nothing to change
            continue
        if host.available and batch.traffic and not _room_for_one_more(ctx):
            return False
        s.cursor += 1
        s.blocked_since = None  # progress: the stall clock starts again
        s.touched.append(host.name)
        start_host(ctx, host, s.to_release, reverting=False, traffic=batch.traffic)
    set_blocked(ctx, "")
    return True


def _room_for_one_more(ctx: Ctx) -> bool:
    """May one more host in service leave it? The budget (I1), then the capacity guard."""
    s = ctx.s
    if s.unavailable >= s.policy.max_unavailable:
        set_blocked(
            ctx,
            f"waiting for capacity: {s.unavailable} host(s) out of service, "
            f"at most {s.policy.max_unavailable} allowed",
        )
        return False
    limit = s.policy.max_rps_per_host
    if limit is not None and s.load_rps is not None:
        serving_after = len(s.hosts) - s.unavailable - 1
        per_host = s.load_rps / serving_after if serving_after > 0 else float("inf")
        if per_host > limit:
            set_blocked(
                ctx,
                f"capacity guard: {s.load_rps:.0f} req/s over {max(serving_after, 0)} host(s) "
                f"would be {per_host:.0f} req/s each, above the headroom of {limit:g}",
            )
            return False
    return True


def set_blocked(ctx: Ctx, reason: str) -> None:
    s = ctx.s
    if reason and s.blocked_since is None:
        s.blocked_since = ctx.now
    elif not reason:
        s.blocked_since = None
    if reason != s.blocked:
        s.blocked = reason
        if reason:
            ctx.record("rollout.waiting", reason)


# ---------------------------------------------------------------- rollback


def begin_rollback(ctx: Ctx, reason: str, final: RolloutStatus) -> None:
    s = ctx.s
    if s.from_release is None:
        finish(ctx, P.FAILED, reason + "; there is no previous release to roll back to")
        return
    s.phase = P.ROLLING_BACK
    s.final_status = final
    s.reason = reason
    s.waiting_promote = False
    s.pause_until = None
    s.blocked = ""
    s.blocked_since = None
    s.retry_hosts.clear()
    if s.shift_back is not None:
        ctx.record("rollout.rolling_back", f"shifting traffic back to the old pool: {reason}")
        # a shift under way still answers: the rollback waits for those answers too, and
        # so do its drains (the forward shift's held drains are dropped: never issued)
        under_way = sum(p["purpose"] == "shift" and not p["failed"] for p in s.pending_traffic.values())
        issue_shift(ctx, s.shift_back, purpose="shift_back", under_way=under_way)
        return
    touched = [name for name in s.touched if s.hosts[name].phase in TOUCHED]
    # hosts already out of service go first: reverting them costs no capacity
    s.revert_queue = sorted(touched, key=lambda name: s.hosts[name].available)
    s.cursor = 0
    ctx.record(
        "rollout.rolling_back",
        f"rolling back {len(touched)} host(s) to v{s.from_release}: {reason}",
    )


def advance_rollback(ctx: Ctx) -> None:
    s = ctx.s
    assert s.from_release is not None
    if s.shift_back is not None:
        if s.shift_open == 0:
            finish(ctx, s.final_status or P.ROLLED_BACK, s.reason)
        return
    while s.cursor < len(s.revert_queue):
        host = s.hosts[s.revert_queue[s.cursor]]
        # touched hosts, and hosts that registered during the rollback (still pending)
        if host.phase not in TOUCHED and host.phase is not H.PENDING:
            s.cursor += 1
            continue
        if host.pending_action:
            return  # a balancer call for it is under way; wait for its answer
        if host.available and s.unavailable >= s.policy.max_unavailable:
            set_blocked(
                ctx,
                f"waiting for capacity to revert: {s.unavailable} host(s) out of service, "
                f"at most {s.policy.max_unavailable} allowed",
            )
            return
        s.cursor += 1
        s.blocked_since = None
        s.revert_open += 1
        start_host(ctx, host, s.from_release, reverting=True, traffic=True)
    set_blocked(ctx, "")
    if s.revert_open == 0:
        final = s.final_status or P.ROLLED_BACK
        if s.revert_failed:
            finish(
                ctx,
                P.FAILED,
                f"{s.reason}; {s.revert_failed} host(s) could not be brought back to "
                f"v{s.from_release} (see host.revert_failed events)",
            )
        else:
            finish(ctx, final, s.reason)


# --------------------------------------------------------------------- end


def finish(ctx: Ctx, status: RolloutStatus, reason: str) -> None:
    s = ctx.s
    s.phase = status
    s.reason = reason
    s.waiting_promote = False
    s.pause_until = None
    s.blocked = ""
    s.blocked_since = None
    s.timers.clear()
    s.retry_hosts.clear()
    s.drains_held = 0  # drains held back are dropped: the shift they belong to is over
    if s.traffic and s.shift_back is None:
        # I5: no host is left drained when a rollout ends (a broken one is kept out by the
        # balancer's own health checks, not by a drain nobody will lift); a drain still
        # under way may yet take its host out, so that host is readmitted too
        draining = {p["host"] for p in s.pending_traffic.values() if p["kind"] == "drain" and not p["failed"]}
        for host in s.hosts.values():
            if host.managed and (not host.admitted or host.name in draining):
                host.admitted = True
                issue_traffic(ctx, host.name, "admit", purpose="final")
    if status is P.SUCCEEDED:
        ctx.actions.append(SetServiceRelease(s.next_action_id(), s.service, s.to_release))
        if s.live_pool is not None:
            ctx.actions.append(SetLivePool(s.next_action_id(), s.service, s.live_pool))
        ctx.record(
            "rollout.succeeded",
            f"{s.service}: every host done on v{s.to_release} ({s.done} done, {s.failed} failed)",
        )
    else:
        ctx.record(f"rollout.{status.value}", reason or status.value)
