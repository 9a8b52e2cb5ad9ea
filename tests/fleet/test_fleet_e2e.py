"""End to end through the CLI: a real server, HAProxy, real agents and sample apps on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headway.domain.spec import load_service_yaml
from headway.fleet import balancer, local
from headway.fleet.artifact import build_sample_artifact
from headway.fleet.loadgen import BackgroundLoad, LoadGenerator, LoadSettings, summarize

from .conftest import answering_hosts, run, run_json

pytestmark = pytest.mark.integration


def fleet_pids(state_dir: Path, fleet: dict[str, Any]) -> list[int]:
    apps = [local._app_pid(Path(h["state_dir"])) for h in fleet["hosts"]]
    return [fleet["server_pid"], fleet["haproxy_pid"], *(h["pid"] for h in fleet["hosts"]),
            *(p for p in apps if p)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("fleet") / "state"
    up = run_json(
        "fleet", "up", "--hosts", "3", "--state-dir", str(state_dir), "--port", "0",
        "--address-prefix", "127.0.14", "--traffic-port", "0",
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
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fleet["traffic"])
    assert fleet["traffic"] != fleet["server"]
    assert fleet["token"]
    assert fleet["pools"] is None
    assert fleet["haproxy_socket"] == str(Path(fleet["state_dir"]) / "haproxy" / "haproxy.sock")
    assert [(h["name"], h["address"]) for h in fleet["hosts"]] == [
        ("host-01", "127.0.14.1"), ("host-02", "127.0.14.2"), ("host-03", "127.0.14.3"),
    ]
    recorded = local.load_fleet(Path(fleet["state_dir"]))
    assert recorded is not None and recorded.server == fleet["server"]


def test_requests_through_haproxy_reach_every_host(fleet: dict[str, Any]) -> None:
    assert answering_hosts(fleet["traffic"], 12) == {
        "host-01": {"v1"}, "host-02": {"v1"}, "host-03": {"v1"},
    }
    stats = balancer.server_stats(Path(fleet["haproxy_socket"]))
    assert balancer.serving(stats) == {"host-01", "host-02", "host-03"}
    assert {s.weight for s in stats.values()} != {0}


def test_the_applied_spec_puts_the_service_behind_haproxy(fleet: dict[str, Any]) -> None:
    spec = load_service_yaml(Path(fleet["service_spec"]).read_text())
    assert spec.traffic.balancer.value == "haproxy"
    assert spec.traffic.haproxy is not None
    assert (spec.traffic.haproxy.socket, spec.traffic.haproxy.backend) == (
        fleet["haproxy_socket"], "web",
    )
    assert spec.strategy.type.value == "rolling"


def test_hosts_are_healthy_on_v1(env: dict[str, str]) -> None:
    hosts = run_json("hosts", "--service", "web", env=env)
    assert {(h["name"], h["observed_release"], h["health"]) for h in hosts} == {
        ("host-01", 1, "healthy"), ("host-02", 1, "healthy"), ("host-03", 1, "healthy"),
    }
    table = run("hosts", env=env)
    assert table.exit_code == 0
    assert "host-03" in table.stdout and "127.0.14.3" in table.stdout


def test_rolling_rollout_and_rollback_under_load_fail_no_request(
    fleet: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    """The drain handshake end to end: HAProxy drains each host, the server waits for its
    requests in flight (some last 1-2 s), the agent restarts the app, the server readmits
    it. A constant 40 req/s through HAProxy sees no error, before, during or after."""
    service = run_json("apply", "-f", fleet["service_spec"], env=env)
    assert service["name"] == "web" and service["current_release"] == 1
    assert service["spec"]["traffic"]["balancer"] == "haproxy"

    tarball = build_sample_artifact("v2", tmp_path)  # answers X-App-Version: v2
    v2 = run_json("release", "create", "web", "--artifact", str(tarball), env=env)
    assert v2["number"] == 2
    listed = run_json("release", "list", "web", env=env)
    assert [r["number"] for r in listed["releases"]] == [1, 2]
    assert listed["current_release"] == 1

    settings = LoadSettings(fleet["traffic"], rate=40, duration=120, slow_share=0.05,
                            slow_ms=(1000, 2000), seed=3)
    with BackgroundLoad(LoadGenerator(settings)) as load:
        done = run_json("rollout", "start", "web", "--to", "v2", "--wait", env=env)
        mid = load.generator.elapsed()
        back = run("rollback", "web", "--wait", "--reason", "test", env=env)
        end = load.generator.elapsed()
        records = load.stop()
    assert done["rollout"]["status"] == "succeeded"
    assert back.exit_code == 0, back.output
    assert "succeeded" in back.stdout

    total = summarize(records)
    assert total.sent >= 40 * 8
    assert (total.non_2xx, total.connection_errors) == (0, 0), total.errors
    assert summarize(records, until=mid).versions.keys() == {"v1", "v2"}
    assert summarize(records, since=end).versions.keys() <= {"v1"}
    assert any(r.slow and r.ok for r in records)
    # HAProxy logs every request that did not end normally: none had to be retried or
    # redispatched, so none was ever sent to an app that was stopping or not yet up.
    haproxy_log = (Path(fleet["state_dir"]) / "haproxy" / "haproxy.log").read_text()
    assert "HTTP/1.1\"" not in haproxy_log, haproxy_log[-2000:]
    assert answering_hosts(fleet["traffic"], 12) == {
        "host-01": {"v1"}, "host-02": {"v1"}, "host-03": {"v1"},
    }

    assert {h["observed_release"] for h in run_json("hosts", env=env)} == {1}
    events = run_json("history", "--service", "web", env=env)
    kinds = {e["kind"] for e in events}
    assert {"rollout.succeeded", "host.drained"} <= kinds
    assert "traffic.failed" not in kinds
    drained = [e for e in events if e["kind"] == "host.drained"]
    assert len(drained) >= 6  # three hosts, twice
    status = run_json("rollout", "status", "--service", "web", env=env)
    assert status["rollout"]["id"] != done["rollout"]["id"]  # the rollback's is the latest
    rollouts = run_json("rollout", "status", env=env)
    assert len(rollouts) >= 2
    # No host is left drained: HAProxy sends to all three again.
    assert balancer.serving(balancer.server_stats(Path(fleet["haproxy_socket"]))) == {
        "host-01", "host-02", "host-03",
    }


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
