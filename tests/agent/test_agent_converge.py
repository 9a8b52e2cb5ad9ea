"""Real agents (subprocesses) running the real sample app against a stand-in server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from headway.agent.appstate import pid_alive
from headway.domain.models import Health
from headway.domain.spec import ServiceSpec

from .conftest import Agent, FakeServer, desired, service, wait_until

pytestmark = pytest.mark.integration

MakeAgent = Callable[..., Agent]


def app_json(agent: Agent) -> dict[str, object]:
    data: dict[str, object] = json.loads((agent.state_dir / "app.json").read_text())
    return data


def test_install_switch_adopt_and_roll_back_without_download(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    spec = service()
    agent = make_agent("h1").start()
    server.wait_observed("h1", release=None)
    server.set_desired("h1", desired(1, 1, v1, spec))
    server.wait_observed("h1", release=1, generation=1, health=Health.HEALTHY)
    assert agent.get()[:2] == (200, "v1")
    pid1 = agent.app_pids()
    assert len(pid1) == 1 and app_json(agent)["pid"] == pid1[0]
    assert (agent.state_dir / "current").resolve().name.startswith("v1-")

    # switch to v2: the old process is gone, exactly one app runs
    server.set_desired("h1", desired(2, 2, v2, spec))
    server.wait_observed("h1", release=2, generation=2, health=Health.HEALTHY)
    status, version, body = agent.get()
    assert (status, version) == (200, "v2") and "h1" in body
    assert not pid_alive(pid1[0])
    pid2 = agent.app_pids()
    assert len(pid2) == 1 and pid2 != pid1
    assert not (agent.state_dir / "journal.json").exists()

    # same release, new generation: adopted, no restart
    server.set_desired("h1", desired(3, 2, v2, spec))
    server.wait_observed("h1", release=2, generation=3, health=Health.HEALTHY)
    assert agent.app_pids() == pid2

    # roll back to v1: served from the staged copy, no second download
    server.set_desired("h1", desired(4, 1, v1, spec))
    server.wait_observed("h1", release=1, generation=4, health=Health.HEALTHY)
    assert agent.get()[:2] == (200, "v1")
    assert server.gets_of(v1) == 1 and server.gets_of(v2) == 1
    assert len(agent.app_pids()) == 1

    # a clean stop of the agent leaves the app serving
    assert agent.signal(signal.SIGTERM) == 0
    assert agent.get()[:2] == (200, "v1")
    assert "the app keeps running" in agent.log()


def test_corrupt_artifact_fails_and_the_old_release_keeps_serving(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    good = server.artifacts[v2.digest]
    server.artifacts[v2.digest] = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    spec = service()
    agent = make_agent("h2").start()
    server.set_desired("h2", desired(1, 1, v1, spec))
    server.wait_observed("h2", release=1, generation=1, health=Health.HEALTHY)
    pid = agent.app_pids()

    server.set_desired("h2", desired(2, 2, v2, spec))
    failed = server.wait_observed("h2", generation=2, health=Health.FAILED)
    assert "digest mismatch" in failed.detail and failed.release == 1
    assert agent.get()[:2] == (200, "v1")
    assert agent.app_pids() == pid
    assert not list((agent.state_dir / "releases").glob("v2-*"))
    assert not list((agent.state_dir / "artifacts").glob("*.part"))


def test_crash_at_start_fails_and_fail_health_is_unhealthy(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    crashing, sick = make_agent("h3").start(), make_agent("h4").start()
    server.set_desired("h3", desired(1, 1, v1, service(), crash_at_start="1"))
    server.set_desired("h4", desired(1, 1, v1, service(), fail_health="1"))
    failed = server.wait_observed("h3", generation=1, health=Health.FAILED)
    assert "app exited with code 1 during start" in failed.detail
    assert failed.release == 1 and not crashing.app_pids()
    unhealthy = server.wait_observed("h4", release=1, health=Health.UNHEALTHY)
    assert unhealthy.generation == 0          # never healthy, so not converged
    assert "503" in unhealthy.detail
    status, version, _ = sick.get()
    assert (status, version) == (200, "v1")
    assert sick.get("/healthz")[0] == 503
    # a healthy release fixes the crashing host
    server.set_desired("h3", desired(2, 1, v1, service()))
    server.wait_observed("h3", release=1, generation=2, health=Health.HEALTHY)


def test_agent_killed_mid_switch_finishes_it_after_restart(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    spec = service(stop_timeout="10s")
    agent = make_agent("h5").start()
    server.set_desired("h5", desired(1, 1, v1, spec))
    server.wait_observed("h5", release=1, generation=1, health=Health.HEALTHY)
    slow: list[tuple[int, str, str]] = []
    request = threading.Thread(target=lambda: slow.append(agent.get("/slow?ms=2500", 10)))
    request.start()
    wait_until(lambda: "in_flight 1" in agent.get("/metrics")[2], 5, "the slow request")

    server.set_desired("h5", desired(2, 2, v2, spec))
    journal = agent.state_dir / "journal.json"
    wait_until(lambda: journal.exists() and json.loads(journal.read_text())["step"] == "stop",
               10, "the switch to reach its stop step")
    agent.signal(signal.SIGKILL)
    agent.start()
    server.wait_observed("h5", release=2, generation=2, health=Health.HEALTHY)
    request.join(10)
    assert slow and slow[0][:2] == (200, "v1")       # the old app finished its request
    assert agent.get()[:2] == (200, "v2")
    assert len(agent.app_pids()) == 1
    assert not journal.exists()
    assert "finishing the interrupted switch" in agent.log()


def test_killed_agent_with_deleted_state_adopts_the_running_app(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    agent = make_agent("h6").start()
    server.set_desired("h6", desired(1, 1, v1, service()))
    server.wait_observed("h6", release=1, generation=1, health=Health.HEALTHY)
    pid = agent.app_pids()
    agent.signal(signal.SIGKILL)
    assert agent.get()[:2] == (200, "v1")           # steady state: the app runs on
    shutil.rmtree(agent.state_dir)

    hellos = len(server.hellos)
    agent.start()
    wait_until(lambda: len(server.hellos) > hellos, 10, "the agent to reconnect")
    assert server.hellos[-1].observed.release == 1  # it found the app before saying hello
    server.wait_observed("h6", release=1, generation=1, health=Health.HEALTHY)
    assert agent.app_pids() == pid                  # adopted, not restarted, no second copy
    assert agent.get()[:2] == (200, "v1")
    assert "adopted the running app" in agent.log()
    # it staged the release again at the same path, so a later restart works
    wait_until(lambda: (agent.state_dir / "current").is_dir(), 10, "the release to be restaged")

    # and it still supervises it: kill the app, the agent restarts it
    os.kill(pid[0], signal.SIGKILL)
    wait_until(lambda: (now := agent.app_pids()) and now != pid, 15, "a restart")
    server.wait_observed("h6", release=1, health=Health.HEALTHY)
    assert len(agent.app_pids()) == 1


def test_refused_token_is_said_in_one_line(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    agent = make_agent("h7", token="wrong").start()
    wait_until(lambda: "agent token refused; check --token" in agent.log(), 10, "the log line")
    assert agent.log().count("agent token refused") == 1
    assert agent.signal(signal.SIGTERM) == 0


def test_newer_desired_wins_over_a_switch_still_fetching(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2, v3 = (server.add_release(v, tmp_path) for v in ("v1", "v2", "v3"))
    server.artifact_delay[v2.digest] = 3.0
    spec = service()
    agent = make_agent("h8").start()
    server.set_desired("h8", desired(1, 1, v1, spec))
    server.wait_observed("h8", release=1, generation=1, health=Health.HEALTHY)
    server.set_desired("h8", desired(2, 2, v2, spec))
    wait_until(lambda: server.gets_of(v2) == 1, 5, "the v2 download to begin")
    server.set_desired("h8", desired(3, 3, v3, spec))
    server.wait_observed("h8", release=3, generation=3, health=Health.HEALTHY, timeout=2.5)
    assert agent.get()[:2] == (200, "v3")
    app_log = (agent.state_dir / "logs" / "app.log").read_text()
    assert "version v2" not in app_log                # v2 was never started
    assert not list((agent.state_dir / "releases").glob("v2-*"))


START = """
import os, subprocess, sys
app = subprocess.Popen([sys.executable, "app.py"], start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open(os.path.join(os.environ["PIDS"], "app.pid"), "w").write(str(app.pid))
"""
STOP = """
import os, signal, time
path = os.path.join(os.environ["PIDS"], "app.pid")
pid = int(open(path).read())
os.kill(pid, signal.SIGTERM)
while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
    time.sleep(0.05)
"""


def test_commands_executor_runs_the_services_own_start_and_stop(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    spec = ServiceSpec.model_validate({
        **service().model_dump(mode="json"),
        "run": {"executor": "commands", "start": [sys.executable, "-c", START],
                "stop": [sys.executable, "-c", STOP], "env": {"PIDS": str(tmp_path)}},
    })
    agent = make_agent("h9").start()
    server.set_desired("h9", desired(1, 1, v1, spec))
    server.wait_observed("h9", release=1, generation=1, health=Health.HEALTHY)
    first = int((tmp_path / "app.pid").read_text())
    assert agent.get()[:2] == (200, "v1")
    server.set_desired("h9", desired(2, 2, v2, spec))
    server.wait_observed("h9", release=2, generation=2, health=Health.HEALTHY)
    assert agent.get()[:2] == (200, "v2")
    assert not pid_alive(first)
    assert app_json(agent)["executor"] == "commands" and app_json(agent)["pid"] is None


def test_reports_on_heartbeat_and_reconnects_to_a_returning_server(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    agent = make_agent("h10").start()
    server.set_desired("h10", desired(1, 1, v1, service()))
    server.wait_observed("h10", release=1, generation=1, health=Health.HEALTHY)
    before = len(server.reports["h10"])
    wait_until(lambda: len(server.reports["h10"]) >= before + 2, 3.5, "two heartbeats")
    pid = agent.app_pids()

    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    wait_until(lambda: "unreachable" in agent.log(), 10, "the agent to notice")
    assert agent.get()[:2] == (200, "v1")          # the app serves on without a server
    back = FakeServer(port)
    back.artifacts = server.artifacts
    back.start()
    try:
        back.set_desired("h10", desired(1, 1, v1, service()))
        back.wait_observed("h10", release=1, generation=1, health=Health.HEALTHY, timeout=10)
        assert back.hellos[0].observed.release == 1
        assert agent.app_pids() == pid and back.artifact_gets == []
        assert agent.log().count("unreachable") == 1   # one line, not one per retry
    finally:
        back.stop()
