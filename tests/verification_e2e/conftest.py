"""One real local fleet shared by the verification cases, under constant open-loop load.

- `headway.fleet.local.fleet_up`: a server, HAProxy and 6 agents with their sample apps on
  127.0.60.1-6, canary strategy (1 host, then the rest), min healthy time 1 s;
- the real Prometheus (Debian's package) scraping every app's ``/metrics`` each second;
- the service's verification: 15 s windows judged by a balancer error-rate gate (+3 pp),
  a balancer latency gate (+50%), a Prometheus gate (share of 5xx answers, +0.05) and a
  command gate (``smoke-test.sh``: curl each canary URL 30 times, any non-200 fails);
- `headway.fleet.loadgen` sending 90 requests/s through HAProxy (no slow requests: the
  latency gate compares HAProxy's average response times), for the whole module.

Start-up takes about 15 s; the fixture checks nothing of Headway's verification itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from headway.client.api import ApiClient
from headway.domain.models import Event, Health, Release, RolloutSummary
from headway.domain.spec import CanaryStrategy
from headway.fleet import local
from headway.fleet.bad_release import publish_release
from headway.fleet.loadgen import BackgroundLoad, LoadGenerator, LoadSettings, RequestRecord

HOSTS = 6
ADDRESS_PREFIX = "127.0.60"
RATE = 90.0  # requests/s through HAProxy: about 15/s per host, 225 per host in a window
WINDOW = "15s"
SERVICE = local.SERVICE

STRATEGY = CanaryStrategy.model_validate(
    {
        "type": "canary",
        "steps": [{"hosts": 1}, {"hosts": "100%"}],
        "min_healthy_time": "1s",
        "progress_deadline": "30s",  # generous: only a failure waits for it
        "max_unavailable": 2,
    }
)

SMOKE_TEST = """\
#!/bin/sh
# GET / 30 times on each canary URL; the first answer that is not 200 fails the gate.
for url in "$@"; do
    i=0
    while [ "$i" -lt 30 ]; do
        i=$((i + 1))
        code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$url/")
        if [ "$code" != 200 ]; then
            echo "$url/ answered $code (request $i of 30)"
            exit 1
        fi
    done
    echo "$url/: 30 answers, all 200"
