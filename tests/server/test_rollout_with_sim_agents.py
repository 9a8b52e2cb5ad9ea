"""A real server process, simulated agents over real WebSockets: rollouts end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.api_helpers import tiny_tarball as tarball
from headway.testing.api_helpers import wait_hosts, wait_rollout
from headway.testing.server_process import ServerProcess, start_server

pytestmark = pytest.mark.integration

SPEC = {
    "name": "web",
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
    "strategy": {"batch_size": 2, "min_healthy_time": "0.3s", "progress_deadline": "10s"},
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "server")
    yield proc
    proc.stop()


async def run_fleet(server: ServerProcess, n: int, scenario: object) -> list[SimAgent]:
    config = SimAgentConfig(server.url, server.tokens["agent"], "web", restart_time=0.05)
    agents = [SimAgent(f"sim-{i:02d}", f"127.0.30.{i + 1}", config) for i in range(n)]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 20)
        await asyncio.to_thread(scenario, agents)  # type: ignore[arg-type]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return agents


def test_rolling_upgrade_then_automatic_rollback(server: ServerProcess) -> None:
    with server.client() as api:
        rolling_then_rollback(server, api)


def rolling_then_rollback(server: ServerProcess, api: httpx.Client) -> None:
    assert api.post("/api/v1/services", json={"spec": SPEC}).status_code == 200
    v1 = api.post("/api/v1/artifacts", content=tarball("v1")).json()
    assert api.post("/api/v1/services/web/releases", json={"artifact": v1["digest"]}).status_code == 201

    def scenario(agents: list[SimAgent]) -> None:
        wait_hosts(api, "web", 1, len(agents))
        r2 = api.post("/api/v1/services/web/releases", json={"from_version": "v1", "params": {"X": "2"}})
        assert r2.json()["number"] == 2
        started = api.post("/api/v1/services/web/rollouts", json={})
        assert started.status_code == 201, started.text
        again = api.post("/api/v1/services/web/rollouts", json={})
        assert again.status_code == 409
        done = wait_rollout(api, started.json()["rollout"]["id"])
        assert done["rollout"]["status"] == "succeeded"  # type: ignore[index]
        wait_hosts(api, "web", 2, len(agents))
        # a release whose hosts fail: rolled back by itself
        api.post("/api/v1/services/web/releases", json={"from_version": "v2", "params": {"SIM_FAIL": "1"}})
        bad = api.post("/api/v1/services/web/rollouts", json={}).json()
        ended = wait_rollout(api, bad["rollout"]["id"])
        assert ended["rollout"]["status"] == "rolled_back"  # type: ignore[index]
        wait_hosts(api, "web", 2, len(agents))

    agents = asyncio.run(run_fleet(server, 5, scenario))
    for agent in agents:
        # v1 install, v2 upgrade; at most one try of v3 and one restart back
        assert agent.release == 2
        generations = [g for _, g in agent.desired_seen]
        assert generations == sorted(generations)
    service = api.get("/api/v1/services/web").json()
    assert service["current_release"] == 2
    kinds = [e["kind"] for e in api.get("/api/v1/events", params={"service": "web"}).json()]
    assert "rollout.succeeded" in kinds and "rollout.rolled_back" in kinds


def test_bad_input_is_refused_and_nothing_stored(server: ServerProcess) -> None:
    with server.client() as api:
        bad_input(server, api)


def bad_input(server: ServerProcess, api: httpx.Client) -> None:
    bad = dict(SPEC, strategy={"batch_size": "150%"})
    response = api.post("/api/v1/services", json={"spec": bad})
    assert response.status_code == 422
    assert "150%" in response.json()["message"]
    assert api.get("/api/v1/services").json() == []
    assert api.post("/api/v1/services", json={"spec": dict(SPEC, extra=1)}).status_code == 422
    assert httpx.get(server.url + "/api/v1/services").status_code == 401
    assert api.get("/api/v1/services/nope").status_code == 404
    api.post("/api/v1/services", json={"spec": SPEC})
    missing = api.post("/api/v1/services/web/releases", json={"from_version": "v7"})
    assert missing.status_code == 404
    assert api.post("/api/v1/services/web/rollouts", json={"to": "v9"}).status_code == 404
    assert api.post("/api/v1/services/web/rollouts", json={"to": "banana"}).status_code == 422
    huge = api.post(
        "/api/v1/services",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
