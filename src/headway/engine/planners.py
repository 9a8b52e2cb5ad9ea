"""Strategies compiled into plans. Pure functions of the strategy and the host list."""

from __future__ import annotations

from collections.abc import Sequence

from headway.domain.spec import RollingStrategy
from headway.engine.plan import Batch, Step
from headway.errors import SpecError


def plan_rolling(strategy: RollingStrategy, hosts: Sequence[str]) -> list[Step]:
    """Consecutive batches of ``batch_size`` hosts, in the order given.

    >>> from headway.domain.spec import RollingStrategy
    >>> [len(s.hosts) for s in plan_rolling(RollingStrategy(batch_size="30%"), list("abcdefghij"))]
    [3, 3, 3, 1]
    """
    if not hosts:
        raise SpecError(
            "the service has no hosts to roll out to",
            hint="start agents with a label matching the service's selector, then retry",
        )
    size = max(1, strategy.batch_size.resolve(len(hosts), round_up=True))
    return [Batch(tuple(hosts[i : i + size])) for i in range(0, len(hosts), size)]


def resolve_max_unavailable(strategy: RollingStrategy, total: int) -> int:
    """Hosts that may be out of service at once; rounds down, but never below 1.

    An in-place rolling upgrade has no surge, so 0 would make no progress:

    >>> from headway.domain.spec import RollingStrategy
    >>> resolve_max_unavailable(RollingStrategy(max_unavailable="25%"), 10)
    2
    >>> resolve_max_unavailable(RollingStrategy(max_unavailable="25%"), 3)   # floor(0.75) -> 1
    1
    """
    return max(1, strategy.unavailable_budget.resolve(total, round_up=False))
