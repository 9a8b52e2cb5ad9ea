"""The sample app on its own: routes, fault injection, config, graceful shutdown."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from headway.agent.target import param_env_name
from headway.fleet.artifact import SAMPLE_APP

from .conftest import free_address, wait_until

PORT = 18180



def get(address: str, path: str = "/", timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(address, PORT, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


class App:
    def __init__(self, script: Path = SAMPLE_APP, **env: str) -> None:
        self.address = free_address(PORT)
        full = dict(os.environ, HEADWAY_ADDRESS=self.address, HEADWAY_PORT=str(PORT),
                    HEADWAY_RELEASE="v5", HEADWAY_HOST="box-1", HEADWAY_SEED="7", **env)
        self.proc = subprocess.Popen([sys.executable, str(script)], env=full,
                                     stderr=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        def up() -> bool:
            try:
                return get(self.address, "/healthz", 1)[0] in (200, 503)
            except OSError:
                return False
        wait_until(up, 10, "the sample app to listen")


@pytest.fixture
def run_app() -> Iterator[type[App]]:
    apps: list[App] = []

    class Tracked(App):
        def __init__(self, script: Path = SAMPLE_APP, **env: str) -> None:
            super().__init__(script, **env)
            apps.append(self)

    yield Tracked
    for app in apps:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait(5)


def test_routes_version_config_and_metrics(run_app: type[App], tmp_path: Path) -> None:
    config = tmp_path / "app.conf"
    config.write_text("# a comment\ngreeting = bonjour\n")
    app = run_app(HEADWAY_CONFIG_FILE=str(config))
    app.wait_ready()
    status, headers, body = get(app.address)
    assert status == 200 and headers["X-App-Version"] == "v5"
    assert body == "bonjour from box-1, version v5\n"
    assert get(app.address, "/slow?ms=50")[0] == 200
    assert get(app.address, "/nope")[0] == 404
    config.write_text("greeting=hi\n")
    app.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: get(app.address)[2].startswith("hi from"), 5, "the config reload")
    metrics = get(app.address, "/metrics")[2]
    assert 'requests_total{code="200"}' in metrics
    assert 'requests_total{code="404"} 1' in metrics
    assert 'request_duration_seconds_bucket{le="+Inf"}' in metrics
    assert "in_flight 1" in metrics                       # the /metrics request itself
    assert 'app_version_info{version="v5"} 1' in metrics


def test_config_dir_follows_a_flipped_link_on_sighup_and_checks_config(
    run_app: type[App], tmp_path: Path
) -> None:
    for name, text in [("r1", "greeting = one\n"), ("r2", "greeting = two\nfail_health = 1\n")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "app.conf").write_text(text)
    (tmp_path / "current").symlink_to("r1")
    app = run_app(HEADWAY_CONFIG_DIR=str(tmp_path / "current"))
    app.wait_ready()
    assert get(app.address)[2] == "one from box-1, version v5\n"
    assert get(app.address, "/healthz")[0] == 200
    (tmp_path / "next").symlink_to("r2")
    (tmp_path / "next").replace(tmp_path / "current")
    app.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: get(app.address)[2].startswith("two from"), 5, "the reload")
    assert get(app.address, "/healthz")[0] == 503       # fail_health from the config
    assert app.proc.poll() is None

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "app.conf").write_text("greeting = x\nno equals sign\n")
    check = [sys.executable, str(SAMPLE_APP), "--check-config"]
    assert subprocess.run([*check, str(tmp_path / "r1")], check=False).returncode == 0
    bad = subprocess.run([*check, str(tmp_path / "bad")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1
    assert "app.conf: line 2: expected 'key = value', got 'no equals sign'" in bad.stderr
    missing = subprocess.run([*check, str(tmp_path / "nowhere")], capture_output=True,
                             check=False)
    assert missing.returncode == 1


def test_version_file_beside_the_app_wins(tmp_path: Path, run_app: type[App]) -> None:
    (tmp_path / "app.py").write_bytes(SAMPLE_APP.read_bytes())
    (tmp_path / "VERSION").write_text("v9\n")
    app = run_app(tmp_path / "app.py")
    app.wait_ready()
    assert get(app.address)[1]["X-App-Version"] == "v9"


def test_fault_injection(run_app: type[App]) -> None:
    errors = run_app(HEADWAY_PARAM_ERROR_RATE="1")
    sick = run_app(HEADWAY_PARAM_FAIL_HEALTH="1", HEADWAY_PARAM_LATENCY_MS="150")
    crash = run_app(HEADWAY_PARAM_CRASH_AT_START="1")
    half = run_app(HEADWAY_PARAM_ERROR_RATE="0.5")
    assert crash.proc.wait(10) == 1
    errors.wait_ready()
    sick.wait_ready()
    half.wait_ready()
    assert get(errors.address)[0] == 500 and get(errors.address, "/slow?ms=1")[0] == 500
    assert get(errors.address, "/healthz")[0] == 200
    assert get(sick.address, "/healthz")[0] == 503 and get(sick.address)[0] == 200
    codes = [get(half.address)[0] for _ in range(60)]
    assert 10 < codes.count(500) < 50 and codes.count(200) + codes.count(500) == 60


def test_sigterm_finishes_the_slow_request_in_flight(run_app: type[App]) -> None:
    app = run_app()
    app.wait_ready()
    answers: list[tuple[int, dict[str, str], str]] = []
    slow = threading.Thread(target=lambda: answers.append(get(app.address, "/slow?ms=1500", 10)))
    slow.start()
    wait_until(lambda: "in_flight 2" in get(app.address, "/metrics")[2], 5, "the slow request")
    app.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(app.address), 3, "the app to stop accepting")
    assert app.proc.poll() is None                        # still finishing the slow request
    slow.join(10)
    assert answers and answers[0][0] == 200 and answers[0][2].startswith("slept 1500 ms")
    assert app.proc.wait(5) == 0


def _refused(address: str) -> bool:
    try:
        get(address, "/healthz", 1)
    except OSError:
        return True
    return False


def test_param_env_names() -> None:
    assert param_env_name("error_rate") == "HEADWAY_PARAM_ERROR_RATE"
    assert param_env_name("latency-ms") == "HEADWAY_PARAM_LATENCY_MS"
    assert param_env_name("a.b c") == "HEADWAY_PARAM_A_B_C"
