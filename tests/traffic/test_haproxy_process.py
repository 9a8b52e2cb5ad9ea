"""The local HAProxy: its configuration, its start and stop, and the errors it gives."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from headway.traffic.base import TrafficError
from headway.traffic.haproxy import HAProxyRuntime
from headway.traffic.haproxy_process import HAProxyProcess

pytestmark = pytest.mark.integration


def test_the_written_configuration_is_valid_and_has_what_zero_downtime_needs(tmp_path: Path) -> None:
    process = HAProxyProcess(tmp_path, port=18555, backend="shop")
    process.state_dir.mkdir(exist_ok=True)
    process.config_path.write_text(process.config_text())
    check = subprocess.run(["haproxy", "-c", "-f", str(process.config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = process.config_text()
    for line in (f"stats socket {tmp_path}/haproxy.sock mode 600 level admin", "option redispatch",
                 "retries 3", "timeout server 5m", "backend shop", "balance roundrobin",
                 "option httpchk GET /healthz", "option http-server-close", "bind 127.0.0.1:18555"):
        assert line in text
    assert "daemon" not in text.replace("no `daemon`", "")


def test_start_serves_on_its_url_records_its_pid_and_stop_ends_it(tmp_path: Path) -> None:
    process = HAProxyProcess(tmp_path / "lb")
    process.start()
    try:
        assert process.running and process.port > 0
        assert process.url == f"http://127.0.0.1:{process.port}"
        assert process.pid_path.read_text().strip() == str(process.pid)
        assert process.socket_path.stat().st_mode & 0o777 == 0o600
        process.start()  # already running: nothing happens
        # No server yet: HAProxy answers 503 itself.
        assert httpx.get(process.url + "/", timeout=5).status_code == 503
        pid = process.pid
        assert pid is not None
    finally:
        process.stop()
    assert not process.running and not process.pid_path.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    process.stop()  # idempotent


def test_a_port_in_use_is_reported_with_haproxys_own_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TrafficError, match="exited with code") as raised:
            HAProxyProcess(tmp_path, port=port).start()
    assert "cannot bind" in str(raised.value).lower() or "bind" in str(raised.value)
    assert "haproxy.log" in raised.value.hint


def test_a_second_haproxy_on_the_same_port_fails_instead_of_sharing_it(tmp_path: Path) -> None:
    with HAProxyProcess(tmp_path / "one") as one:
        with pytest.raises(TrafficError, match="exited with code"):
            HAProxyProcess(tmp_path / "two", port=one.port).start()
        assert one.running


def test_an_old_haproxy_on_the_same_socket_is_not_mistaken_for_the_new_one(tmp_path: Path) -> None:
    with HAProxyProcess(tmp_path / "lb") as old, HAProxyProcess(tmp_path / "lb") as new:
        assert old.running and new.running and new.pid != old.pid
        info = asyncio.run(HAProxyRuntime(new.socket_path).execute("show info"))
        assert f"Pid: {new.pid}\n" in info


def test_a_socket_path_too_long_for_unix_sockets_is_refused_up_front(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(TrafficError, match="too long") as raised:
        HAProxyProcess(deep).start()
    assert "state directory" in raised.value.hint


def test_backend_names_are_checked() -> None:
    with pytest.raises(TrafficError):
        HAProxyProcess(Path("/tmp/x"), backend="web\nlisten evil")
