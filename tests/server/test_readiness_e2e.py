"""End to end under a polling balancer: a real server, real agents and the sample app.

A tiny poller stands in for the cloud load balancer: every ``interval`` it GETs each
host's /ready, takes a host out after ``fall`` failed checks and back in after ``rise``
good ones, and routes a steady stream of requests (some slow) only to hosts that are in.
A rolling rollout with ``traffic.balancer: readiness`` drains each host through its agent:
the balancer has taken the host out before its old app stops, takes it back once the new
release is healthy, and not one request fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from headway.agent.appstate import app_id_for, find_app_processes
from headway.fleet.artifact import build_sample_artifact
from headway.testing.api_helpers import wait_hosts, wait_rollout
from headway.testing.server_process import ServerProcess, start_server

pytestmark = pytest.mark.integration

APP_PORT, READY_PORT = 8080, 18098
INTERVAL, FALL, RISE = 0.25, 2, 2
HOSTS = ("ready-1", "ready-2")


def free_addresses(count: int) -> list[str]:
    """Loopback addresses where both the app's and the readiness port can be bound."""
    candidates = [f"127.0.34.{n}" for n in range(1, 250)]
    random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(candidates)
    found = []
    for address in candidates:
        try:
            for port in (APP_PORT, READY_PORT):
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        found.append(address)
        if len(found) == count:
            return found
    raise RuntimeError("no free 127.0.34.x addresses")


