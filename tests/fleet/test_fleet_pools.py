"""Blue-green on a real fleet: two pools behind HAProxy, live traffic, a shift and a rollback.

One fleet of four hosts (blue: host-01, host-02; green: host-03, host-04), one load
generator sending through HAProxy the whole time, two rollouts in a row:

1. v1 -> v2: green is upgraded while it takes no traffic, then traffic moves to it;
2. v2 -> v3: blue is upgraded and takes the traffic, and `headway rollback web` during
   the rollback window shifts it back to green, at once.

No request may fail in either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headway.client.api import ApiClient
from headway.domain.spec import load_service_yaml
from headway.fleet import balancer, local
from headway.fleet.artifact import build_sample_artifact
from headway.fleet.loadgen import BackgroundLoad, LoadGenerator, LoadSettings, RequestRecord, summarize

from .conftest import answering_hosts, run, run_json

pytestmark = pytest.mark.integration

BLUE = {"host-01", "host-02"}
GREEN = {"host-03", "host-04"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("pools") / "state"
    up = run_json(
        "fleet", "up", "--hosts", "4", "--pools", "blue,green", "--state-dir", str(state_dir),
        "--port", "0", "--traffic-port", "0", "--address-prefix", "127.0.17",
    )
    try:
        yield up
    finally:
        down = run("fleet", "down", "--state-dir", str(state_dir))
        assert down.exit_code == 0, down.output
        assert not local.is_alive(up["haproxy_pid"])


@pytest.fixture(scope="module")
def load(fleet: dict[str, Any]) -> Iterator[BackgroundLoad]:
    settings = LoadSettings(fleet["traffic"], rate=40, duration=300, slow_share=0.05,
                            slow_ms=(1000, 2500), seed=7)
    with BackgroundLoad(LoadGenerator(settings)) as running:
        yield running


@pytest.fixture
def env(fleet: dict[str, Any]) -> dict[str, str]:
    return {"HEADWAY_SERVER": fleet["server"], "HEADWAY_TOKEN": fleet["token"]}


def release(version: str, env: dict[str, str], tmp_path: Path) -> int:
    tarball = build_sample_artifact(version, tmp_path)
    number: int = run_json("release", "create", "web", "--artifact", str(tarball), env=env)["number"]
    return number


def failures(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.ok]


def drains_after_admits(fleet: dict[str, Any], rollout_id: str) -> list[list[str]]:
    """The hosts each shift of the rollout drained, in order; every drain went out only once
    every admit of its shift had succeeded (the engine holds them, `traffic.held`, until
    `traffic.admitted`): a drain landing before the admit it makes room for means 503s."""
    with ApiClient(fleet["server"], fleet["token"]) as api:
        events = list(api.iter_events(rollout=rollout_id))
    shifts: list[list[str]] = []
    held = False
    for event in events:
        if event.kind == "traffic.held":
            assert not held, "a shift held its drains twice"
            held = True
            shifts.append([])
        elif event.kind == "traffic.admitted":
            assert held, "drains released that were not held"
            held = False
        elif event.kind == "traffic.drain":
            assert shifts and not held, f"{event.host} drained before its shift's admits succeeded"
            shifts[-1].append(event.host)
    assert not held, "a shift's drains were never released"
    return shifts


def test_pools_are_labelled_and_only_the_live_one_takes_traffic(fleet: dict[str, Any]) -> None:
    assert fleet["pools"] == ["blue", "green"]
    assert {h["name"]: h["pool"] for h in fleet["hosts"]} == {
        "host-01": "blue", "host-02": "blue", "host-03": "green", "host-04": "green",
    }
    spec = load_service_yaml(Path(fleet["service_spec"]).read_text())
    assert spec.strategy.type.value == "blue-green"
    assert answering_hosts(fleet["traffic"], 10) == {"host-01": {"v1"}, "host-02": {"v1"}}
    stats = balancer.server_stats(Path(fleet["haproxy_socket"]))
    assert set(stats) == BLUE | GREEN  # green is registered, out of load balancing
    assert balancer.serving(stats) == BLUE


def test_blue_green_rollout_moves_traffic_to_the_new_pool(
    fleet: dict[str, Any], load: BackgroundLoad, env: dict[str, str], tmp_path: Path
) -> None:
    v2 = release("v2", env, tmp_path)
    start = load.generator.elapsed()
    done = run_json("rollout", "start", "web", "--to", str(v2), "--wait", env=env)
    end = load.generator.elapsed()
    assert done["rollout"]["status"] == "succeeded"

    assert answering_hosts(fleet["traffic"], 10) == {"host-03": {"v2"}, "host-04": {"v2"}}
    assert balancer.serving(balancer.server_stats(Path(fleet["haproxy_socket"]))) == GREEN
    hosts = {h["name"]: h["observed_release"] for h in run_json("hosts", env=env)}
    assert hosts == {"host-01": 1, "host-02": 1, "host-03": 2, "host-04": 2}  # blue kept for rollback

    records = load.generator.records
    assert not failures(records)
    assert summarize(records, until=start).versions.keys() == {"v1"}
    assert [set(s) for s in drains_after_admits(fleet, done["rollout"]["id"])] == [BLUE]
    assert summarize(records, since=start, until=end).versions.keys() == {"v1", "v2"}


def test_rollback_during_the_window_shifts_traffic_back_at_once(
    fleet: dict[str, Any], load: BackgroundLoad, env: dict[str, str], tmp_path: Path
) -> None:
    v3 = release("v3", env, tmp_path)
    started = run_json("rollout", "start", "web", "--to", str(v3), env=env)
    rollout_id = started["rollout"]["id"]
    with ApiClient(fleet["server"], fleet["token"]) as api:
        deadline = time.monotonic() + 60
        while not any(
            e.kind == "traffic.shifted" and "100%" in e.message
            for e in api.iter_events(rollout=rollout_id)
        ):
            assert api.get_rollout(rollout_id).rollout.status.value == "running"
            assert time.monotonic() < deadline, "traffic never moved to blue"
            time.sleep(0.1)
    assert answering_hosts(fleet["traffic"], 6) == {"host-01": {"v3"}, "host-02": {"v3"}}

    back = run("rollback", "web", "--reason", "test", env=env)
    assert back.exit_code == 0, back.output
    rolled = run_json("rollout", "status", rollout_id, "--wait", env=env, code=1)
    assert rolled["rollout"]["status"] == "rolled_back"
    after = load.generator.elapsed()

    assert answering_hosts(fleet["traffic"], 10) == {"host-03": {"v2"}, "host-04": {"v2"}}
    assert balancer.serving(balancer.server_stats(Path(fleet["haproxy_socket"]))) == GREEN
    time.sleep(1.0)
    records = load.stop()
    assert not failures(records), summarize(records).errors
    assert summarize(records, since=after).versions.keys() == {"v2"}
    assert summarize(records).sent > 40 * 20
    events = run_json("history", "--service", "web", env=env)
    assert "traffic.failed" not in {e["kind"] for e in events}
    # forward: blue admitted, then green drained; back: green admitted, then blue drained
    assert [set(s) for s in drains_after_admits(fleet, rollout_id)] == [GREEN, BLUE]
