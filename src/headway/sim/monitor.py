"""The invariants I1-I5, checked from outside the engine after every step.

`Monitor` keeps its own model of every host (what the engine has been told:
connected, health, report generation; and what the engine has done with it:
free, busy with a change, or failed), driven only by the events fed to the
engine and the actions it answers with. From that model it checks, at each
step and in O(actions) time, so that a 100,000-host run stays cheap:

- the phase the rollout moves to is one the transition table lists;
- I1: a Drain or SetDesired that takes an *in-service* host out of service
  comes while fewer than ``max_unavailable`` hosts are out, counted at that
  moment of the step (the actions are walked in the order the engine made them);
- I3: per host, generations strictly increase; no action id is issued twice;
  no host is sent to the target (or back) twice, nor done, failed or reverted twice;
- I4: every phase change, operator command and SetDesired comes with its audit record;
- its own count of hosts out of service equals the engine's counter, and each
  host the step touched is in the engine's state as the model says.

`check_full` recounts every host (O(n); run at step boundaries), and
`check_end` checks I2 and I5 against the simulated world once the rollout ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from headway.domain.models import Health, HostView, RolloutStatus
from headway.engine.actions import Action, Admit, Drain, RecordEvent, SetDesired
from headway.engine.events import (
    EngineEvent,
    HostObserved,
    OperatorCommand,
    TrafficDone,
    event_kind,
)
from headway.engine.plan import Verify
from headway.engine.state import IN_FLIGHT, HostPhase, RolloutState
from headway.engine.table import TABLE

P = RolloutStatus
H = HostPhase

FREE, BUSY, FAILED = 0, 1, 2

_CATEGORY_OF_RECORD = {
    "host.updating": BUSY,
    "host.reverting": BUSY,
    "host.healthy": BUSY,
    "host.flapped": BUSY,
    "host.done": FREE,
    "host.reverted": FREE,
    "host.failed": FAILED,
    "host.revert_failed": FAILED,
}

RECORD_OF_PHASE = {
    P.PAUSED: ("rollout.paused",),
    P.RUNNING: ("rollout.resumed", "rollout.promoted"),
    P.ROLLING_BACK: ("rollout.rolling_back",),
    P.SUCCEEDED: ("rollout.succeeded",),
    P.FAILED: ("rollout.failed",),
    P.ROLLED_BACK: ("rollout.rolled_back",),
    P.ABORTED: ("rollout.aborted",),
}

_ONCE = ("host.done", "host.failed", "host.reverted", "host.revert_failed")


class InvariantBroken(AssertionError):
    """An invariant does not hold; the message names it (I1-I5, liveness, ...)."""


def diagnose(state: RolloutState | None) -> str:
    """A name for a stuck rollout that matches a known engine problem, or ""."""
    if state is None or state.phase is not P.RUNNING:
        return ""
    current = state.plan[state.step_index] if state.step_index < len(state.plan) else None
    if isinstance(current, Verify) and not state.verified and not state.analysis_pending:
        return "verify-without-verdict: at a verification step with no verdict and none asked for"
    waiting = {str(p["host"]) for p in state.pending_traffic.values()}
    for host in state.hosts.values():
        if (
            host.phase in (H.ADMITTING, H.REVERT_ADMITTING)
            and not host.pending_action
            and host.name not in waiting
        ):
            return f"admit-never-retried: {host.name} is {host.phase.value} with no balancer call to wait for"
    return ""


_CATEGORY = {
    phase: BUSY if phase in IN_FLIGHT else FAILED if phase in (H.FAILED, H.REVERT_FAILED) else FREE
    for phase in HostPhase
}


def category(phase: HostPhase) -> int:
    return _CATEGORY[phase]


class _Host:
    __slots__ = (
        "category",
        "connected",
        "generation",
        "health",
        "last_traffic",
        "observed_generation",
        "once",
        "sent_back",
        "sent_target",
        "view",
    )

    def __init__(self, view: HostView) -> None:
        self.category = FREE
        self.connected = view.connected
        self.health = view.health
        self.observed_generation = view.observed_generation
        self.generation = view.generation
        self.last_traffic: tuple[str, str] = ("", "")
        self.sent_target = False
        self.sent_back = False
        self.once: tuple[str, ...] = ()
        # the host as the store knows it (what a HostGone is built from)
        self.view = (view.observed_release, view.observed_generation, view.health)

    @property
    def out(self) -> bool:
        return self.category != FREE or not self.connected or self.health is not Health.HEALTHY


@dataclass(frozen=True)
class WorldHost:
    """What the simulated world knows of a host when the rollout has ended."""

    name: str
    running: int | None  # the release the host really runs
    admitted: bool  # the balancer sends it traffic
    last_admit_failed: bool  # its last balancer call was an admit that failed
    switches: tuple[int | None, ...]  # every release it switched to, in order


class Monitor:
    def __init__(self, views: Sequence[HostView], from_release: int | None, to_release: int) -> None:
        self.hosts = {v.name: _Host(v) for v in views}
        self.from_release = from_release
        self.to_release = to_release
        self.max_unavailable = 0
        self.out = sum(h.out for h in self.hosts.values())
        self.action_ids: set[str] = set()
        self.steps = 0
        self.records = 0
        self.peak_out = 0
        self.touched: dict[str, None] = {}

    # ------------------------------------------------------------------ model

    def _set(self, host: _Host, *, cat: int | None = None) -> None:
        was = host.out
        if cat is not None:
            host.category = cat
        now = host.out
        if was != now:
            self.out += 1 if now else -1

    def observe(self, event: HostObserved) -> None:
        """Mirror of the engine's use of a report: stale ones (older generation) are ignored."""
        host = self.hosts.get(event.host)
        if host is None:
            return
        if event.connected:
            host.view = (event.release, event.generation, event.health)
        if event.connected and event.generation < host.observed_generation:
            return
        was = host.out
        host.observed_generation = event.generation
        host.connected = event.connected
        host.health = event.health
        if was != host.out:
            self.out += 1 if host.out else -1

    def stored_view(self, name: str) -> tuple[int | None, int, Health]:
        """The last observation the store holds for ``name`` (a HostGone carries it)."""
        return self.hosts[name].view

    # ------------------------------------------------------------------ steps

    def started(self, state: RolloutState, actions: Sequence[Action]) -> None:
        """The first decision of a rollout (``new_rollout``)."""
        self.max_unavailable = state.policy.max_unavailable
        self._walk(state, actions, None, None)

    def step(
        self,
        state: RolloutState,
        event: EngineEvent,
        actions: Sequence[Action],
        before: RolloutStatus,
        after: RolloutStatus,
    ) -> None:
        """One engine step: ``event`` took the rollout from ``before`` to ``after``."""
        self.steps += 1
        kind = event_kind(event)
        allowed = TABLE[(before, kind)].to
        if after not in allowed:
            raise InvariantBroken(
                f"table: ({before.value}, {kind}) led to {after.value}; allowed: "
                f"{', '.join(p.value for p in allowed)}"
            )
        if before.terminal:
            if actions:
                raise InvariantBroken(f"an ended rollout ({before.value}) decided {actions[0]!r}")
            return  # the engine no longer follows the hosts
        if isinstance(event, HostObserved):
            self.observe(event)
            self.touched[event.host] = None
        if isinstance(event, OperatorCommand):
            records = [a for a in actions if isinstance(a, RecordEvent)]
            if not records or any(r.actor != event.actor for r in records):
                raise InvariantBroken(f"I4: operator {event.command.value} by {event.actor!r} not audited")
        if after is not before:
            wanted = RECORD_OF_PHASE[after]
            if not any(isinstance(a, RecordEvent) and a.kind in wanted for a in actions):
                raise InvariantBroken(
                    f"I4: {before.value} -> {after.value} without a {' or '.join(wanted)} record"
                )
        self._walk(state, actions, event, before)

    def _walk(
        self,
        state: RolloutState,
        actions: Sequence[Action],
        event: EngineEvent | None,
        before: RolloutStatus | None,
    ) -> None:
        hosts = self.hosts
        for i, action in enumerate(actions):
            if isinstance(action, RecordEvent):
                self.records += 1
                if not action.host:
                    continue
                host = hosts.get(action.host)
                if host is None:
                    continue
                self.touched[action.host] = None
                cat = _CATEGORY_OF_RECORD.get(action.kind)
                if action.kind in _ONCE:
                    if action.kind in host.once:
                        raise InvariantBroken(f"I3: {action.host}: {action.kind} twice")
                    host.once += (action.kind,)
                if cat is not None:
                    self._set(host, cat=cat)
                continue
            if action.action_id in self.action_ids:
                raise InvariantBroken(f"I3: action id {action.action_id} issued twice")
            self.action_ids.add(action.action_id)
            if isinstance(action, Drain | SetDesired):
                host = hosts[action.host]
                self.touched[action.host] = None
                if not host.out and self.out >= self.max_unavailable:  # an in-service host leaves (I1)
                    raise InvariantBroken(
                        f"I1: {action.host} taken out of service while {self.out} host(s) were "
                        f"already out (max_unavailable {self.max_unavailable})"
                    )
                self._set(host, cat=BUSY)
                self.peak_out = max(self.peak_out, self.out)
                if isinstance(action, Drain):
                    host.last_traffic = (action.action_id, "drain")
                else:
                    self._sent(state, host, action, actions[i + 1 : i + 2])
            elif isinstance(action, Admit):
                hosts[action.host].last_traffic = (action.action_id, "admit")
                self.touched[action.host] = None
        if (
            isinstance(event, TrafficDone)
            and not event.ok
            and before in (P.RUNNING, P.PAUSED)
            and event.host in hosts
            and hosts[event.host].last_traffic == (event.action_id, "drain")
        ):
            # a drain that failed going forward: the host was never stopped, it serves again
            self._set(hosts[event.host], cat=FREE)
            self.touched[event.host] = None

    def _sent(self, state: RolloutState, host: _Host, action: SetDesired, after: Sequence[Action]) -> None:
        if action.generation <= host.generation:
            raise InvariantBroken(
                f"I3: {action.host} sent generation {action.generation} after {host.generation}"
            )
        host.generation = action.generation
        if not (
            after
            and isinstance(after[0], RecordEvent)
            and after[0].host == action.host
            and after[0].kind in ("host.updating", "host.reverting")
        ):
            raise InvariantBroken(f"I4: SetDesired for {action.host} without its audit record")
        if action.release == self.to_release:
            if host.sent_target:
                raise InvariantBroken(f"I3: {action.host} sent to v{action.release} twice")
            host.sent_target = True
        elif action.release == self.from_release:
            if host.sent_back:
                raise InvariantBroken(f"I3: {action.host} sent back to v{action.release} twice")
            host.sent_back = True
        else:
            raise InvariantBroken(
                f"I2: {action.host} told to run v{action.release}, neither v{self.to_release} "
                f"nor v{self.from_release}"
            )

    # ----------------------------------------------------------------- counts

    def check_counts(self, state: RolloutState) -> None:
        """O(hosts touched since the last call): the engine's counter and touched hosts agree."""
        if state.unavailable != self.out:
            raise InvariantBroken(
                f"I1 count: the engine counts {state.unavailable} host(s) out of service, "
                f"the monitor {self.out}"
            )
        hosts = state.hosts
        mine = self.hosts
        for name in self.touched:
            track = hosts[name]
            host = mine[name]
            if category(track.phase) != host.category or track.available == host.out:
                self._agree(state, name)
        self.touched.clear()

    def _agree(self, state: RolloutState, name: str) -> None:
        track = state.hosts[name]
        host = self.hosts[name]
        cat = category(track.phase)
        if cat != host.category or track.available == host.out:
            raise InvariantBroken(
                f"model: {name} is {track.phase.value} (available={track.available}) in the engine; "
                f"the monitor has category {host.category}, out={host.out}"
            )

    def check_full(self, state: RolloutState) -> None:
        """O(n): every host against the engine, and the engine's counters against a recount."""
        recount = 0
        reverting = 0
        for name, track in state.hosts.items():
            self._agree(state, name)
            recount += not track.available
            reverting += track.phase in (H.REVERT_DRAINING, H.REVERTING, H.REVERT_ADMITTING)
        if recount != state.unavailable:
            raise InvariantBroken(f"I1 count: unavailable is {state.unavailable}, a recount gives {recount}")
        if not state.phase.terminal and state.revert_open != reverting:
            raise InvariantBroken(f"revert_open is {state.revert_open}, {reverting} host(s) are reverting")
        self.check_counts(state)

    # -------------------------------------------------------------------- end

    def check_end(
        self,
        state: RolloutState,
        world: Iterable[WorldHost],
        desired: Mapping[str, int | None] | None = None,
    ) -> dict[str, int]:
        """I2, I3 (world side) and I5 once the rollout ended and the world settled."""
        if not state.phase.terminal:
            raise InvariantBroken(f"liveness: the rollout is still {state.phase.value}: {state.reason}")
        self.check_full(state)
        ends = (self.to_release, self.from_release)
        left_out = 0
        failed = 0
        for host in world:
            track = state.hosts[host.name]
            mine = self.hosts[host.name]
            if host.running not in ends:
                raise InvariantBroken(f"I2: {host.name} runs v{host.running}, not v{ends[0]} or v{ends[1]}")
            if desired is not None and desired.get(host.name) not in ends:
                raise InvariantBroken(f"I2: {host.name} is stored as desiring v{desired.get(host.name)}")
            allowed = ((), (self.to_release,), (self.to_release, self.from_release))
            if host.switches not in allowed:
                raise InvariantBroken(
                    f"I3: {host.name} switched releases {list(host.switches)}; a rollout changes "
                    "a host once, and a rollback once more"
                )
            if not host.admitted:
                if not host.last_admit_failed:
                    raise InvariantBroken(f"I5: {host.name} left drained at the balancer")
                left_out += 1  # the balancer refused the final admit: its own failure, logged
            if state.phase is P.SUCCEEDED:
                if track.phase is H.FAILED:
                    failed += 1
                elif track.phase is not H.DONE or host.running != self.to_release:
                    raise InvariantBroken(
                        f"I2: succeeded, but {host.name} is {track.phase.value} running v{host.running}"
                    )
            elif (
                state.phase in (P.ROLLED_BACK, P.ABORTED)
                and mine.sent_target
                and (track.phase is not H.REVERTED or host.running != self.from_release)
            ):
                raise InvariantBroken(
                    f"I2: {state.phase.value}, but {host.name} is {track.phase.value} running v{host.running}"
                )
        if failed > state.policy.failure_budget:
            raise InvariantBroken(
                f"succeeded with {failed} failed hosts, budget {state.policy.failure_budget}"
            )
        return {"left_out_by_balancer": left_out, "failed_hosts": failed}
