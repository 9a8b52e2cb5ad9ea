"""The demo: a 10-host local fleet on v1, a rolling upgrade to v2, a summary.

UI-free: the CLI passes callbacks that draw the progress with Rich.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headway.client.api import ApiClient
from headway.client.watch import RolloutSnapshot, watch_rollout
from headway.clock import Clock, SystemClock
from headway.domain.models import Health, RolloutStatus
from headway.fleet.local import (
    DEFAULT_ADDRESS_PREFIX,
    DEFAULT_PORT,
    Fleet,
    Log,
    fleet_down,
    fleet_up,
    publish_sample_release,
)

DEFAULT_DEMO_DIR = Path("state/demo")
DEFAULT_DEMO_HOSTS = 10


@dataclass(frozen=True)
class DemoSummary:
    ok: bool
    status: RolloutStatus
    reason: str
    rollout_id: str
    service: str
    from_release: int | None
    to_release: int
    duration_seconds: float
    hosts_total: int
    hosts_on_target: int
    hosts_healthy_on_target: int
    events: int
    server: str
    token: str
    state_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status.value,
            "reason": self.reason,
            "rollout_id": self.rollout_id,
            "service": self.service,
            "from_release": self.from_release,
            "to_release": self.to_release,
            "duration_seconds": round(self.duration_seconds, 3),
            "hosts_total": self.hosts_total,
            "hosts_on_target": self.hosts_on_target,
            "hosts_healthy_on_target": self.hosts_healthy_on_target,
            "events": self.events,
            "server": self.server,
            "token": self.token,
            "state_dir": str(self.state_dir),
        }


def reset_state_dir(state_dir: Path, log: Log) -> None:
    """Stop whatever an earlier run left in ``state_dir``, then remove it."""
    if state_dir.exists():
        if fleet_down(state_dir, log=log).stopped:
            log(f"stopped a fleet left running in {state_dir}")
        shutil.rmtree(state_dir)


def upgrade(
    fleet: Fleet,
    *,
    on_update: Callable[[RolloutSnapshot], None] = lambda _: None,
    clock: Clock | None = None,
    timeout: float = 600.0,
    log: Log = lambda _: None,
) -> DemoSummary:
    """Publish v2 of the sample app and roll ``fleet`` out to it; the outcome, measured."""
    clock = clock or SystemClock()
    with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
        release = publish_sample_release(
            client, fleet.service, "v2", fleet.state_dir / "artifacts", note="headway demo"
        )
        log(f"created release {release.service} {release.version}; starting the rollout")
        started = clock.monotonic()
        out = client.start_rollout(fleet.service, to=release.version, note="headway demo")
        final = watch_rollout(
            client, out.rollout.id, on_update=on_update, clock=clock, timeout=timeout
        )
        duration = clock.monotonic() - started
        hosts = client.list_hosts(service=fleet.service)
    summary = final.rollout.rollout
    on_target = [h for h in hosts if h.observed_release == release.number]
    healthy = [h for h in on_target if h.health is Health.HEALTHY]
    ok = (
        summary.status is RolloutStatus.SUCCEEDED
        and len(hosts) == len(fleet.hosts)
        and len(healthy) == len(hosts)
    )
    return DemoSummary(
        ok=ok,
        status=summary.status,
        reason=summary.reason,
        rollout_id=summary.id,
        service=fleet.service,
        from_release=summary.from_release,
        to_release=summary.to_release,
        duration_seconds=duration,
        hosts_total=len(hosts),
        hosts_on_target=len(on_target),
        hosts_healthy_on_target=len(healthy),
        events=final.events_seen,
        server=fleet.server,
        token=fleet.token,
        state_dir=fleet.state_dir,
    )


def run_demo(
    state_dir: Path = DEFAULT_DEMO_DIR,
    hosts: int = DEFAULT_DEMO_HOSTS,
    *,
    stay: bool = False,
    port: int = DEFAULT_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    on_update: Callable[[RolloutSnapshot], None] = lambda _: None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = lambda _: None,
) -> DemoSummary:
    """Fresh fleet on v1 -> rollout to v2 -> summary; the fleet is stopped unless ``stay``."""
    state_dir = state_dir.resolve()
    reset_state_dir(state_dir, log)
    fleet = fleet_up(
        state_dir, hosts, port=port, address_prefix=address_prefix, clock=clock, sleep=sleep,
        log=log,
    )
    try:
        return upgrade(fleet, on_update=on_update, clock=clock, log=log)
    finally:
        if not stay:
            log("stopping the fleet")
            fleet_down(state_dir, clock=clock, sleep=sleep)
