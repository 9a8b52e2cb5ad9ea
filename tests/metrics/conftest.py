"""A real little fleet for the metric sources: sample apps on 127.0.22.x behind a real HAProxy,
steady traffic through it, and the real Prometheus (Debian's package) scraping the apps every
second. Started once per module: about 4 s."""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from headway.fleet.artifact import SAMPLE_APP
from headway.traffic.haproxy import HAProxyBackend
from headway.traffic.haproxy_process import HAProxyProcess

# name -> (address, HEADWAY_PARAM_* settings)
APPS: dict[str, tuple[str, dict[str, str]]] = {
    "good1": ("127.0.22.1", {}),
    "good2": ("127.0.22.2", {}),
    "bad": ("127.0.22.3", {"HEADWAY_PARAM_ERROR_RATE": "0.2"}),
    "slow": ("127.0.22.4", {"HEADWAY_PARAM_LATENCY_MS": "40"}),
}


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def wait_until(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@dataclass
class App:
    name: str
    address: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def instance(self) -> str:
        return f"{self.address}:{self.port}"

    def up(self) -> bool:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


@dataclass
class Fleet:
    haproxy: HAProxyProcess
    apps: dict[str, App]
    prometheus_url: str
    port: int  # every app listens on this port, each on its own address

    def backend(self) -> HAProxyBackend:
        return HAProxyBackend(self.haproxy.socket_path, self.haproxy.backend, rng=random.Random(1))


class Traffic:
    """A few threads sending GET / through HAProxy without pause, until stopped."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        self.sent = 0

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.host, int(self.port), timeout=5)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                self.sent += 1
            except OSError:
                time.sleep(0.01)
            finally:
                conn.close()
            time.sleep(0.004)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sample
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: [{targets}]
"""


def start_prometheus(state: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run scripts/setup.sh as root (Debian package prometheus)"
    state.mkdir(parents=True, exist_ok=True)
    config = state / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(targets=", ".join(f'"{t}"' for t in targets)))
    port = free_port()
    log = (state / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={state / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"

    def all_up() -> bool:
        assert proc.poll() is None, f"prometheus exited: {(state / 'prometheus.log').read_text()[-2000:]}"
        try:
            body = httpx.get(f"{url}/api/v1/targets", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return False
        active = body.get("data", {}).get("activeTargets", [])
        return len(active) == len(targets) and all(t.get("health") == "up" for t in active)

    wait_until(all_up, 30, "Prometheus to scrape every sample app")
    return proc, url


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("fleet")
    port = free_port("127.0.22.1")
    apps: dict[str, App] = {}
    haproxy = HAProxyProcess(state / "lb")
    prometheus: subprocess.Popen[bytes] | None = None
    traffic: Traffic | None = None
    try:
        for name, (address, params) in APPS.items():
            env = dict(os.environ, HEADWAY_ADDRESS=address, HEADWAY_PORT=str(port), HEADWAY_HOST=name,
                       HEADWAY_RELEASE="v1", HEADWAY_SEED="3", **params)
            proc = subprocess.Popen([sys.executable, str(SAMPLE_APP)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            apps[name] = App(name, address, port, proc)
        for app in apps.values():
            wait_until(app.up, 10, f"the sample app {app.name}")
        haproxy.start()
        fleet = Fleet(haproxy, apps, "", port)
        backend = fleet.backend()

        async def register() -> None:
            for app in apps.values():
                await backend.register(app.name, app.address, app.port, admitted=True)

        asyncio.run(register())
        traffic = Traffic(haproxy.url).start()
        prometheus, fleet.prometheus_url = start_prometheus(state / "prometheus",
                                                            [a.instance for a in apps.values()])
        wait_until(lambda: traffic is not None and traffic.sent > 200, 10, "traffic through HAProxy")
        yield fleet
    finally:
        if traffic is not None:
            traffic.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        haproxy.stop()
        for app in apps.values():
            app.proc.kill()
            app.proc.wait(10)
