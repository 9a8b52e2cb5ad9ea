"""The engine's state of one rollout, and its JSON form for the store.

The engine owns the state object it is handed and changes it in place:
copying 100,000 host records per event would break the O(1)-per-event
budget. A caller that needs the previous state keeps its serialised form.
"""

from __future__ import annotations

import heapq
import json
import operator
from dataclasses import dataclass, field, fields
from enum import StrEnum
from itertools import compress
from typing import Any

from headway.domain.models import Health, RolloutStatus
from headway.engine.plan import Shift, Step, step_from_dict, step_to_dict


class HostPhase(StrEnum):
    PENDING = "pending"  # not touched by this rollout
    UPDATING = "updating"  # told to run the target; not healthy yet
    VERIFYING = "verifying"  # healthy on the target; waiting out min_healthy_time
    DONE = "done"  # healthy on the target for min_healthy_time
    FAILED = "failed"  # not done within the progress deadline, or reported failed
    REVERTING = "reverting"  # told to go back to the previous release
    REVERTED = "reverted"  # healthy on the previous release again
    REVERT_FAILED = "revert_failed"  # could not get back to the previous release
    # with a load balancer in front: around the switch, the host leaves and rejoins traffic
    DRAINING = "draining"  # leaving load balancing before it changes
    ADMITTING = "admitting"  # healthy on the target; rejoining load balancing
    REVERT_DRAINING = "revert_draining"
    REVERT_ADMITTING = "revert_admitting"


REVERTING_PHASES = frozenset({HostPhase.REVERT_DRAINING, HostPhase.REVERTING, HostPhase.REVERT_ADMITTING})
IN_FLIGHT = frozenset(
    {HostPhase.DRAINING, HostPhase.UPDATING, HostPhase.ADMITTING, HostPhase.VERIFYING} | REVERTING_PHASES
)
TOUCHED = frozenset(
    {
        HostPhase.DRAINING,
        HostPhase.UPDATING,
        HostPhase.ADMITTING,
        HostPhase.VERIFYING,
        HostPhase.DONE,
        HostPhase.FAILED,
    }
)


@dataclass(slots=True)
class Policy:
    max_unavailable: int
    min_healthy_time: float
    progress_deadline: float
    failure_budget: int
    auto_rollback: bool
    max_rps_per_host: float | None = None  # capacity guard; None: off
    pause_on_fail: bool = False  # verification fails: pause instead of rolling back
    max_inconclusive: int = 3  # "not enough data yet" extends a verification this often


@dataclass(slots=True)
class HostTrack:
    name: str
    phase: HostPhase = HostPhase.PENDING
    desired_release: int | None = None
    generation: int = 0
    observed_release: int | None = None
    observed_generation: int = 0
    health: Health = Health.UNKNOWN
    connected: bool = False
    detail: str = ""
    changed_at: float = 0.0
    healthy_since: float | None = None
    deadline: float | None = None
    available: bool = False
    batch: int = -1  # index of the plan step this host belongs to (-1: none)
    admitted: bool = False  # as far as this rollout knows, the balancer sends it traffic
    managed: bool = False  # this change drains and readmits the host
    next_release: int | None = None  # what it runs once drained
    pending_action: str = ""  # the traffic action it waits on

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase.value,
            "desired_release": self.desired_release,
            "generation": self.generation,
            "observed_release": self.observed_release,
            "observed_generation": self.observed_generation,
            "health": self.health.value,
            "connected": self.connected,
            "detail": self.detail,
            "changed_at": self.changed_at,
            "healthy_since": self.healthy_since,
            "deadline": self.deadline,
            "available": self.available,
            "batch": self.batch,
            "admitted": self.admitted,
            "managed": self.managed,
            "next_release": self.next_release,
            "pending_action": self.pending_action,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostTrack:
        return cls(
            name=d["name"],
            phase=HostPhase(d["phase"]),
            desired_release=d["desired_release"],
            generation=d["generation"],
            observed_release=d["observed_release"],
            observed_generation=d["observed_generation"],
            health=Health(d["health"]),
            connected=d["connected"],
            detail=d["detail"],
            changed_at=d["changed_at"],
            healthy_since=d["healthy_since"],
            deadline=d["deadline"],
            available=d["available"],
            batch=d["batch"],
            admitted=d.get("admitted", False),
            managed=d.get("managed", False),
            next_release=d.get("next_release"),
            pending_action=d.get("pending_action", ""),
        )


