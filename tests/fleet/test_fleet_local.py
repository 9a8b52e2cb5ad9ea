"""The local fleet launcher's parts that need no server: plan, ports, spec, process control."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headway.cli.main import app
from headway.domain.durations import Budget
from headway.errors import Conflict, SpecError
from headway.fleet import local
from headway.fleet.processes import bind_probe


def test_sample_service_matches_the_brief() -> None:
    spec = local.sample_spec()
    assert spec.name == local.SERVICE == "web"
    assert spec.run.executor.value == "process"
    assert spec.run.start == ["python3", "app.py"]
    assert spec.port == 8080
    assert spec.health.http is not None and spec.health.http.path == "/healthz"
    assert spec.strategy.batch_size == Budget(20, True)
    assert spec.strategy.min_healthy_time == 2.0
    assert spec.matches({"service": "web"})


def test_sample_spec_survives_the_round_trip_to_the_server() -> None:
    from headway.domain.spec import parse_service_spec

    spec = local.sample_spec()
    assert parse_service_spec(json.loads(json.dumps(spec.model_dump(mode="json")))) == spec


def test_host_plan() -> None:
    assert local.host_plan(3) == [
        ("host-01", "127.0.10.1"), ("host-02", "127.0.10.2"), ("host-03", "127.0.10.3"),
    ]
    plan = local.host_plan(120, "127.0.11")
    assert plan[0] == ("host-001", "127.0.11.1")
    assert plan[-1] == ("host-120", "127.0.11.120")
    for bad in (0, 255):
        with pytest.raises(SpecError):
            local.host_plan(bad)
    for prefix in ("10.0.0", "127.0", "127.0.300", "127.a.1"):
        with pytest.raises(SpecError):
            local.host_plan(1, prefix)


def test_find_port_prefers_the_given_one_and_falls_back() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        other = local.find_port(taken)
        assert other != taken and other > 0
    free = local.find_port(0)
    assert local.find_port(free) == free


def test_bind_probe_tells_a_taken_port_from_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert bind_probe("127.0.0.1", taken) is None
    picked = bind_probe("127.0.0.1", 0)
    assert picked is not None and picked > 0
    assert bind_probe("127.0.0.1", picked) == picked


def _sleeper(tmp_path: Path, *marker: str, ignore_term: bool = False) -> int:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(120)\n"
    script = tmp_path / f"sleeper-{len(list(tmp_path.glob('sleeper-*')))}.py"
    script.write_text(code)
    log = tmp_path / f"{script.stem}.log"
    pid = local.spawn([sys.executable, str(script), *marker], log, dict(os.environ))
    deadline = time.monotonic() + 10
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "sleeper did not start"
        time.sleep(0.02)
    return pid


def test_spawn_detaches_and_is_alive_reaps(tmp_path: Path) -> None:
    pid = local.spawn([sys.executable, "-c", "print('hi')"], tmp_path / "out.log", dict(os.environ))
    deadline = time.monotonic() + 10
    while local.is_alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (tmp_path / "out.log").read_text() == "hi\n"
    assert not local.is_alive(pid)
    assert not local.is_alive(0)


def _record(state_dir: Path, server_pid: int, agent_pids: list[int]) -> None:
    hosts = [
        {"name": f"host-{i:02d}", "address": f"127.0.10.{i}", "pid": pid,
         "state_dir": str(state_dir / "hosts" / f"host-{i:02d}")}
        for i, pid in enumerate(agent_pids, start=1)
    ]
    (state_dir / local.FLEET_FILE).write_text(json.dumps({
        "server": "http://127.0.0.1:1", "token": "t", "state_dir": str(state_dir),
        "service": "web", "server_pid": server_pid, "hosts": hosts,
    }))


def test_fleet_down_stops_agents_apps_and_server(tmp_path: Path) -> None:
    state = tmp_path / "fleet"
    host_dir = state / "hosts" / "host-01"
    host_dir.mkdir(parents=True)
    server = _sleeper(tmp_path, "headway", "server")
    assert os.getsid(server) == server  # its own session: a terminal's ^C does not reach it
    agent = _sleeper(tmp_path, "headway", "agent", ignore_term=True)
    app_script = host_dir / "app.py"
    app_script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    app_pid = local.spawn([sys.executable, str(app_script)], host_dir / "app.log", dict(os.environ))
    (host_dir / "app.json").write_text(json.dumps({"pid": app_pid}))
    _record(state, server, [agent])
    deadline = time.monotonic() + 10
    while "ready" not in (host_dir / "app.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)

    messages: list[str] = []
    result = local.fleet_down(state, timeout=0.5, log=messages.append)

    assert not any(local.is_alive(pid) for pid in (server, agent, app_pid))
    assert len(result.stopped) == 3
    assert any("did not stop within 0.5s; killing it" in m for m in messages)
    again = local.fleet_down(state, timeout=0.5)
    assert again.nothing_ran


def test_fleet_down_leaves_unrelated_processes_alone(tmp_path: Path) -> None:
    state = tmp_path / "fleet"
    (state / "hosts" / "host-01").mkdir(parents=True)
    stranger = _sleeper(tmp_path)  # no "headway" in its command line, not in the state dir
    try:
        _record(state, stranger, [stranger])
        (state / "hosts" / "host-01" / "app.json").write_text(json.dumps({"pid": stranger}))
        assert local.fleet_down(state, timeout=0.5).nothing_ran
        assert local.is_alive(stranger)
    finally:
        os.kill(stranger, signal.SIGKILL)
        while local.is_alive(stranger):
            time.sleep(0.01)


def test_fleet_up_refuses_a_second_fleet_in_the_same_dir(tmp_path: Path) -> None:
    state = tmp_path / "fleet"
    state.mkdir()
    server = _sleeper(tmp_path, "headway", "server")
    try:
        _record(state, server, [])
        with pytest.raises(Conflict, match="already runs") as caught:
            local.fleet_up(state, 1)
        assert "fleet down --state-dir" in caught.value.hint
        assert local.is_alive(server)
    finally:
        local.fleet_down(state, timeout=0.5)
    assert not local.is_alive(server)


def test_fleet_down_cli_with_nothing_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fleet", "down", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert "nothing to stop" in result.stdout
    result = CliRunner().invoke(
        app, ["fleet", "down", "--state-dir", str(tmp_path / "none"), "--json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["stopped"] == []


def test_load_fleet_tolerates_garbage(tmp_path: Path) -> None:
    assert local.load_fleet(tmp_path) is None
    (tmp_path / local.FLEET_FILE).write_text("{not json")
    assert local.load_fleet(tmp_path) is None
    fleet = local.Fleet(
        server="http://127.0.0.1:7400", token="t", state_dir=tmp_path, server_pid=5, release=1,
        hosts=(local.FleetHost("host-01", "127.0.10.1", 6, tmp_path / "hosts" / "host-01"),),
    )
    assert local.Fleet.from_json(json.loads(json.dumps(fleet.to_json()))) == fleet


def test_pools_split_the_hosts_first_half_blue() -> None:
    names = [name for name, _ in local.host_plan(5)]
    assert local.assign_pools(names, ("blue", "green")) == {
        "host-01": "blue", "host-02": "blue", "host-03": "blue",
        "host-04": "green", "host-05": "green",
    }
    assert local.parse_pools(" blue , green ") == ("blue", "green")
    for bad in ("blue", "blue,blue", "a,b,c", "blue,"):
        with pytest.raises(SpecError, match="two different pools"):
            local.parse_pools(bad)
    with pytest.raises(SpecError, match="at least 2 hosts"):
        local.fleet_up(Path("/nonexistent/fleet"), 1, pools=("blue", "green"))
    with pytest.raises(SpecError, match="needs two pools"):
        local.fleet_up(Path("/nonexistent/fleet"), 2, strategy=local.blue_green_strategy())


def test_the_fleet_spec_puts_the_sample_service_behind_haproxy() -> None:
    from headway.domain.spec import BalancerKind, BlueGreenStrategy, parse_service_spec

    spec = local.fleet_service_spec(Path("/tmp/x/haproxy.sock"))
    assert spec.traffic.balancer is BalancerKind.HAPROXY
    assert spec.traffic.haproxy is not None
    assert (spec.traffic.haproxy.socket, spec.traffic.haproxy.backend) == ("/tmp/x/haproxy.sock", "web")
    assert spec.strategy == local.sample_spec().strategy
    assert spec.drain_timeout >= 5.0  # longer than the demo's slowest request

    blue_green = local.fleet_service_spec(Path("/tmp/x/haproxy.sock"), local.blue_green_strategy())
    strategy = blue_green.strategy
    assert isinstance(strategy, BlueGreenStrategy)
    assert (strategy.pools, strategy.pool_label) == (("blue", "green"), "pool")
    assert [str(s) for s in strategy.shift] == ["50%", "100%"]
    assert strategy.rollback_window == 10.0
    assert parse_service_spec(json.loads(json.dumps(blue_green.model_dump(mode="json")))) == blue_green


def test_the_fleet_record_keeps_traffic_and_pools(tmp_path: Path) -> None:
    fleet = local.Fleet(
        server="http://127.0.0.1:7400", token="t", state_dir=tmp_path, server_pid=5, release=1,
        hosts=(local.FleetHost("host-01", "127.0.10.1", 6, tmp_path / "h1", pool="blue"),
               local.FleetHost("host-02", "127.0.10.2", 7, tmp_path / "h2", pool="green")),
        traffic="http://127.0.0.1:7480", haproxy_pid=8, haproxy_socket=str(tmp_path / "s.sock"),
        pools=("blue", "green"),
    )
    data = json.loads(json.dumps(fleet.to_json()))
    assert data["traffic"] == "http://127.0.0.1:7480"
    assert data["pools"] == ["blue", "green"] and data["hosts"][1]["pool"] == "green"
    assert local.Fleet.from_json(data) == fleet
    assert [h.name for h in fleet.pool_hosts("green")] == ["host-02"]


def test_fleet_up_refuses_addresses_where_something_already_listens(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.19.2", 8080))
        squatter.listen()
        with pytest.raises(Conflict, match=r"host-02 \(127\.0\.19\.2:8080\)") as caught:
            local.fleet_up(tmp_path / "fleet", 3, address_prefix="127.0.19")
    assert "--address-prefix" in caught.value.hint
    assert not (tmp_path / "fleet").exists()  # refused before anything started
