"""Reliability 1, 2 and 4 with several servers on the real PostgreSQL (issue 6).

- SIGKILL the leader at each step boundary of a rollout in turn: another server
  takes over and completes it; no host-level step is lost or repeated; the
  rollout's clock continues.
- SIGSTOP the leader past its lease: another takes over; resumed, the old
  leader follows and writes nothing as leader.
- The database away for a minute: nothing advances, nothing is lost; the
  rollout resumes when it is back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from headway.store import Store
from headway.testing.cluster import (
    Cluster,
    agents_for,
    assert_each_host_changed_once,
    publish,
    run_with_agents,
    start_v2,
    wait_rollout,
)
from headway.testing.pg import fresh_schema
from headway.testing.server_process import ServerProcess
from headway.testing.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

HOSTS = 6
# heartbeat < reconnect_grace: a new leader hears from every agent of a live server in time
TIMING = {"lease_ttl": 2.0, "heartbeat": 1.0, "reconnect_grace": 3.0}


def test_sigkill_the_leader_at_every_step_boundary(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3, **TIMING)
    publish(c, {"batch_size": 1, "min_healthy_time": "3s", "progress_deadline": "60s"})
    agents = agents_for(c, HOSTS, "kill", "127.0.34", restart_time=0.5, heartbeat=1.0)
    kills: list[tuple[int, float]] = []  # (hosts done, seconds to a new leader)
    restarts: list[threading.Thread] = []

    def back(server: ServerProcess) -> None:
        """Start the killed server again (slow: seconds), while the rollout goes on."""
        c.servers[c.servers.index(server)] = server.restart()

    def scenario() -> None:
        first = c.leader()
        follower = next(s for s in c.alive() if s is not first)
        started = start_v2(c, follower, HOSTS)  # through a follower: forwarded to the leader
        rollout_id = started["id"]
        for boundary in (1, 2, 3, 4, 5):  # hosts done: one batch ends at each
            body = wait_rollout(
                c, rollout_id, lambda b, n=boundary: b["hosts_done"] >= n or b["status"] != "running"
            )
            if body["status"] != "running":
                break
            leader = c.leader()
            leader.kill()
            killed_at = time.monotonic()
            c.leader(avoid=leader)
            kills.append((body["hosts_done"], time.monotonic() - killed_at))
            restarts.append(threading.Thread(target=back, args=(leader,)))  # back, as a follower
            restarts[-1].start()
        for thread in restarts:
            thread.join(60)
        ended = wait_rollout(c, rollout_id, lambda b: b["status"] != "running")
        assert ended["status"] == "succeeded", ended
        assert ended["created_at"] == started["created_at"]  # the rollout's clock continued
        assert_each_host_changed_once(c, rollout_id, agents)

    run_with_agents(agents, scenario)
    print(f"kills (hosts done, seconds to a new leader): {kills}")
    assert len(kills) >= 4
    assert all(seconds < TIMING["lease_ttl"] * 2 for _, seconds in kills)


def test_a_leader_paused_past_its_lease_is_replaced_and_then_follows(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2, **TIMING)
    publish(c, {"batch_size": 1, "min_healthy_time": "1s", "progress_deadline": "60s"})
    agents = agents_for(c, HOSTS, "stop", "127.0.35", restart_time=0.3, heartbeat=1.0)
    seen: dict[str, Any] = {}

    def scenario() -> None:
        paused = c.leader()
        started = start_v2(c, paused, HOSTS)
        rollout_id = started["id"]
        wait_rollout(c, rollout_id, lambda b: b["hosts_done"] >= 2)
        with c.api(paused) as api:
            token_before = api.get("/api/v1/cluster").json()["lease"]["token"]
        paused.pause()
        stopped_at = time.monotonic()
        try:
            other = c.leader(avoid=paused)
            seen["takeover"] = time.monotonic() - stopped_at
            with c.api(other) as api:
                lease = api.get("/api/v1/cluster").json()["lease"]
            assert lease["token"] > token_before
            seen["hosts_done_while_paused"] = wait_rollout(
                c, rollout_id, lambda b: b["hosts_done"] >= 3, timeout=30
            )["hosts_done"]
            time.sleep(1.0)
        finally:
            paused.resume()
        deadline = time.monotonic() + 15
        role = ""
        while time.monotonic() < deadline and role != "follower":
            with c.api(paused) as api:
                role = api.get("/api/v1/cluster", timeout=5).json()["role"]
            time.sleep(0.1)
        assert role == "follower"
        ended = wait_rollout(c, rollout_id, lambda b: b["status"] != "running")
        assert ended["status"] == "succeeded", ended
        assert_each_host_changed_once(c, rollout_id, agents)
        assert c.leader() is other  # the new leader's term stands

    run_with_agents(agents, scenario)
    print(f"paused leader replaced after {seen['takeover']:.2f}s (lease {TIMING['lease_ttl']}s)")
    assert TIMING["lease_ttl"] * 0.5 < seen["takeover"] < TIMING["lease_ttl"] * 3
    log = c.logs()
    assert "this server no longer leads" in log


def test_the_database_away_for_a_minute_stops_progress_and_loses_nothing(
    cluster: Callable[..., Cluster],
) -> None:
    outage = 60.0
    with TcpProxy(("127.0.0.1", 5432)) as proxy, fresh_schema() as direct_url:
        via_proxy = direct_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        c = cluster(2, database_url=via_proxy, **TIMING)
        publish(c, {"batch_size": 1, "min_healthy_time": "1s", "progress_deadline": "300s"})
        agents = agents_for(c, HOSTS, "away", "127.0.36", restart_time=0.3, heartbeat=1.0)
        direct = Store(direct_url)
        figures: dict[str, float] = {}

        def snapshot() -> tuple[str, float, str, int]:
            """The rollout as stored, read straight from PostgreSQL (not through the proxy)."""
            with direct.tx() as tx:
                summary, state = tx.get_rollout(rollout["id"])
                events = tx.list_events(rollout_id=rollout["id"], limit=5000)
            text = json.dumps(state, sort_keys=True)
            return summary.status.value, summary.updated_at, text, len(events)

        def scenario() -> None:
            rollout.update(start_v2(c, c.leader(), HOSTS))
            wait_rollout(c, rollout["id"], lambda b: b["hosts_done"] >= 2)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(3.0)  # what was in flight when the cut came has failed by now
            frozen = snapshot()
            answers = []
            while time.monotonic() - cut_at < outage:
                assert snapshot() == frozen, "something advanced without the database"
                with c.api() as api:
                    response = api.get(f"/api/v1/rollouts/{rollout['id']}", timeout=20)
                answers.append(response.status_code)
                time.sleep(5)
            assert set(answers) == {503}
            assert response.json()["error"] == "store_unavailable"
            proxy.restore()
            restored_at = time.monotonic()
            status, updated_at, _, _ = frozen
            assert status == "running"
            wait_rollout(c, rollout["id"], lambda b: b["updated_at"] > updated_at, timeout=60)
            figures["resumed_after"] = time.monotonic() - restored_at
            ended = wait_rollout(c, rollout["id"], lambda b: b["status"] != "running", timeout=90)
            assert ended["status"] == "succeeded", ended
            assert_each_host_changed_once(c, rollout["id"], agents)

        rollout: dict[str, Any] = {}
        try:
            run_with_agents(agents, scenario)
        finally:
            direct.close()
            c.stop()
    print(f"database away {outage:.0f}s; the rollout moved again {figures['resumed_after']:.2f}s after")
