"""Agents given two real `headway server` processes move to the second when the first dies.

Each server has its own SQLite state directory; they share the tokens (through
HEADWAY_API_TOKEN / HEADWAY_AGENT_TOKEN, which the server processes inherit), as
servers of one PostgreSQL database would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.server_process import ServerProcess, start_server

pytestmark = pytest.mark.integration

AGENT_TOKEN = "hw_agent_failover_test"
API_TOKEN = "hw_api_failover_test"
FAILOVER_WITHIN = 5.0      # seconds from SIGKILL to the second server listing the host


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ServerProcess]]:
    monkeypatch.setenv("HEADWAY_AGENT_TOKEN", AGENT_TOKEN)
    monkeypatch.setenv("HEADWAY_API_TOKEN", API_TOKEN)
    started: list[ServerProcess] = []
    try:
        for name in ("one", "two"):
            started.append(start_server(tmp_path / f"server-{name}"))
        yield started
    finally:
        for server in started:
            server.stop()


def host_on(server: ServerProcess, name: str) -> dict[str, Any] | None:
    with server.client() as api:
        hosts: list[dict[str, Any]] = api.get("/api/v1/hosts").json()
    return next((h for h in hosts if h["name"] == name), None)


def connected_on(server: ServerProcess, name: str) -> bool:
    host = host_on(server, name)
    return host is not None and bool(host["connected"])


def wait_connected(server: ServerProcess, name: str, timeout: float) -> float:
    """Seconds until ``server`` lists host ``name`` as connected."""
    started = time.monotonic()
    while not connected_on(server, name):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{name} not connected to {server.url} within {timeout}s: "
                                 f"{host_on(server, name)}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_sim_agent_moves_to_the_second_server_when_the_first_dies(
    servers: list[ServerProcess],
) -> None:
    first, second = servers
    config = SimAgentConfig(f"{first.url},{second.url}", AGENT_TOKEN, "web")
    agent = SimAgent("failover-sim", "127.0.33.1", config)

    def scenario() -> float:
        wait_connected(first, agent.name, 10)
        assert host_on(second, agent.name) is None
        assert agent.server == first.url
        first.kill()
        return wait_connected(second, agent.name, FAILOVER_WITHIN)

    async def main() -> float:
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 10)
            return await asyncio.to_thread(scenario)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    took = asyncio.run(main())
    assert took < FAILOVER_WITHIN
    assert agent.server == second.url
    host = host_on(second, agent.name)
    assert host is not None and host["address"] == "127.0.33.1"


def test_real_agent_moves_to_the_second_server_when_the_first_dies(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    first, second = servers
    log_path = tmp_path / "agent.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headway.agent", "--server", f"{first.url},{second.url}",
             "--name", "failover-real", "--address", "127.0.33.2", "--label", "service=web",
             "--state-dir", str(tmp_path / "agent-state"), "--heartbeat", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        wait_connected(first, "failover-real", 15)
        assert host_on(second, "failover-real") is None
        first.kill()
        took = wait_connected(second, "failover-real", FAILOVER_WITHIN)
        assert took < FAILOVER_WITHIN
    finally:
        proc.terminate()
        proc.wait(10)
    log_text = log_path.read_text()
    assert f"connected to {first.url} as host failover-real" in log_text, log_text
    assert f"connected to {second.url} as host failover-real" in log_text, log_text
    assert log_text.index(f"connected to {first.url}") < log_text.index(f"connected to {second.url}")
