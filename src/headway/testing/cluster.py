"""Several real `headway server` processes on one PostgreSQL schema, and their agents,
for the failover tests (tests/ha) and benchmarks.

The servers share a state directory (tokens and artifacts, as they would share a
volume) and a fresh schema of the test database; each writes its own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.api_helpers import tiny_tarball, wait_hosts
from headway.testing.server_process import ServerProcess, free_port, start_server

SPEC: dict[str, Any] = {
    "name": "web",
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
}


@dataclass
class Cluster:
    state_dir: Path
    database_url: str
    servers: list[ServerProcess] = field(default_factory=list)
    options: dict[str, float] = field(default_factory=dict)

    def start(self, n: int) -> None:
        for _ in range(n):
            index = len(self.servers)
            self.servers.append(
                start_server(
                    self.state_dir,
                    free_port(),
                    self.database_url,
                    log_name=f"server-{index}.log",
                    **self.options,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def alive(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.proc.poll() is None]

    def api(self, server: ServerProcess | None = None) -> httpx.Client:
        server = server or self.alive()[0]
        return server.client()

    def get(self, path: str, avoid: ServerProcess | None = None, **params: Any) -> Any:
        """GET from the first live server that answers (not ``avoid``)."""
        problem: object = None
        for server in self.alive():
            if server is avoid:
                continue
            try:
                with server.client() as api:
                    response = api.get(path, params=params, timeout=5)
                if response.status_code == 200:
                    return response.json()
                problem = response.text
            except httpx.HTTPError as error:
                problem = error
        raise AssertionError(f"no live server answered {path}: {problem}")

    def leader(self, timeout: float = 30, avoid: ServerProcess | None = None) -> ServerProcess:
        """The one live server that says it leads (waits for an election)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = []
            for server in self.alive():
                if server is avoid:
                    continue
                with contextlib.suppress(httpx.HTTPError), server.client() as api:
                    if api.get("/api/v1/cluster", timeout=2).json().get("role") == "leader":
                        leaders.append(server)
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.1)
        raise AssertionError(f"no single leader within {timeout}s")

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.resume()
            server.stop()

    def logs(self) -> str:
        return "\n".join(s.log.read_text(errors="replace") for s in self.servers if s.log.exists())


def publish(c: Cluster, strategy: dict[str, Any]) -> None:
    """The service, its v1 and its v2 (v2 not yet rolled out)."""
    with c.api() as api:
        api.post("/api/v1/services", json={"spec": dict(SPEC, strategy=strategy)}).raise_for_status()
        v1 = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
        api.post("/api/v1/services/web/releases", json={"artifact": v1["digest"]}).raise_for_status()


def agents_for(c: Cluster, n: int, prefix: str, subnet: str, **config: Any) -> list[SimAgent]:
    """``n`` agents spread over the servers: agent i starts at server i mod len(servers)."""
    token = c.servers[0].tokens["agent"]
    urls = c.urls
    out = []
    for i in range(n):
        order = urls[i % len(urls) :] + urls[: i % len(urls)]
        cfg = SimAgentConfig(",".join(order), token, "web", **config)
        out.append(SimAgent(f"{prefix}-{i}", f"{subnet}.{i + 1}", cfg))
    return out


def run_with_agents(agents: list[SimAgent], scenario: Callable[[], None]) -> None:
    """Run the agents on an event loop; once all are connected, run the blocking
    ``scenario`` in a thread; then stop them."""

    async def main() -> None:
        tasks = [asyncio.create_task(a.run()) for a in agents]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 30)
            await asyncio.to_thread(scenario)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def start_v2(c: Cluster, via: ServerProcess, hosts: int) -> dict[str, Any]:
    with c.api() as api:
        wait_hosts(api, "web", 1, hosts)
    with via.client() as api:
        api.post(
            "/api/v1/services/web/releases", json={"from_version": "v1", "params": {"B": "2"}}
        ).raise_for_status()
        response = api.post("/api/v1/services/web/rollouts", json={})
        assert response.is_success, response.text
        started: dict[str, Any] = response.json()["rollout"]
    return started


def wait_rollout(
    c: Cluster, rollout_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError):
            body = c.get(f"/api/v1/rollouts/{rollout_id}")["rollout"]
            if until(body):
                return body
        time.sleep(0.05)
    raise AssertionError(f"rollout {rollout_id} did not get there within {timeout}s: {body}")


def assert_each_host_changed_once(c: Cluster, rollout_id: str, agents: list[SimAgent]) -> None:
    """I3: one host.updating per host; each agent restarted exactly twice (v1, v2);
    desired generations only grow."""
    events = c.get("/api/v1/events", rollout=rollout_id, limit=5000)
    updating = sorted(e["host"] for e in events if e["kind"] == "host.updating")
    assert updating == sorted(a.name for a in agents), "each host changed exactly once"
    for agent in agents:
        assert agent.release == 2, agent
        assert agent.restarts == 2, f"{agent.name} restarted {agent.restarts} times (v1 install + v2)"
        generations = [g for _, g in agent.desired_seen]
        assert generations == sorted(generations), agent.desired_seen
