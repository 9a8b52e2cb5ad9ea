"""End to end through the CLI: a real server, real agents and sample apps on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from headway.cli.main import app
from headway.fleet import local

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def run_json(*args: str, env: dict[str, str] | None = None, code: int = 0) -> Any:
    result = run(*args, "--json", env=env)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def fleet_pids(state_dir: Path, fleet: dict[str, Any]) -> list[int]:
    apps = [local._app_pid(Path(h["state_dir"])) for h in fleet["hosts"]]
    return [fleet["server_pid"], *(h["pid"] for h in fleet["hosts"]), *(p for p in apps if p)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("fleet") / "state"
    up = run_json(
        "fleet", "up", "--hosts", "3", "--state-dir", str(state_dir), "--port", "0",
        "--address-prefix", "127.0.14",
    )
    try:
        yield up
    finally:
        pids = fleet_pids(state_dir, up)
        down = run("fleet", "down", "--state-dir", str(state_dir))
        assert down.exit_code == 0, down.output
        assert not [pid for pid in pids if local.is_alive(pid)]


@pytest.fixture
def env(fleet: dict[str, Any]) -> dict[str, str]:
    return {"HEADWAY_SERVER": fleet["server"], "HEADWAY_TOKEN": fleet["token"]}


def test_fleet_up_reports_the_fleet(fleet: dict[str, Any]) -> None:
    assert fleet["service"] == "web"
    assert fleet["server"].startswith("http://127.0.0.1:")
    assert fleet["token"]
    assert [(h["name"], h["address"]) for h in fleet["hosts"]] == [
        ("host-01", "127.0.14.1"), ("host-02", "127.0.14.2"), ("host-03", "127.0.14.3"),
    ]
    recorded = local.load_fleet(Path(fleet["state_dir"]))
    assert recorded is not None and recorded.server == fleet["server"]


def test_hosts_are_healthy_on_v1(env: dict[str, str]) -> None:
    hosts = run_json("hosts", "--service", "web", env=env)
    assert {(h["name"], h["observed_release"], h["health"]) for h in hosts} == {
        ("host-01", 1, "healthy"), ("host-02", 1, "healthy"), ("host-03", 1, "healthy"),
    }
    table = run("hosts", env=env)
    assert table.exit_code == 0
    assert "host-03" in table.stdout and "127.0.14.3" in table.stdout


def test_apply_release_rollout_rollback(env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text(local.sample_spec_text())
    service = run_json("apply", "-f", str(spec), env=env)
    assert service["name"] == "web" and service["current_release"] == 1

    v2 = run_json("release", "create", "web", "--from", "v1", "--param", "greeting=hi", env=env)
    assert v2["number"] == 2 and v2["params"] == {"greeting": "hi"}
    listed = run_json("release", "list", "web", env=env)
    assert [r["number"] for r in listed["releases"]] == [1, 2]
    assert listed["current_release"] == 1

    done = run_json("rollout", "start", "web", "--to", "v2", "--wait", env=env)
    assert done["rollout"]["status"] == "succeeded"
    assert {h["observed_release"] for h in run_json("hosts", env=env)} == {2}
    status = run_json("rollout", "status", "--service", "web", env=env)
    assert status["rollout"]["id"] == done["rollout"]["id"]

    back = run("rollback", "web", "--wait", "--reason", "test", env=env)
    assert back.exit_code == 0, back.output
    assert "succeeded" in back.stdout
    assert {h["observed_release"] for h in run_json("hosts", env=env)} == {1}

    kinds = {e["kind"] for e in run_json("history", "--service", "web", env=env)}
    assert "rollout.succeeded" in kinds
    rollouts = run_json("rollout", "status", env=env)
    assert len(rollouts) >= 2


def test_a_failing_release_exits_1(env: dict[str, str]) -> None:
    bad = run_json(
        "release", "create", "web", "--from", "v1", "--param", "crash_at_start=1", env=env
    )
    result = run_json("rollout", "start", "web", "--to", str(bad["number"]), "--wait", env=env,
                      code=1)
    assert result["rollout"]["status"] in {"rolled_back", "failed"}
    assert {h["observed_release"] for h in run_json("hosts", env=env)} == {1}
    assert all(h["health"] == "healthy" for h in run_json("hosts", env=env))


def test_server_errors_exit_2_with_a_hint(env: dict[str, str]) -> None:
    missing = run("rollout", "status", "no-such-rollout", env=env)
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: ") and "hint: " in missing.stderr
    unknown = run("release", "list", "nope", env=env)
    assert unknown.exit_code == 2 and "error: " in unknown.stderr
    wrong = run("hosts", env={**env, "HEADWAY_TOKEN": "wrong"})
    assert wrong.exit_code == 2 and "error: " in wrong.stderr
    assert "Traceback" not in missing.output + unknown.output + wrong.output


def test_demo(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    summary = run_json(
        "demo", "--hosts", "3", "--state-dir", str(state_dir), "--port", "0",
        "--address-prefix", "127.0.15",
    )
    assert summary["ok"] is True
    assert summary["status"] == "succeeded"
    assert (summary["from_release"], summary["to_release"]) == (1, 2)
    assert summary["hosts_total"] == summary["hosts_healthy_on_target"] == 3
    assert summary["events"] > 0
    # The fleet is gone afterwards (no --stay): a second fleet down finds nothing.
    recorded = local.load_fleet(state_dir)
    assert recorded is not None
    assert not local.is_alive(recorded.server_pid)
    assert not any(local.is_alive(h.pid) for h in recorded.hosts)
    assert local.fleet_down(state_dir).nothing_ran