def get(address: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-App-Version") or ""
    finally:
        conn.close()


@dataclass
class Balancer:
    """The stand-in for a cloud balancer: health checks on /ready, and routed requests."""

    hosts: dict[str, str]  # name -> address
    inside: set[str] = field(default_factory=set)
    changes: list[tuple[float, str, str]] = field(default_factory=list)  # (t, host, "in" | "out")
    checks: list[tuple[float, str, int]] = field(default_factory=list)  # (t, host, status; 0: none)
    answers: list[tuple[float, str, str, int, str]] = field(default_factory=list)  # t, host, path, ..
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_checks(self) -> None:
        streak = {name: 0 for name in self.hosts}  # > 0: good checks in a row, < 0: failed ones
        next_at = time.monotonic()
        while not self.stop.is_set():
            for name, address in self.hosts.items():
                try:
                    status = get(address, READY_PORT, "/ready", INTERVAL)[0]
                except OSError:
                    status = 0
                now = time.monotonic()
                self.checks.append((now, name, status))
                ok = status == 200
                streak[name] = max(streak[name], 0) + 1 if ok else min(streak[name], 0) - 1
                with self.lock:
                    if ok and streak[name] >= RISE and name not in self.inside:
                        self.inside.add(name)
                        self.changes.append((now, name, "in"))
                    elif not ok and -streak[name] >= FALL and name in self.inside:
                        self.inside.discard(name)
                        self.changes.append((now, name, "out"))
            next_at += INTERVAL
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def run_traffic(self, rate: float = 40.0) -> None:
        """Open loop: one request every 1/rate s to the next host that is in; every 8th is
        /slow (300 ms), so some are in flight whenever an app is told to stop."""
        pool = ThreadPoolExecutor(32)
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            with self.lock:
                inside = sorted(self.inside)
            if inside:
                name = inside[i % len(inside)]
                path = "/slow?ms=300" if i % 8 == 0 else "/"
                pool.submit(self._one, name, path)
                i += 1
            next_at += 1 / rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        pool.shutdown(wait=True)

    def _one(self, name: str, path: str) -> None:
        sent = time.monotonic()
        try:
            status, version = get(self.hosts[name], APP_PORT, path, 10)
        except OSError as error:
            status, version = 0, repr(error)
        self.answers.append((sent, name, path, status, version))

    def wait_inside(self, names: set[str], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.inside == names:
                    return
            assert time.monotonic() < deadline, f"the balancer has {self.inside}, not {names}"
            time.sleep(0.02)


@dataclass
class AppWatch:
    """When each app process was last seen, per host (a process gone is a stopped app)."""

    state_dirs: dict[str, Path]
    seen: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (host, last seen)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        ids = {app_id_for(d): name for name, d in self.state_dirs.items()}
        while not self.stop.is_set():
            for app_id, name in ids.items():
                for process in find_app_processes(app_id):
                    self.seen[process.pid] = (name, time.monotonic())
            self.stop.wait(0.02)

    def pids(self, host: str) -> set[int]:
        return {pid for pid, (name, _) in self.seen.items() if name == host}


def start_agent(server: ServerProcess, name: str, address: str, state_dir: Path) -> subprocess.Popen[bytes]:
    log = (state_dir.parent / f"agent-{name}.log").open("ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "headway.agent", "--server", server.url,
             "--token", server.tokens["agent"], "--name", name, "--address", address,
             "--label", "service=web", "--state-dir", str(state_dir), "--heartbeat", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def spec() -> dict[str, object]:
    return {
        "name": "web",
        "port": APP_PORT,
        "run": {"start": [sys.executable, "app.py"], "stop_timeout": "5s"},
        "health": {"http": {"path": "/healthz"}, "interval": "200ms", "timeout": "1s"},
        "strategy": {"batch_size": 1, "min_healthy_time": "500ms", "progress_deadline": "30s"},
        "traffic": {
            "balancer": "readiness",
            "readiness": {"port": READY_PORT, "interval": f"{INTERVAL}s", "fall": FALL},
        },
        "drain_timeout": "10s",
    }


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str], dict[str, Path]]]:
    server = start_server(tmp_path / "server", heartbeat=1.0)
    addresses = dict(zip(HOSTS, free_addresses(len(HOSTS)), strict=True))
    state_dirs = {name: tmp_path / name for name in HOSTS}
    agents: list[subprocess.Popen[bytes]] = []
    try:
        with server.client() as api:
            api.post("/api/v1/services", json={"spec": spec()}).raise_for_status()
            v1 = build_sample_artifact("v1", tmp_path / "built")
            ref = api.post("/api/v1/artifacts", content=v1.read_bytes()).json()
            api.post("/api/v1/services/web/releases", json={"artifact": ref["digest"]}).raise_for_status()
            for name in HOSTS:
                state_dirs[name].mkdir(parents=True)
                agents.append(start_agent(server, name, addresses[name], state_dirs[name]))
            wait_hosts(api, "web", 1, len(HOSTS), timeout=30)
        yield server, addresses, state_dirs
    finally:
        for agent in agents:
            agent.kill()
            agent.wait(10)
        for state_dir in state_dirs.values():
            for process in find_app_processes(app_id_for(state_dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        server.stop()


def test_rolling_rollout_under_a_polling_balancer_drains_each_host_first(
    fleet: tuple[ServerProcess, dict[str, str], dict[str, Path]], tmp_path: Path
) -> None:
    server, addresses, state_dirs = fleet
    balancer, watch = Balancer(addresses), AppWatch(state_dirs)
    threads = [threading.Thread(target=t, daemon=True)
               for t in (balancer.run_checks, balancer.run_traffic, watch.run)]
    for thread in threads:
        thread.start()
    try:
        balancer.wait_inside(set(HOSTS))
        time.sleep(0.5)  # some traffic on v1 first
        old = {name: watch.pids(name) for name in HOSTS}
        assert all(len(pids) == 1 for pids in old.values()), old
        with server.client() as api:
            v2 = build_sample_artifact("v2", tmp_path / "built")
            ref = api.post("/api/v1/artifacts", content=v2.read_bytes()).json()
            api.post("/api/v1/services/web/releases", json={"artifact": ref["digest"]}).raise_for_status()
            started = time.monotonic()
            rollout = api.post("/api/v1/services/web/rollouts", json={}).json()["rollout"]
            ended = wait_rollout(api, rollout["id"], timeout=60)
            assert ended["rollout"]["status"] == "succeeded", ended
            balancer.wait_inside(set(HOSTS))
            time.sleep(0.5)  # and some on v2 after
            hosts = api.get("/api/v1/hosts", params={"service": "web"}).json()
            events = api.get("/api/v1/events", params={"rollout": rollout["id"]}).json()
    finally:
        balancer.stop.set()
        watch.stop.set()
        for thread in threads:
            thread.join(15)

    assert {(h["name"], h["observed_release"], h["serve"]) for h in hosts} == {
        (name, 2, True) for name in HOSTS
    }
    assert all(h["detail"] == "/ready: 200" for h in hosts), hosts
    drained = [e["host"] for e in events if e["kind"] == "host.drained"]
    assert sorted(drained) == sorted(HOSTS), events

    for name in HOSTS:
        (old_pid,) = old[name]
        stopped = watch.seen[old_pid][1]  # last seen alive
        changes = [(t, c) for t, host, c in balancer.changes if host == name and t > started]
        first_503 = min(t for t, host, status in balancer.checks
                        if host == name and t > started and status != 200)
        out = next(t for t, c in changes if c == "out")
        assert first_503 < out < stopped, (
            f"{name}: the balancer must see 503 and take the host out before its app stops "
            f"(503 at {first_503 - started:.2f}s, out at {out - started:.2f}s, "
            f"app stopped at {stopped - started:.2f}s)"
        )
        back = [t for t, c in changes if c == "in" and t > stopped]
        assert back, f"{name}: the balancer never took the host back after its new app started"
        new_pids = watch.pids(name) - {old_pid}
        assert len(new_pids) == 1
        assert all(status == 200 for t, host, status in balancer.checks if host == name and t >= back[0])

    failed = [a for a in balancer.answers if a[3] != 200]
    assert not failed, f"{len(failed)} of {len(balancer.answers)} requests failed: {failed[:5]}"
    versions = [version for *_, version in sorted(balancer.answers)]
    assert "v1" in versions and versions[-1] == "v2"
    assert sum(1 for a in balancer.answers if a[2].startswith("/slow")) >= 10