done
"""

# Share of answers that are 5xx, over the last window, for the hosts given ({hosts}).
ERROR_SHARE = (
    '(sum(rate(requests_total{code=~"5..",instance=~"{hosts}"}[15s])) or vector(0))'
    ' / sum(rate(requests_total{instance=~"{hosts}"}[15s]))'
)

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


class Prometheus:
    """Debian's Prometheus on a fixed loopback port; stopped and started again at will."""

    def __init__(self, state: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: run scripts/setup.sh as root (Debian package)"
        self.binary = binary
        self.state = state
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        state.mkdir(parents=True, exist_ok=True)
        (state / "prometheus.yml").write_text(
            PROMETHEUS_CONFIG.format(targets=", ".join(f'"{t}"' for t in targets)), encoding="utf-8"
        )

    def start(self) -> None:
        with (self.state / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.state / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.state / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(self._scraping, 30, "Prometheus to scrape every sample app")

    def _scraping(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            "prometheus exited: " + (self.state / "prometheus.log").read_text()[-2000:]
        )
        try:
            body = httpx.get(f"{self.url}/api/v1/targets", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return False
        active = body.get("data", {}).get("activeTargets", [])
        return len(active) == len(self.targets) and all(t.get("health") == "up" for t in active)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


@dataclass
class Stack:
    fleet: local.Fleet
    api: ApiClient
    prometheus: Prometheus
    generator: LoadGenerator
    artifacts: Path

    @property
    def first_batch(self) -> set[str]:
        return {sorted(h.name for h in self.fleet.hosts)[0]}

    def current(self) -> int:
        current = self.api.get_service(SERVICE).current_release
        assert current is not None
        return current

    def release(self, params: dict[str, str], note: str) -> Release:
        """A new sample app artifact whose X-App-Version is the release's own version."""
        number = max(r.number for r in self.api.list_releases(SERVICE)) + 1
        release = publish_release(self.api, SERVICE, f"v{number}", self.artifacts, params=params, note=note)
        assert release.number == number
        return release

    def wait_rollout(self, rollout_id: str, until: Callable[[RolloutSummary], bool],
                     timeout: float = 120) -> RolloutSummary:
        summary = self.api.get_rollout(rollout_id).rollout
        deadline = time.monotonic() + timeout
        while not until(summary):
            assert time.monotonic() < deadline, f"rollout after {timeout}s: {summary}"
            time.sleep(0.1)
            summary = self.api.get_rollout(rollout_id).rollout
        return summary

    def events(self, rollout_id: str) -> list[Event]:
        return list(self.api.iter_events(rollout=rollout_id))

    def wait_healthy_on(self, release: int, timeout: float = 30) -> None:
        def ready() -> bool:
            hosts = self.api.list_hosts(service=SERVICE)
            return len(hosts) == HOSTS and all(
                h.connected and h.health is Health.HEALTHY and h.observed_release == release
                for h in hosts
            )

        wait_for(ready, timeout, f"every host healthy on v{release}", interval=0.2)

    def records(self, since: float, until: float | None = None) -> list[RequestRecord]:
        """Requests scheduled in [since, until) of the load's time."""
        end = until if until is not None else float("inf")
        return [r for r in self.generator.records if since <= r.scheduled < end]

    def answered_by_each_host(self) -> dict[str, Any]:
        """Versions each app answers with, asked directly (not through HAProxy)."""
        port = local.sample_spec().port
        return {
            h.name: httpx.get(f"http://{h.address}:{port}/healthz", timeout=5).headers["X-App-Version"]
            for h in self.fleet.hosts
        }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert shutil.which("curl"), "curl is not installed (the smoke test gate uses it)"
    root = tmp_path_factory.mktemp("verification")
    state_dir = root / "fleet"
    fleet = local.fleet_up(state_dir, HOSTS, port=0, traffic_port=0, address_prefix=ADDRESS_PREFIX,
                           strategy=STRATEGY)
    load: BackgroundLoad | None = None
    port = local.sample_spec().port
    prometheus = Prometheus(root / "prometheus", [f"{h.address}:{port}" for h in fleet.hosts])
    try:
        prometheus.start()
        smoke = root / "smoke-test.sh"
        smoke.write_text(SMOKE_TEST, encoding="utf-8")
        smoke.chmod(0o755)
        spec = local.fleet_service_spec(Path(fleet.haproxy_socket), STRATEGY).model_dump(mode="json")
        spec["verification"] = {
            "duration": WINDOW,
            "on_fail": "rollback",
            "max_inconclusive": 1,
            "gates": [
                {"name": "errors", "balancer": {"metric": "error_rate", "max_increase": 3}},
                {"name": "latency", "balancer": {"metric": "latency", "max_increase": "50%"}},
                {"name": "app-errors",
                 "prometheus": {"url": prometheus.url, "query": ERROR_SHARE, "max_increase": 0.05}},
                {"name": "smoke", "command": {"argv": [str(smoke), "{canary_urls}"], "timeout": "30s"}},
            ],
        }
        generator = LoadGenerator(
            LoadSettings(url=fleet.traffic, rate=RATE, duration=1800, slow_share=0.0, seed=4)
        )
        load = BackgroundLoad(generator).start()
        with ApiClient(fleet.server, fleet.token, timeout=30) as api:
            api.apply_service(spec)
            stack = Stack(fleet, api, prometheus, generator, root / "artifacts")
            wait_for(lambda: len(generator.records) > RATE, 10, "the load to flow through HAProxy")
            yield stack
    finally:
        if load is not None:
            load.stop(timeout=40)
        prometheus.stop()
        local.fleet_down(state_dir)
