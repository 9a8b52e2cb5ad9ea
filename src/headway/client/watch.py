"""Follow one rollout to its end by polling the API (used by ``--wait`` and the demo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from headway.api_models import RolloutOut
from headway.client.api import ApiClient
from headway.clock import Clock, SystemClock
from headway.domain.models import Event, HostView
from headway.errors import HeadwayError


@dataclass(frozen=True)
class RolloutSnapshot:
    """What a watcher knows after one poll."""

    rollout: RolloutOut
    hosts: list[HostView]
    new_events: list[Event] = field(default_factory=list)
    events_seen: int = 0
    elapsed: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.rollout.rollout.status.terminal


def watch_rollout(
    client: ApiClient,
    rollout_id: str,
    *,
    on_update: Callable[[RolloutSnapshot], None] = lambda _: None,
    clock: Clock | None = None,
    interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutSnapshot:
    """Poll until the rollout is terminal; call ``on_update`` after every poll.

    Raises `HeadwayError` when ``timeout`` seconds pass first (the rollout
    itself goes on on the server).
    """
    clock = clock or SystemClock()
    started = clock.monotonic()
    cursor = 0
    seen = 0
    while True:
        rollout = client.get_rollout(rollout_id)
        hosts = client.list_hosts(service=rollout.rollout.service)
        new_events: list[Event] = []
        for event in client.iter_events(rollout=rollout_id, after=cursor):
            new_events.append(event)
            cursor = max(cursor, event.id)
        seen += len(new_events)
        snapshot = RolloutSnapshot(
            rollout=rollout,
            hosts=hosts,
            new_events=new_events,
            events_seen=seen,
            elapsed=clock.monotonic() - started,
        )
        on_update(snapshot)
        if snapshot.terminal:
            return snapshot
        if timeout is not None and snapshot.elapsed >= timeout:
            summary = rollout.rollout
            raise HeadwayError(
                f"rollout {rollout_id} is still {summary.status.value} after {timeout:g}s "
                f"(step {summary.step}/{summary.steps}, {summary.hosts_done}/"
                f"{summary.hosts_total} hosts done)",
                hint=f"it goes on on the server; follow it with `headway rollout status "
                f"{rollout_id} --wait`",
            )
        sleep(interval)
