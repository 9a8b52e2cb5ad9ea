"""The web UI on a server that does not lead: rollouts come from the store, parsed again
only when their ``updated_at`` moves (and at most every `stored.REFRESH` seconds while it
keeps moving); a new status shows at once. (The same with two real servers on
PostgreSQL: tests/ha/test_ha_ui.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from headway.clock import ManualClock
from headway.domain.models import RolloutStatus, RolloutSummary
from headway.engine.plan import Batch
from headway.engine.state import HostPhase, HostTrack, Policy, RolloutState
from headway.server.ui import pages
from headway.server.ui.fleet import FleetFeed
from headway.server.ui.stored import REFRESH, StoredRollouts
from headway.store import Store

HOSTS = ("h1", "h2", "h3")


def state(phase: RolloutStatus, phases: dict[str, HostPhase]) -> RolloutState:
    out = RolloutState(
        rollout_id="web-v2-s", service="web", from_release=1, to_release=2, strategy="rolling",
        policy=Policy(1, 1.0, 10.0, 0, False), plan=[Batch((h,)) for h in HOSTS], phase=phase,
    )
    for i, name in enumerate(HOSTS):
        out.hosts[name] = HostTrack(name=name, phase=phases.get(name, HostPhase.PENDING), batch=i)
    return out


def save(store: Store, s: RolloutState, updated_at: float, create: bool = False) -> None:
    summary = RolloutSummary(
        id=s.rollout_id, service=s.service, from_release=1, to_release=2, strategy="rolling",
        status=s.phase, created_at=1.0, updated_at=updated_at, created_by="api:ops",
    )
    with store.tx() as tx:
        if create:
            tx.create_rollout(summary, s.to_dict())
        else:
            tx.save_rollout(summary, s.to_dict())


def follower(store: Store, clock: ManualClock) -> Any:
    """A server context whose runner does not lead: it has no rollout in memory."""
    runner = SimpleNamespace(leading=False, by_service={}, state_of=lambda _: None)
    return SimpleNamespace(store=store, clock=clock, runner=runner)


def test_a_follower_shows_stored_rollouts_and_parses_a_state_once_per_change(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    store.migrate()
    with store.tx() as tx:
        for i, name in enumerate(HOSTS, start=1):
            tx.upsert_host(name, "web", f"127.0.0.{i}", {}, 1.0)
    save(store, state(RolloutStatus.RUNNING, {"h1": HostPhase.UPDATING}), 10.0, create=True)
    clock = ManualClock()
    ctx = follower(store, clock)
    rollouts = StoredRollouts(clock)

    async def scenario() -> None:
        feed = FleetFeed(ctx, rollouts=rollouts)
        await feed.poll()
        snap = json.loads(feed.messages_since(None)[0])
        web = snap["services"][0]
        assert (web["rollout"], web["status"], web["from"], web["to"]) == ("web-v2-s", "running", 1, 2)
        assert [snap["phases"][p] for p in snap["hosts"]["p"]] == ["updating", "pending", "pending"]
        first = feed.version
        for _ in range(5):
            await feed.poll()
        assert feed.version == first and rollouts.reads == 1  # unchanged: not read again

        view, kept = await pages.rollout_view_now(ctx, "web-v2-s", None, rollouts)
        assert view.live and view.summary.status is RolloutStatus.RUNNING and kept[1] is None
        assert view.summary.created_by == "api:ops"
        assert {a.name for a in view.actions if a.enabled} == {"pause", "promote", "abort", "rollback"}
        assert rollouts.reads == 1  # the page shares the feed's parsed state

        # the leader moves on: seen after REFRESH at the latest, parsed once
        save(store, state(RolloutStatus.RUNNING, {"h1": HostPhase.DONE, "h2": HostPhase.UPDATING}), 11.0)
        await feed.poll()
        assert feed.version == first and rollouts.reads == 1
        clock.advance(REFRESH)
        await feed.poll()
        await feed.poll()
        assert rollouts.reads == 2
        [change] = [json.loads(m) for m in feed.messages_since(first)]
        assert change["type"] == "delta" and [row[5] for row in change["ch"]] == [
            snap["phases"].index("done"), snap["phases"].index("updating")
        ]

        # a new status shows at once, and a finished rollout leaves the fleet view
        paused = state(RolloutStatus.PAUSED, {"h1": HostPhase.DONE, "h2": HostPhase.UPDATING})
        save(store, paused, 12.0)
        await feed.poll()
        assert json.loads(feed.messages_since(feed.version - 1)[0])["services"][0]["status"] == "paused"
        save(store, state(RolloutStatus.ABORTED, {"h1": HostPhase.REVERTED}), 13.0)
        await feed.poll()
        web = json.loads(feed.messages_since(feed.version - 1)[0])["services"][0]
        assert (web["rollout"], web["status"]) == (None, None)
        view, kept = await pages.rollout_view_now(ctx, "web-v2-s", kept, rollouts)
        assert not view.live and view.summary.status is RolloutStatus.ABORTED
        assert kept[1] is not None and kept[1].phase is RolloutStatus.ABORTED  # finished: kept
        assert not [a for a in view.actions if a.enabled]

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_an_unreadable_stored_state_shows_its_summary(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'u.db'}")
    store.migrate()
    summary = RolloutSummary(
        id="web-v2-bad", service="web", from_release=1, to_release=2, strategy="rolling",
        status=RolloutStatus.RUNNING, created_at=1.0, updated_at=2.0,
    )
    with store.tx() as tx:
        tx.create_rollout(summary, {"rollout_id": "web-v2-bad", "plan": "not a plan"})
    clock = ManualClock()
    rollouts = StoredRollouts(clock)
    with store.tx() as tx:
        [entry] = rollouts.active(tx)
        assert entry.state is None and entry.summary.id == "web-v2-bad"
        assert rollouts.active(tx)[0] is entry  # not parsed again either

    async def scenario() -> None:
        view, _ = await pages.rollout_view_now(follower(store, clock), "web-v2-bad", None, rollouts)
        assert not view.live and view.summary.status is RolloutStatus.RUNNING and view.steps == ()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
