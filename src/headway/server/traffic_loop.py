"""Keeps the load balancer in line with the fleet between rollouts, and measures load.

Every second, for each service behind a balancer: hosts that no rollout is
handling are registered and, when healthy on their release (and in the live
pool of a blue-green service), admitted; the balancer's session counters
give the service's request rate, which the runner hands to the active
rollout for its capacity guard.
"""

from __future__ import annotations

import asyncio
import logging

from headway.clock import Clock
from headway.domain.spec import BalancerKind, BlueGreenStrategy
from headway.errors import StoreUnavailable
from headway.server.requests import ServiceLoad
from headway.server.runner import Runner, live_pool_key
from headway.server.traffic_driver import TrafficDriver

log = logging.getLogger("headway.traffic")


async def reconcile_forever(
    runner: Runner, driver: TrafficDriver, clock: Clock, interval: float = 1.0
) -> None:
    last: dict[str, tuple[float, float]] = {}
    while True:
        await runner.ready.wait()  # only the leader drives the balancers
        try:
            with runner.store.tx() as tx:
                services = [s for s in tx.list_services() if s.traffic.balancer is BalancerKind.HAPROXY]
                hosts = {s.name: tx.list_hosts(s.name) for s in services}
                pools = {s.name: tx.get_meta(live_pool_key(s.name)) for s in services}
        except StoreUnavailable as error:
            log.warning("traffic reconciler: %s", error)
            await asyncio.sleep(interval)
            continue
        for spec in services:
            live = pools[spec.name]
            if live is None and isinstance(spec.strategy, BlueGreenStrategy):
                live = spec.strategy.pools[0]
            totals = await driver.reconcile(spec, hosts[spec.name], live, runner.busy_hosts(spec.name))
            if not totals:
                continue
            now, total = clock.monotonic(), sum(totals.values())
            previous = last.get(spec.name)
            last[spec.name] = (now, total)
            if previous is not None and now > previous[0]:
                rps = max(0.0, (total - previous[1]) / (now - previous[0]))
                runner.submit(ServiceLoad(spec.name, rps))
        await asyncio.sleep(interval)
