"""Carries out the engine's traffic actions at the load balancer, and keeps idle hosts right.

`TrafficDriver.start` runs one drain, admit or weight change as a task and
hands its outcome back to the runner as a request, so the engine decides
what follows (a host is switched only after its drain is confirmed or timed
out). Tasks are keyed by action id: an action re-executed after a restart
while its task still runs is not run twice.

`TrafficDriver.reconcile` is level-triggered like the agents: for hosts no
rollout is handling, it registers them at the balancer and admits those
that are healthy on the service's release (and in the live pool of a
blue-green service); it never drains a host.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headway.clock import Clock
from headway.domain.models import Health, HostView
from headway.domain.spec import BalancerKind, ServiceSpec
from headway.errors import HeadwayError
from headway.server.readiness import StoreServeFlags
from headway.traffic import HAProxyBackend, ServerState, TrafficBackend, admit, drain

log = logging.getLogger("headway.traffic")


@dataclass(frozen=True)
class TrafficOutcome:
    rollout_id: str
    action_id: str
    host: str
    kind: str  # drain | admit | weight
    ok: bool
    detail: str
    waited: float = 0.0


class TrafficDriver:
    def __init__(
        self,
        report: Callable[[TrafficOutcome], None],
        clock: Clock,
        rng: random.Random,
        serve_flags: StoreServeFlags | None = None,
    ) -> None:
        self._report = report
        self._clock = clock
        self._rng = rng
        self.serve_flags = serve_flags  # for readiness balancers; the runner sets it
        self._backends: dict[str, tuple[str, TrafficBackend]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def backend_for(self, spec: ServiceSpec) -> TrafficBackend | None:
        traffic = spec.traffic
        if traffic.balancer is BalancerKind.READINESS:
            if traffic.readiness is None or self.serve_flags is None:
                return None
            key = f"readiness|{traffic.readiness.model_dump_json()}"
            cached = self._backends.get(spec.name)
            if cached is None or cached[0] != key:
                readiness = self.serve_flags.backend(spec.name, traffic.readiness)
                self._backends[spec.name] = (key, readiness)
                return readiness
            return cached[1]
        if traffic.balancer is not BalancerKind.HAPROXY or traffic.haproxy is None:
            return None
        key = f"{traffic.haproxy.socket}|{traffic.haproxy.backend}"
        cached = self._backends.get(spec.name)
        if cached is None or cached[0] != key:
            backend = HAProxyBackend(Path(traffic.haproxy.socket), traffic.haproxy.backend, rng=self._rng)
            self._backends[spec.name] = (key, backend)
            return backend
        return cached[1]

    def start(
        self,
        *,
        rollout_id: str,
        action_id: str,
        kind: str,
        spec: ServiceSpec,
        host: HostView,
        weight: int | None = None,
    ) -> None:
        running = self._tasks.get(action_id)
        if running is not None and not running.done():
            return
        self._tasks[action_id] = asyncio.create_task(
            self._run(rollout_id, action_id, kind, spec, host, weight),
            name=f"traffic-{action_id}",
        )

    async def _run(
        self,
        rollout_id: str,
        action_id: str,
        kind: str,
        spec: ServiceSpec,
        host: HostView,
        weight: int | None,
    ) -> None:
        started = self._clock.monotonic()
        backend = self.backend_for(spec)
        try:
            if backend is None:
                outcome = TrafficOutcome(rollout_id, action_id, host.name, kind, True, "no balancer")
            elif kind == "drain":
                await backend.register(host.name, host.address, spec.port, admitted=False)
                result = await drain(
                    backend, host.name, timeout=spec.drain_timeout, clock=self._clock, rng=self._rng
                )
                outcome = TrafficOutcome(
                    rollout_id,
                    action_id,
                    host.name,
                    kind,
                    result.confirmed,
                    result.detail,
                    result.waited,
                )
            elif kind == "admit":
                await backend.register(host.name, host.address, spec.port, admitted=False)
                if weight is not None:
                    await backend.set_weight(host.name, weight)
                # only once the balancer sends it traffic (its health check passed): the engine
                # may take another host out on this answer (a blue-green shift drains the old
                # pool), and a READY server HAProxy still holds DOWN serves nothing
                await admit(backend, host.name, clock=self._clock, rng=self._rng, until_serving=True)
                outcome = TrafficOutcome(rollout_id, action_id, host.name, kind, True, "admitted")
            else:
                assert weight is not None
                await backend.set_weight(host.name, weight)
                outcome = TrafficOutcome(rollout_id, action_id, host.name, kind, True, f"weight {weight}")
        except HeadwayError as error:
            outcome = TrafficOutcome(rollout_id, action_id, host.name, kind, False, str(error))
        except Exception as error:  # never lose the answer: the engine waits for it
            log.exception("traffic action %s failed", action_id)
            outcome = TrafficOutcome(rollout_id, action_id, host.name, kind, False, repr(error))
        finally:
            self._tasks.pop(action_id, None)
        outcome = TrafficOutcome(**{**outcome.__dict__, "waited": self._clock.monotonic() - started})
        self._report(outcome)

    async def reconcile(
        self, spec: ServiceSpec, hosts: list[HostView], live_pool: str | None, busy: set[str]
    ) -> dict[str, float]:
        """Register hosts and admit the idle healthy ones; the balancer's session totals."""
        backend = self.backend_for(spec)
        if backend is None:
            return {}
        try:
            stats = await backend.stats()
            for host in hosts:
                if host.name in busy:
                    continue
                serve = _should_serve(spec, host, live_pool)
                current = stats.get(host.name)
                if current is None:
                    await backend.register(host.name, host.address, spec.port, admitted=serve)
                elif serve and current.admin_state is not ServerState.READY:
                    await backend.set_state(host.name, ServerState.READY)
                elif (
                    not serve
                    and live_pool is not None
                    and host.labels.get(_pool_label(spec)) != live_pool
                    and current.admin_state is not ServerState.MAINT
                    and current.current_sessions == 0
                ):
                    await backend.set_state(host.name, ServerState.MAINT)
        except HeadwayError as error:
            log.warning("load balancer of %s: %s", spec.name, error)
            return {}
        return {name: float(s.total_sessions) for name, s in stats.items()}


def _pool_label(spec: ServiceSpec) -> str:
    return str(getattr(spec.strategy, "pool_label", "pool"))


def _should_serve(spec: ServiceSpec, host: HostView, live_pool: str | None) -> bool:
    if not (host.connected and host.health is Health.HEALTHY):
        return False
    if host.desired_release != host.observed_release:
        return False
    if live_pool is not None:
        return host.labels.get(_pool_label(spec)) == live_pool
    return True
