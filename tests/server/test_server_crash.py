"""T8 / reliability 1: SIGKILL the server at each step boundary of a rollout in turn.

The rollout resumes from stored state after each restart, no host is
upgraded twice, and the rollout's clock (created_at, deadlines) continues.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.api_helpers import tiny_tarball as tarball
from headway.testing.api_helpers import wait_hosts
from headway.testing.cluster import run_with_agents
from headway.testing.server_process import start_server

SPEC = {
    "name": "web",
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
}

pytestmark = pytest.mark.integration

HOSTS = 6


def test_sigkill_at_every_step_boundary_resumes_without_repeating(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", reconnect_grace=3.0)
    spec = dict(SPEC, strategy={"batch_size": 2, "min_healthy_time": "0.5s", "progress_deadline": "30s"})
    with server.client() as api:
        api.post("/api/v1/services", json={"spec": spec}).raise_for_status()
        v1 = api.post("/api/v1/artifacts", content=tarball("v1")).json()
        api.post("/api/v1/services/web/releases", json={"artifact": v1["digest"]}).raise_for_status()
    config = SimAgentConfig(server.url, server.tokens["agent"], "web", restart_time=0.3)
    agents = [SimAgent(f"crash-{i}", f"127.0.31.{i + 1}", config) for i in range(HOSTS)]
    holder = {"server": server}

    def scenario() -> None:
        srv = holder["server"]
        with srv.client() as api:
            wait_hosts(api, "web", 1, HOSTS)
            api.post(
                "/api/v1/services/web/releases", json={"from_version": "v1", "params": {"B": "2"}}
            ).raise_for_status()
            started = api.post("/api/v1/services/web/rollouts", json={}).json()["rollout"]
        rollout_id = started["id"]
        kills = 0
        for boundary in (1, 2, 3, 4, 5):  # hosts done; batches end at 2 and 4
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                with srv.client() as api:
                    body = api.get(f"/api/v1/rollouts/{rollout_id}").json()["rollout"]
                if body["hosts_done"] >= boundary or body["status"] != "running":
                    break
                time.sleep(0.05)
            if body["status"] != "running":
                break
            srv = srv.restart()
            holder["server"] = srv
            kills += 1
        with srv.client() as api:
            ended = _wait_end(api, rollout_id)
            assert ended["status"] == "succeeded", ended
            assert ended["created_at"] == started["created_at"]  # the clock continued
            wait_hosts(api, "web", 2, HOSTS)
            events = api.get("/api/v1/events", params={"rollout": rollout_id}).json()
        assert kills >= 3
        updating = [e["host"] for e in events if e["kind"] == "host.updating"]
        assert sorted(updating) == sorted(a.name for a in agents), "each host changed exactly once"

    try:
        run_with_agents(agents, scenario)
    finally:
        holder["server"].stop()
    for agent in agents:
        assert agent.release == 2
        assert agent.restarts == 2, f"{agent.name} restarted {agent.restarts} times (v1 install + v2)"
        generations = [g for _, g in agent.desired_seen]
        assert generations == sorted(generations)


def _wait_end(api: httpx.Client, rollout_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, object] = api.get(f"/api/v1/rollouts/{rollout_id}").json()["rollout"]
        if body["status"] != "running":
            return body
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} did not end")
