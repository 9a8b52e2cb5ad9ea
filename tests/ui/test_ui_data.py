"""The web UI's data, without a browser: CSRF and audit names, the fleet snapshot and its deltas, the
rollout page's view of steps, traffic and gates."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from headway.domain.models import Health, RolloutStatus, RolloutSummary
from headway.engine.plan import Batch, Pause, Shift, Step, Verify
from headway.engine.state import HostPhase, HostTrack, Policy, RolloutState
from headway.server.ui import sessions as s
from headway.server.ui.fleet import FleetFeed, RolloutBrief, build_snapshot, delta, patch_snapshot
from headway.server.ui.reads import HostRow, gate_records, host_rows, latest_events
from headway.server.ui.views import chart, gate_views, rollout_view, series_of
from headway.store import NewEvent, Store

# ---------------------------------------------------------------- sessions


def test_csrf_and_actor_names() -> None:
    session = s.Session("k", "ui:a", "a-csrf-token", 0.0, 0.0)
    assert s.csrf_ok(session, session.csrf)
    assert not s.csrf_ok(session, "") and not s.csrf_ok(session, None)
    assert not s.csrf_ok(session, session.csrf + "x")
    assert s.actor_name("  Grace Hopper ") == "ui:Grace-Hopper"
    assert s.actor_name("<script>") == "ui:script"
    assert s.actor_name("x" * 100) == "ui:" + "x" * 32


# ---------------------------------------------------------- fleet snapshot


def row(
    name: str, service: str = "web", release: int | None = 1, health: str = "healthy", **labels: str
) -> HostRow:
    return HostRow(name, service, f"127.0.0.{name[-1]}", json.dumps(labels), release, release, health, True)


def test_snapshot_groups_hosts_by_service_zone_and_pool() -> None:
    rows = [
        row("a1", pool="green", zone="z1"),
        row("a2", pool="blue", zone="z1"),
        row("a3", pool="blue", zone="z1"),
        row("b1", service="api", release=None, health="unknown"),
    ]
    brief = RolloutBrief("web-v2-x", "running", 1, 2, {"a2": "updating", "a3": "pending"})
    snap = build_snapshot(3, rows, [("web", 1), ("api", None), ("idle", None)], {"web": brief})
    data = snap.as_json()
    assert data["hosts"]["n"] == ["b1", "a2", "a3", "a1"]
    assert [(g["service"], g["label"], g["start"], g["count"]) for g in data["groups"]] == [
        (0, "", 0, 1),
        (2, "zone=z1 · pool=blue", 1, 2),
        (2, "zone=z1 · pool=green", 3, 1),
    ]
    assert [sv["name"] for sv in data["services"]] == ["api", "idle", "web"]
    web = data["services"][2]
    assert (web["rollout"], web["status"], web["from"], web["to"], web["hosts"], web["healthy"]) == (
        "web-v2-x", "running", 1, 2, 3, 3,
    )
    phases = [data["phases"][p] for p in data["hosts"]["p"]]
    assert phases == ["", "updating", "pending", ""]
    assert [data["health"][h] for h in data["hosts"]["h"]] == ["unknown", "healthy", "healthy", "healthy"]
    assert data["hosts"]["r"] == [0, 1, 1, 1]


def test_a_delta_carries_only_what_changed_and_a_new_host_needs_a_snapshot() -> None:
    rows = [row(f"h{i}") for i in range(1, 6)]
    old = build_snapshot(1, rows, [("web", 1)], {})
    assert delta(old, build_snapshot(2, rows, [("web", 1)], {})) is None  # nothing changed
    changed = [*rows]
    changed[2] = HostRow("h3", "web", "127.0.0.3", "{}", 2, 2, "starting", True)
    new = build_snapshot(2, changed, [("web", 1)], {})
    message = delta(old, new)
    assert message is not None
    assert (message["type"], message["v"], message["base"]) == ("delta", 2, 1)
    assert message["ch"] == [[2, 2, 2, 1, 1, 0]]  # index, release, desired, health, connected, phase
    assert delta(old, build_snapshot(2, [*rows, row("h6")], [("web", 1)], {})) is None


def test_the_feed_sends_missed_deltas_or_a_snapshot(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    store.migrate()
    with store.tx() as tx:
        for i in range(1, 4):
            tx.upsert_host(f"h{i}", "web", f"127.0.0.{i}", {}, 1.0)
    runner = SimpleNamespace(leading=True, by_service={}, state_of=lambda _: None)
    ctx: Any = SimpleNamespace(store=store, runner=runner)

    async def scenario() -> None:
        feed = FleetFeed(ctx)
        await feed.poll()
        first = feed.version
        snapshot = json.loads(feed.messages_since(None)[0])
        assert snapshot["type"] == "snapshot" and snapshot["hosts"]["n"] == ["h1", "h2", "h3"]
        assert feed.messages_since(first) == []
        await feed.poll()
        assert feed.version == first  # nothing changed, no new version
        for health in (Health.STARTING, Health.HEALTHY):
            with store.tx() as tx:
                tx.record_observation("h2", 1, 1, health, "", 2.0)
            await feed.poll()
        missed = [json.loads(m) for m in feed.messages_since(first)]
        assert [(m["type"], m["base"], m["ch"]) for m in missed] == [
            ("delta", first, [[1, 1, 0, 1, 1, 0]]),
            ("delta", first + 1, [[1, 1, 0, 2, 1, 0]]),
        ]
        with store.tx() as tx:
            tx.upsert_host("h4", "web", "127.0.0.4", {}, 3.0)
        await feed.poll()
        assert [json.loads(m)["type"] for m in feed.messages_since(first)] == ["snapshot"]
        store.close()

    asyncio.run(scenario())


def test_store_projections(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    store.migrate()
    with store.tx() as tx:
        tx.upsert_host("h1", "web", "127.0.0.1", {"pool": "blue"}, 1.0)
        tx.upsert_host("h2", "api", "127.0.0.2", {}, 1.0)
        tx.append_events([NewEvent(ts=i, kind="k", message=str(i), rollout_id="r1") for i in range(10)])
        tx.set_meta("gate:r1:r1:10:errors", json.dumps({"gate": "errors", "verdict": "pass"}))
        tx.set_meta("gate:r1:r1:9:latency", "not json")
        tx.set_meta("gate:r10:r10:1:errors", json.dumps({"gate": "other rollout"}))
        tx.set_meta("gate:r_:x:1:e", json.dumps({"gate": "a LIKE wildcard must not match r1"}))
    with store.tx() as tx:
        assert [(h.name, h.service, json.loads(h.labels)) for h in host_rows(tx)] == [
            ("h2", "api", {}), ("h1", "web", {"pool": "blue"})
        ]
        assert [h.name for h in host_rows(tx, "web")] == ["h1"]
        assert [e.message for e in latest_events(tx, "r1", 3)] == ["7", "8", "9"]
        assert gate_records(tx, "r1") == [("r1:10", {"gate": "errors", "verdict": "pass"})]
    store.close()


# ------------------------------------------------------------- rollout view


def state_with(phase: RolloutStatus = RolloutStatus.RUNNING, step_index: int = 1) -> RolloutState:
    plan: list[Step] = [Batch(("h1",)), Verify(), Pause(None), Batch(("h2", "h3", "h4"))]
    state = RolloutState(
        rollout_id="web-v2-x", service="web", from_release=1, to_release=2, strategy="canary",
        policy=Policy(1, 1.0, 10.0, 0, True), plan=plan, phase=phase, step_index=step_index,
        traffic=True, analysis_pending="web-v2-x:7",
    )
    phases = {"h1": HostPhase.DONE, "h2": HostPhase.DRAINING, "h3": HostPhase.FAILED, "h4": HostPhase.PENDING}
    for name, host_phase in phases.items():
        batch = 0 if name == "h1" else 3
        release = 2 if name == "h1" else 1
        state.hosts[name] = HostTrack(
            name=name, phase=host_phase, batch=batch, observed_release=release,
            admitted=name in ("h1", "h4"), health=Health.HEALTHY, connected=True,
            detail="boom" if name == "h3" else "",
        )
    return state


def summary(status: RolloutStatus = RolloutStatus.RUNNING) -> RolloutSummary:
    return RolloutSummary(
        id="web-v2-x", service="web", from_release=1, to_release=2, strategy="canary",
        status=status, created_at=1.0, updated_at=2.0,
    )


def test_rollout_view_steps_traffic_and_actions() -> None:
    view = rollout_view(summary(), state_with(), True, 10.0)
    assert [(st.kind, st.state) for st in view.steps] == [
        ("batch", "done"), ("verify", "current"), ("pause", "pending"), ("batch", "pending"),
    ]
    assert view.steps[1].note == "gates observing live traffic"
    last = view.steps[3].bar
    assert last is not None and last.total == 3
    assert [(name, n) for name, n, _, _ in last.parts] == [("flight", 1), ("failed", 1), ("pending", 1)]
    assert view.failed_hosts == (("h3", "failed", "boom"),)
    assert view.split is not None
    assert (view.split.new_hosts, view.split.old_hosts, view.split.share) == (1, 1, 50)
    enabled = {a.name for a in view.actions if a.enabled}
    assert enabled == {"pause", "promote", "abort", "rollback"}

    paused = rollout_view(summary(RolloutStatus.PAUSED), state_with(RolloutStatus.PAUSED), True, 10.0)
    assert {a.name for a in paused.actions if a.enabled} == {"resume", "promote", "abort", "rollback"}
    rolled_back = RolloutStatus.ROLLED_BACK
    ended = rollout_view(summary(rolled_back), state_with(rolled_back), False, 10.0)
    assert not [a for a in ended.actions if a.enabled]
    assert [st.state for st in ended.steps] == ["done", "stopped", "pending", "pending"]


def test_a_shift_step_shows_its_planned_share() -> None:
    state = state_with()
    state.plan = [Shift((("h1", 100),), ("h2",), share=50), Pause(30.0)]
    state.pause_until = 25.0
    view = rollout_view(summary(), state, True, 10.0)
    assert view.split is not None and view.split.planned == 50
    assert view.steps[1].note == "15s left"


def test_gate_series_in_any_of_the_documented_shapes() -> None:
    pairs = {"series": {"canary": [[0, 1.0], [10, 2.0]], "baseline": [[0, 1.0], [10, 1.0]]}, "unit": "%"}
    canary, baseline, unit = series_of(pairs)
    assert canary == [(0.0, 1.0), (10.0, 2.0)] and baseline == [(0.0, 1.0), (10.0, 1.0)] and unit == "%"
    plain = {"canary": [3, 4, float("nan"), "x", True], "baseline_series": [{"t": 5, "v": 1}]}
    canary, baseline, _ = series_of(plain)
    assert canary == [(0.0, 3.0), (1.0, 4.0)] and baseline == [(5.0, 1.0)]
    assert series_of({"canary": "no"})[:2] == ([], [])
    drawn = chart([(0, 0.0), (10, 2.0)], [(0, 1.0), (10, 1.0)], width=100, height=50)
    assert drawn is not None
    assert drawn.canary == "0.0,50.0 100.0,0.0" and drawn.baseline == "0.0,25.0 100.0,25.0"
    assert chart([], []) is None


def test_gate_views_newest_verification_first() -> None:
    records = [
        ("r:3", {"gate": "errors", "verdict": "pass", "explanation": "0.1% vs 0.2%", "data": {"p": 0.5}}),
        ("r:12", {"gate": "errors", "verdict": "fail", "explanation": "5%", "data": {"canary": [1, 5]}}),
    ]
    views = gate_views(records)
    assert [(v.action, v.verdict) for v in views] == [("r:12", "fail"), ("r:3", "pass")]
    assert views[0].chart is not None and views[1].chart is None
    assert views[1].figures == (("p", "0.5"),)


def test_a_patched_snapshot_equals_a_rebuilt_one() -> None:
    rows = [row(f"h{i}", pool="blue" if i % 2 else "green") for i in range(1, 7)]
    brief = RolloutBrief("web-v2-x", "running", 1, 2, {"h1": "updating"})
    old = build_snapshot(1, rows, [("web", 1)], {"web": brief})
    rows[3] = HostRow("h4", "web", "127.0.0.4", rows[3].labels, 2, 2, "unhealthy", False)
    later = RolloutBrief("web-v2-x", "running", 1, 2, {"h1": "done", "h4": "updating"})
    change = ("web", "h4", 2, 2, "unhealthy", False)
    patched = patch_snapshot(old, 2, [change], [("web", 1)], {"web": later}, True)
    rebuilt = build_snapshot(2, rows, [("web", 1)], {"web": later})
    assert patched is not None and patched.as_json() == rebuilt.as_json()
    assert patch_snapshot(old, 2, [("web", "h9", 1, 1, "healthy", True)], [("web", 1)], {}, True) is None
    assert patch_snapshot(old, 2, [], [("web", 1), ("new", None)], {}, True) is None
