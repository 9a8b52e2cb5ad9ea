"""Reading what each page shows: store reads run in a worker thread, runner reads on the
event loop (the runner changes its in-memory states there). Only the leader's runner holds
the live rollouts; the other servers show them from the store (`stored.StoredRollouts`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from headway.domain.models import Event, Health, Release, RolloutSummary
from headway.domain.spec import ServiceSpec
from headway.engine import machine
from headway.engine.state import RolloutState
from headway.server.context import ServerContext
from headway.server.ui import reads
from headway.server.ui.stored import StoredRollouts, with_starter
from headway.server.ui.views import GateView, RolloutView, gate_views, rollout_view

TIMELINE = 300  # newest events shown on the rollout page (older ones: the events API)


@dataclass(frozen=True)
class ServicePage:
    spec: ServiceSpec
    current: int | None
    releases: list[Release]  # newest first
    rollouts: list[RolloutSummary]  # newest first
    active: RolloutSummary | None
    hosts: int
    health: list[tuple[str, int]]
    disconnected: int
    by_release: list[tuple[int, int]]  # (release, hosts running it)


def _service_page(ctx: ServerContext, name: str) -> ServicePage:
    with ctx.store.tx() as tx:
        spec = tx.get_service(name)
        current = tx.service_current_release(name)
        releases = tx.list_releases(name)
        rollouts = [with_starter(tx, r) for r in tx.list_rollouts(name, limit=50)]
        active = tx.active_rollout(name)
        rows = reads.host_rows(tx, name)
    health = Counter(r.health for r in rows if r.connected)
    by_release = Counter(r.observed_release or 0 for r in rows)
    return ServicePage(
        spec=spec,
        current=current,
        releases=sorted(releases, key=lambda r: -r.number),
        rollouts=rollouts,
        active=active[0] if active else None,
        hosts=len(rows),
        health=[(h.value, health.get(h.value, 0)) for h in Health if health.get(h.value)],
        disconnected=sum(1 for r in rows if not r.connected),
        by_release=sorted(by_release.items()),
    )


async def service_page(ctx: ServerContext, name: str) -> ServicePage:
    return await asyncio.to_thread(_service_page, ctx, name)


async def service_fingerprint(ctx: ServerContext, name: str) -> tuple[Any, ...]:
    """Changes whenever the service page would show something different."""

    def read() -> tuple[Any, ...]:
        with ctx.store.tx() as tx:
            latest = tx.list_rollouts(name, limit=1)
            current = tx.service_current_release(name)
            releases = len(tx.list_releases(name))
        return (current, releases, [(r.id, r.status, r.step, r.hosts_done, r.hosts_failed) for r in latest])

    return await asyncio.to_thread(read)


@dataclass(frozen=True)
class RolloutPage:
    view: RolloutView
    events: list[Event]
    gates: list[GateView]
    verdicts: list[Event]


def summary_of(state: RolloutState, stored: RolloutSummary) -> RolloutSummary:
    """The stored summary brought up to the runner's in-memory state."""
    counts = machine.progress(state)
    return stored.model_copy(
        update={
            "status": state.phase,
            "reason": state.reason or state.blocked,
            "step": counts["step"],
            "steps": counts["steps"],
            "hosts_total": counts["hosts_total"],
            "hosts_done": counts["hosts_done"],
            "hosts_failed": counts["hosts_failed"],
        }
    )


Loaded = tuple[RolloutSummary, RolloutState | None]


def _load_rollout(ctx: ServerContext, rollout_id: str, parse: bool) -> Loaded:
    with ctx.store.tx() as tx:
        summary, raw = tx.get_rollout(rollout_id)
        summary = with_starter(tx, summary)
    if not parse:
        return summary, None
    try:
        return summary, RolloutState.from_dict(raw)
    except Exception:  # unreadable stored state: the page shows the summary only
        return summary, None


def _read_stored(ctx: ServerContext, rollouts: StoredRollouts, rollout_id: str) -> Loaded:
    with ctx.store.tx() as tx:
        entry = rollouts.one(tx, rollout_id)
    return entry.summary, entry.state


async def rollout_view_now(
    ctx: ServerContext,
    rollout_id: str,
    stored: Loaded | None = None,
    rollouts: StoredRollouts | None = None,
) -> tuple[RolloutView, Loaded]:
    """The rollout's view from the runner's live state, else from the store (``stored``
    caches a finished rollout's parsed state: it no longer changes).

    On a server that does not lead, every rollout comes from the store, through
    ``rollouts`` (which parses a state again only when it changed); an active one shows
    as live, as on the leader."""
    if not ctx.runner.leading and rollouts is not None:
        summary, state = await asyncio.to_thread(_read_stored, ctx, rollouts, rollout_id)
        active = not summary.status.terminal
        view = rollout_view(summary, state, active and state is not None, ctx.clock.now())
        # kept for the next call only once finished: should this server lead by then, an
        # active rollout's stored state would be stale (the leader path reloads on None)
        return view, (summary, None if active else state)
    live = ctx.runner.state_of(rollout_id)
    if live is not None:
        if stored is None:
            stored = await asyncio.to_thread(_load_rollout, ctx, rollout_id, False)
        summary = stored[0]
        return rollout_view(summary_of(live, summary), live, True, ctx.clock.now()), (summary, None)
    if stored is None or stored[1] is None:
        stored = await asyncio.to_thread(_load_rollout, ctx, rollout_id, True)
    summary, state = stored
    return rollout_view(summary, state, False, ctx.clock.now()), stored


def _events_and_gates(ctx: ServerContext, rollout_id: str) -> tuple[list[Event], list[GateView]]:
    with ctx.store.tx() as tx:
        events = reads.latest_events(tx, rollout_id, TIMELINE)
        gates = reads.gate_records(tx, rollout_id)
    return events, gate_views(gates)


async def rollout_page(
    ctx: ServerContext, rollout_id: str, rollouts: StoredRollouts | None = None
) -> RolloutPage:
    view, _ = await rollout_view_now(ctx, rollout_id, rollouts=rollouts)
    events, gates = await asyncio.to_thread(_events_and_gates, ctx, rollout_id)
    verdicts = [e for e in events if e.kind.startswith(("gate.", "verify."))]
    return RolloutPage(view, events, gates, verdicts)


async def new_events(ctx: ServerContext, rollout_id: str, after: int) -> list[Event]:
    def read() -> list[Event]:
        with ctx.store.tx() as tx:
            return tx.list_events(rollout_id=rollout_id, after=after, limit=500)

    return await asyncio.to_thread(read)


async def gates_of(ctx: ServerContext, rollout_id: str) -> list[GateView]:
    def read() -> list[GateView]:
        with ctx.store.tx() as tx:
            return gate_views(reads.gate_records(tx, rollout_id))

    return await asyncio.to_thread(read)
