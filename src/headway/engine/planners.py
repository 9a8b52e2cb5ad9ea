"""Strategies compiled into plans. Pure functions of the strategy and the hosts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headway.domain.durations import Budget
from headway.domain.models import HostView
from headway.domain.spec import (
    BlueGreenStrategy,
    CanaryStrategy,
    RollingStrategy,
    Strategy,
)
from headway.domain.verification import VerificationSpec
from headway.engine.plan import Batch, Pause, Shift, Step, Verify
from headway.errors import SpecError

WEIGHT_SCALE = 100


@dataclass(frozen=True)
class CompiledPlan:
    steps: list[Step]
    max_unavailable: int
    shift_back: Shift | None = None  # blue-green: how a rollback puts traffic back at once
    live_pool: str | None = None  # blue-green: the pool that serves once the rollout succeeds


def compile_plan(
    strategy: Strategy,
    hosts: Sequence[HostView],
    *,
    live_pool: str | None = None,
    verification: VerificationSpec | None = None,
) -> CompiledPlan:
    plan = _compile(strategy, hosts, live_pool)
    if verification is None or not verification.after_each_step:
        return plan
    approval = any(g.approval is not None for g in verification.gates)
    return CompiledPlan(
        with_verification(plan.steps, approval), plan.max_unavailable, plan.shift_back, plan.live_pool
    )


def with_verification(steps: list[Step], approval: bool) -> list[Step]:
    """A `Verify` after every batch or partial shift that leaves a baseline to compare with.

    The last batch of hosts has no baseline left (every host is on the new
    release), so it is verified by the hosts' own health; a blue-green idle pool
    takes no traffic yet, so only synthetic tests run before traffic shifts.
    """
    out: list[Step] = []
    last_batch = max((i for i, s in enumerate(steps) if isinstance(s, Batch)), default=-1)
    for i, step in enumerate(steps):
        out.append(step)
        if isinstance(step, Batch) and not step.traffic:
            out.append(Verify(comparative=False, approval=approval))
        elif (isinstance(step, Batch) and i != last_batch) or (isinstance(step, Shift) and step.share < 100):
            out.append(Verify(comparative=True, approval=approval))
    return out


def _compile(strategy: Strategy, hosts: Sequence[HostView], live_pool: str | None) -> CompiledPlan:
    names = sorted(h.name for h in hosts)
    if not names:
        raise SpecError(
            "the service has no hosts to roll out to",
            hint="start agents with a label matching the service's selector, then retry",
        )
    budget = resolve_max_unavailable(strategy.unavailable_budget, len(names))
    if isinstance(strategy, RollingStrategy):
        return CompiledPlan(plan_rolling(strategy, names), budget)
    if isinstance(strategy, CanaryStrategy):
        return CompiledPlan(plan_canary(strategy, names), budget)
    return plan_blue_green(strategy, hosts, live_pool, budget)


def plan_rolling(strategy: RollingStrategy, hosts: Sequence[str]) -> list[Step]:
    """Consecutive batches of ``batch_size`` hosts, in the order given.

    >>> from headway.domain.spec import RollingStrategy
    >>> [len(s.hosts) for s in plan_rolling(RollingStrategy(batch_size="30%"), list("abcdefghij"))]
    [3, 3, 3, 1]
    """
    size = max(1, strategy.batch_size.resolve(len(hosts), round_up=True))
    return [Batch(tuple(hosts[i : i + size])) for i in range(0, len(hosts), size)]


def plan_canary(strategy: CanaryStrategy, hosts: Sequence[str]) -> list[Step]:
    """Cumulative steps become batches of the hosts each step adds; 100% closes the plan.

    >>> from headway.domain.spec import CanaryStrategy
    >>> s = CanaryStrategy(steps=[{"hosts": "5%"}, {"pause": "promote"}, {"hosts": "50%"}])
    >>> [(type(p).__name__, len(getattr(p, "hosts", ()))) for p in plan_canary(s, list(range(20)))]
    [('Batch', 1), ('Pause', 0), ('Batch', 9), ('Batch', 10)]
    """
    steps: list[Step] = []
    placed = 0
    for step in strategy.steps:
        if step.hosts is None:
            steps.append(Pause(step.pause))
            continue
        reach = max(1, step.hosts.resolve(len(hosts), round_up=True))
        if reach > placed:
            steps.append(Batch(tuple(hosts[placed:reach])))
            placed = reach
    if placed < len(hosts):
        steps.append(Batch(tuple(hosts[placed:])))
    return steps


def plan_blue_green(
    strategy: BlueGreenStrategy,
    hosts: Sequence[HostView],
    live_pool: str | None,
    max_unavailable: int,
) -> CompiledPlan:
    """Upgrade the idle pool away from traffic, shift traffic to it, keep the old pool a while.

    Weights give the idle pool ``share`` percent of requests, whatever the pools' sizes:
    each new host gets ``share * len(old)`` and each old host ``(100 - share) * len(new)``,
    scaled into the balancer's 1..256 range.
    """
    label = strategy.pool_label
    live = live_pool or strategy.pools[0]
    if live not in strategy.pools:
        live = strategy.pools[0]
    idle = strategy.pools[1] if live == strategy.pools[0] else strategy.pools[0]
    old = sorted(h.name for h in hosts if h.labels.get(label) == live)
    new = sorted(h.name for h in hosts if h.labels.get(label) == idle)
    if not old or not new:
        raise SpecError(
            f"blue-green needs hosts in both pools; found {len(old)} in {live!r} (live) and "
            f"{len(new)} in {idle!r} (idle)",
            hint=f"label hosts {label}={strategy.pools[0]} and {label}={strategy.pools[1]}",
        )
    steps: list[Step] = [Batch(tuple(new), traffic=False)]
    for i, share in enumerate(strategy.shift):
        if i and strategy.pause != 0:
            steps.append(Pause(strategy.pause))
        steps.append(_shift(new, old, share))
    steps.append(Pause(strategy.rollback_window))
    back = Shift(tuple((h, WEIGHT_SCALE) for h in old), tuple(new), share=100)
    return CompiledPlan(steps, max(max_unavailable, len(new)), back, idle)


def _shift(new: list[str], old: list[str], share: Budget) -> Shift:
    if share.value >= 100:
        return Shift(tuple((h, WEIGHT_SCALE) for h in new), tuple(old), share=100)
    w_new = share.value * len(old)
    w_old = (100 - share.value) * len(new)
    scale = 256 / max(w_new, w_old)
    w_new, w_old = max(1, round(w_new * scale)), max(1, round(w_old * scale))
    admit = tuple((h, w_new) for h in new) + tuple((h, w_old) for h in old)
    return Shift(admit, (), share=share.value)


def resolve_max_unavailable(budget: Budget, total: int) -> int:
    """Hosts that may be out of service at once; rounds down, but never below 1.

    An in-place upgrade has no surge, so 0 would make no progress:

    >>> resolve_max_unavailable(Budget.parse("25%"), 10)
    2
    >>> resolve_max_unavailable(Budget.parse("25%"), 3)   # floor(0.75) -> 1
    1
    """
    return max(1, budget.resolve(total, round_up=False))