@dataclass(slots=True)
class RolloutState:
    rollout_id: str
    service: str
    from_release: int | None
    to_release: int
    strategy: str
    policy: Policy
    plan: list[Step]
    phase: RolloutStatus = RolloutStatus.RUNNING
    reason: str = ""
    created_at: float = 0.0
    step_index: int = 0
    step_started_at: float = 0.0
    cursor: int = 0  # next host of the current batch (or revert queue) to start
    step_open: int = 0  # hosts of the current batch not yet done or failed
    waiting_promote: bool = False
    pause_until: float | None = None
    final_status: RolloutStatus | None = None  # where ROLLING_BACK ends (rolled_back or aborted)
    hosts: dict[str, HostTrack] = field(default_factory=dict)
    unavailable: int = 0
    failed: int = 0
    done: int = 0
    revert_queue: list[str] = field(default_factory=list)
    revert_failed: int = 0
    revert_open: int = 0
    touched: list[str] = field(default_factory=list)
    blocked: str = ""
    blocked_since: float | None = None
    seq: int = 0
    # load balancer
    traffic: bool = False  # a balancer fronts the service: drain before, admit after
    shift_back: Shift | None = None  # blue-green: how a rollback puts traffic back
    live_pool: str | None = None  # blue-green: the pool that serves after success
    shift_open: int = 0  # answers still awaited for the current shift
    pending_traffic: dict[str, dict[str, Any]] = field(default_factory=dict)  # by action id
    retry_hosts: list[str] = field(default_factory=list)  # drains to try again on resume
    load_rps: float | None = None
    # verification
    analysis_pending: str = ""  # the Analyze action awaited
    inconclusive: int = 0  # inconclusive verdicts in a row at this step
    verified: bool = False  # this step's gates passed
    timers: list[tuple[float, str, int]] = field(default_factory=list)  # heap (at, host, generation)

    def next_action_id(self) -> str:
        self.seq += 1
        return f"{self.rollout_id}:{self.seq}"

    def push_timer(self, at: float, host: HostTrack) -> None:
        host.deadline = at
        heapq.heappush(self.timers, (at, host.name, host.generation))

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        d["plan"] = [step_to_dict(s) for s in self.plan]
        d["hosts"] = [h.to_dict() for h in self.hosts.values()]
        return d

    def _fields(self) -> dict[str, Any]:
        """`to_dict` in its key order, with ``plan`` and ``hosts`` (the O(hosts) parts) as None."""
        p = self.policy
        return {
            "version": 1,
            "rollout_id": self.rollout_id,
            "service": self.service,
            "from_release": self.from_release,
            "to_release": self.to_release,
            "strategy": self.strategy,
            "policy": {
                "max_unavailable": p.max_unavailable,
                "min_healthy_time": p.min_healthy_time,
                "progress_deadline": p.progress_deadline,
                "failure_budget": p.failure_budget,
                "auto_rollback": p.auto_rollback,
                "max_rps_per_host": p.max_rps_per_host,
                "pause_on_fail": p.pause_on_fail,
                "max_inconclusive": p.max_inconclusive,
            },
            "plan": None,
            "phase": self.phase.value,
            "reason": self.reason,
            "created_at": self.created_at,
            "step_index": self.step_index,
            "step_started_at": self.step_started_at,
            "cursor": self.cursor,
            "step_open": self.step_open,
            "waiting_promote": self.waiting_promote,
            "pause_until": self.pause_until,
            "final_status": self.final_status.value if self.final_status else None,
            "hosts": None,
            "unavailable": self.unavailable,
            "failed": self.failed,
            "done": self.done,
            "revert_queue": self.revert_queue,
            "revert_failed": self.revert_failed,
            "revert_open": self.revert_open,
            "touched": self.touched,
            "blocked": self.blocked,
            "blocked_since": self.blocked_since,
            "seq": self.seq,
            "traffic": self.traffic,
            "shift_back": step_to_dict(self.shift_back) if self.shift_back else None,
            "live_pool": self.live_pool,
            "shift_open": self.shift_open,
            "pending_traffic": self.pending_traffic,
            "retry_hosts": self.retry_hosts,
            "load_rps": self.load_rps,
            "analysis_pending": self.analysis_pending,
            "inconclusive": self.inconclusive,
            "verified": self.verified,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutState:
        p = d["policy"]
        state = cls(
            rollout_id=d["rollout_id"],
            service=d["service"],
            from_release=d["from_release"],
            to_release=d["to_release"],
            strategy=d["strategy"],
            policy=Policy(
                max_unavailable=p["max_unavailable"],
                min_healthy_time=p["min_healthy_time"],
                progress_deadline=p["progress_deadline"],
                failure_budget=p["failure_budget"],
                auto_rollback=p["auto_rollback"],
                max_rps_per_host=p.get("max_rps_per_host"),
                pause_on_fail=p.get("pause_on_fail", False),
                max_inconclusive=p.get("max_inconclusive", 3),
            ),
            plan=[step_from_dict(s) for s in d["plan"]],
            phase=RolloutStatus(d["phase"]),
            reason=d["reason"],
            created_at=d["created_at"],
            step_index=d["step_index"],
            step_started_at=d["step_started_at"],
            cursor=d["cursor"],
            step_open=d["step_open"],
            waiting_promote=d["waiting_promote"],
            pause_until=d["pause_until"],
            final_status=RolloutStatus(d["final_status"]) if d["final_status"] else None,
            unavailable=d["unavailable"],
            failed=d["failed"],
            done=d["done"],
            revert_queue=list(d["revert_queue"]),
            revert_failed=d["revert_failed"],
            revert_open=d["revert_open"],
            touched=list(d["touched"]),
            blocked=d["blocked"],
            blocked_since=d["blocked_since"],
            seq=d["seq"],
            traffic=d.get("traffic", False),
            shift_back=_shift_from(d.get("shift_back")),
            live_pool=d.get("live_pool"),
            shift_open=d.get("shift_open", 0),
            pending_traffic=dict(d.get("pending_traffic", {})),
            retry_hosts=list(d.get("retry_hosts", [])),
            load_rps=d.get("load_rps"),
            analysis_pending=d.get("analysis_pending", ""),
            inconclusive=d.get("inconclusive", 0),
            verified=d.get("verified", False),
        )
        for raw in d["hosts"]:
            host = HostTrack.from_dict(raw)
            state.hosts[host.name] = host
            if host.deadline is not None:
                state.timers.append((host.deadline, host.name, host.generation))
        heapq.heapify(state.timers)
        return state


_HOST_FIELDS = tuple(f.name for f in fields(HostTrack))
_host_fingerprint = operator.attrgetter(*_HOST_FIELDS)  # every field, as one comparable tuple
_LISTS = ("plan", "hosts")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class StateEncoder:
    """The JSON text of one rollout's `RolloutState.to_dict`, re-encoding only what changed.

    ``encode(state)`` returns the text of ``json.dumps(state.to_dict(), separators=(",", ":"))``
    (the store's format; the same text, unless a field changed only between equal
    values such as 1 and 1.0), but keeps the text of every host and plan step from the
    previous call: a host whose fields are all unchanged, or a plan step that is the
    same (immutable) object, is not encoded again. Finding the changed hosts is one
    C-level pass over the hosts (a tuple of each host's fields, compared with the
    last one), so saving a 10,000-host rollout after a few hosts moved costs
    milliseconds rather than a full re-encoding. The engine needs no change
    tracking, and nothing can be missed: every field of every host is compared.
    """

    def __init__(self) -> None:
        self._prints: list[tuple[Any, ...]] = []
        self._hosts: list[str] = []
        self._steps: list[Step] = []
        self._step_texts: list[str] = []

    def encode(self, state: RolloutState) -> str:
        d = state._fields()
        out: list[str] = []
        rest: dict[str, Any] = {}
        for key, value in d.items():
            if key not in _LISTS:
                rest[key] = value
                continue
            if rest:
                out.append(_dumps(rest)[1:-1])
                rest = {}
            items = self._plan(state.plan) if key == "plan" else self._hosts_text(state)
            out.append(f'"{key}":[{",".join(items)}]')
        if rest:
            out.append(_dumps(rest)[1:-1])
        return "{" + ",".join(out) + "}"

    def _plan(self, plan: list[Step]) -> list[str]:
        steps, texts = self._steps, self._step_texts
        same = 0
        for old, new in zip(steps, plan, strict=False):
            if old is not new:
                break
            same += 1
        texts = texts[:same] + [_dumps(step_to_dict(s)) for s in plan[same:]]
        self._steps, self._step_texts = list(plan), texts
        return texts

    def _hosts_text(self, state: RolloutState) -> list[str]:
        tracks = list(state.hosts.values())
        prints = list(map(_host_fingerprint, tracks))
        texts = self._hosts[: len(prints)]
        texts.extend([""] * (len(prints) - len(texts)))
        common = min(len(prints), len(self._prints))
        changed = compress(range(common), map(operator.ne, prints, self._prints))
        for i in changed:
            texts[i] = _dumps(tracks[i].to_dict())
        for i in range(common, len(prints)):
            texts[i] = _dumps(tracks[i].to_dict())
        self._prints, self._hosts = prints, texts
        return texts


def _shift_from(raw: dict[str, Any] | None) -> Shift | None:
    if raw is None:
        return None
    step = step_from_dict(raw)
    assert isinstance(step, Shift)
    return step
