"""Releases that carry config, rolled out to simulated agents that write the files; drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from headway.cli.main import app
from headway.testing.api_helpers import tiny_tarball, wait_hosts, wait_rollout
from headway.testing.server_process import ServerProcess

from .conftest import Fleet, files_hash

pytestmark = pytest.mark.integration

HOSTS = 4


def spec(apply: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "run": {"start": ["python3", "app.py"]},
        "health": {"http": {"path": "/healthz"}},
        "strategy": {"batch_size": 1, "min_healthy_time": "0.1s", "progress_deadline": "10s"},
        # a polling balancer: a drain takes interval * fall + 0.25 s (0.35 s here)
        "traffic": {"balancer": "readiness", "readiness": {"port": 18097, "interval": "0.1s", "fall": 1}},
        "config": {"apply": apply},
        **extra,
    }


def cli(server: ServerProcess, *args: str) -> Any:
    return CliRunner().invoke(
        app, [*args, "--server", server.url, "--token", server.tokens["api"]], env={"COLUMNS": "200"}
    )


def push(server: ServerProcess, directory: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    result = cli(server, "config", "push", "web", str(directory), "--json")
    assert result.exit_code == 0, result.output
    revision_id: str = json.loads(result.output)["revision"]["id"]
    return revision_id


def rollout(api: httpx.Client, **body: Any) -> dict[str, Any]:
    started = api.post("/api/v1/services/web/rollouts", json=body)
    assert started.status_code == 201, started.text
    done = wait_rollout(api, started.json()["rollout"]["id"])
    assert done["rollout"]["status"] == "succeeded", done
    return done


def drains(api: httpx.Client, rollout_id: str) -> int:
    events = api.get("/api/v1/events", params={"rollout": rollout_id}).json()
    return sum(1 for e in events if e["kind"] == "host.drained")


def setup_v1(server: ServerProcess, api: httpx.Client, tmp_path: Path, apply: str) -> str:
    """Service, artifact and v1 = artifact + config A."""
    assert api.post("/api/v1/services", json={"spec": spec(apply)}).status_code == 200
    rev_a = push(server, tmp_path / "a", {"app.conf": "greeting = hello\n"})
    artifact = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
    v1 = api.post("/api/v1/services/web/releases", json={"artifact": artifact["digest"], "config": rev_a})
    assert v1.status_code == 201 and v1.json()["config"]["revision"] == rev_a
    return rev_a


def test_a_config_only_release_reloads_without_drains(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as api:
        rev_a = setup_v1(server, api, tmp_path, "reload")
        with Fleet(server, tmp_path / "hosts", HOSTS, subnet="127.0.41") as fleet:
            wait_hosts(api, "web", 1, HOSTS)
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "greeting = hello\n"
                assert agent.bundles_fetched == [rev_a]

            rev_b = push(server, tmp_path / "b", {"app.conf": "greeting = bonjour\n"})
            made = cli(server, "release", "create", "web", "--config", rev_b, "--json")
            assert made.exit_code == 0, made.output
            v2 = json.loads(made.output)
            v1 = api.get("/api/v1/services/web/releases/v1").json()
            assert (
                v2["number"] == 2 and v2["artifact"] == v1["artifact"] and v2["config"]["revision"] == rev_b
            )

            done = rollout(api)
            rollout_id = done["rollout"]["id"]
            wait_hosts(api, "web", 2, HOSTS)
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "greeting = bonjour\n"
                assert agent.restarts == 1 and agent.reloads == 1  # installed once, reloaded once
                assert all(agent.serve_seen)  # never asked out of the balancer
            assert drains(api, rollout_id) == 0
            plan = [e for e in api.get("/api/v1/events", params={"rollout": rollout_id}).json()]
            assert any(e["kind"] == "rollout.config_plan" and "no drain" in e["message"] for e in plan)

            # from_version keeps the base's config; a param change restarts, so it drains
            v3 = api.post("/api/v1/services/web/releases", json={"from_version": "v2", "params": {"X": "1"}})
            assert v3.json()["config"]["revision"] == rev_b
            third = rollout(api)
            assert drains(api, third["rollout"]["id"]) == HOSTS
            # 'none' drops the config; the release list shows which config each release has
            v4 = api.post("/api/v1/services/web/releases", json={"from_version": "v3", "config": "none"})
            assert v4.json()["config"] is None
            listing = cli(server, "release", "list", "web")
            assert listing.exit_code == 0 and rev_b in listing.output
            missing = api.post("/api/v1/services/web/releases", json={"config": "abcdef123456"})
            assert missing.status_code == 404 and "config list" in missing.json()["hint"]


def test_restart_apps_drain_and_hotfix_uses_big_batches(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as api:
        setup_v1(server, api, tmp_path, "restart")
        # a canary that would wait 10 minutes after its first host
        slow = spec("restart", strategy={"steps": [{"hosts": 1}, {"pause": "10m"}], "type": "canary"})
        assert api.post("/api/v1/services", json={"spec": slow}).status_code == 200
        with Fleet(server, tmp_path / "hosts", 8, subnet="127.0.42") as fleet:
            wait_hosts(api, "web", 1, 8)
            rev_b = push(server, tmp_path / "b", {"app.conf": "greeting = urgent fix\n"})
            assert api.post("/api/v1/services/web/releases", json={"config": rev_b}).status_code == 201
            result = cli(server, "rollout", "start", "web", "--hotfix", "--wait", "--json")
            assert result.exit_code == 0, result.output
            done = json.loads(result.output)
            assert done["rollout"]["strategy"] == "rolling"  # 25% batches: 2 hosts at a time
            assert done["rollout"]["status"] == "succeeded"
            rollout_id = done["rollout"]["id"]
            assert drains(api, rollout_id) == 8  # restart-only app: every host drained first
            events = api.get("/api/v1/events", params={"rollout": rollout_id}).json()
            assert any(e["kind"] == "rollout.config_plan" and "hotfix" in e["message"] for e in events)
            for agent in fleet.agents:
                assert (agent.config_dir / "app.conf").read_text() == "greeting = urgent fix\n"


def test_drift_is_shown_and_restored(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as api:
        rev_a = setup_v1(server, api, tmp_path, "reload")
        with Fleet(server, tmp_path / "hosts", 3, subnet="127.0.43") as fleet:
            wait_hosts(api, "web", 1, 3)
            edited = fleet.agents[1]
            written = files_hash(edited.config_dir)
            (edited.config_dir / "app.conf").write_text("greeting = edited by hand\n")
            fleet.call(edited.report())
            hosts = _wait_drift(api, {edited.name})
            assert hosts[edited.name]["config_on_disk"] != hosts[edited.name]["config_applied"] == written
            table = cli(server, "hosts", "--service", "web")
            assert table.exit_code == 0
            line = next(line for line in table.output.splitlines() if edited.name in line)
            assert "drift" in line
            assert sum("drift" in line for line in table.output.splitlines()) == 1

            generation = hosts[edited.name]["generation"]
            restored = cli(server, "config", "restore", "web", "--json")
            assert restored.exit_code == 0, restored.output
            assert json.loads(restored.output)["hosts"] == [edited.name]
            hosts = _wait_drift(api, set())
            assert hosts[edited.name]["generation"] == generation + 1
            assert hosts[edited.name]["desired_release"] == 1  # the same release, re-applied
            assert (edited.config_dir / "app.conf").read_text() == "greeting = hello\n"
            assert edited.rewrites == 1 and edited.restarts == 1
            assert all(a.rewrites == 0 for a in fleet.agents if a is not edited)
            assert {h["generation"] for n, h in hosts.items() if n != edited.name} == {1}
            nothing = api.post("/api/v1/services/web/config/restore").json()
            assert nothing["hosts"] == []

            # while a rollout runs, the engine owns the generations: restore is refused
            rev_b = push(server, tmp_path / "b", {"app.conf": "greeting = hi\n"})
            assert rev_b != rev_a
            api.post("/api/v1/services/web/releases", json={"config": rev_b})
            slow = spec(
                "reload", strategy={"batch_size": 1, "min_healthy_time": "2s", "progress_deadline": "10s"}
            )
            api.post("/api/v1/services", json={"spec": slow})
            started = api.post("/api/v1/services/web/rollouts", json={}).json()
            busy = api.post("/api/v1/services/web/config/restore")
            assert busy.status_code == 409 and "rollout" in busy.json()["message"]
            assert wait_rollout(api, started["rollout"]["id"])["rollout"]["status"] == "succeeded"
            kinds = [e["kind"] for e in api.get("/api/v1/events", params={"service": "web"}).json()]
            assert kinds.count("config.restore") == 2


def _wait_drift(api: httpx.Client, drifted: set[str], timeout: float = 15) -> dict[str, dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout
    hosts: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        hosts = {h["name"]: h for h in api.get("/api/v1/hosts", params={"service": "web"}).json()}
        if {n for n, h in hosts.items() if h["config_drift"]} == drifted:
            return hosts
        time.sleep(0.05)
    raise AssertionError(f"drift is not {drifted}: {hosts}")
