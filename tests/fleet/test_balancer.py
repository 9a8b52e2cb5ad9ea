"""The local fleet's HAProxy: where its socket goes, its detached start, and its stop."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from headway.clock import SystemClock
from headway.errors import HeadwayError
from headway.fleet import balancer, local
from headway.fleet.processes import spawn


def test_the_socket_stays_in_the_state_dir_when_the_path_fits(tmp_path: Path) -> None:
    assert balancer.socket_path_for(tmp_path / "s") == tmp_path / "s" / "haproxy" / "haproxy.sock"


def test_a_deep_state_dir_gets_a_short_socket_path_under_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 90)
    inside = deep / "haproxy" / "haproxy.sock"
    assert len(os.fsencode(inside)) > balancer.MAX_SOCKET_PATH
    path = balancer.socket_path_for(deep)
    assert path.parent.parent == Path("/tmp") and path.parent.name.startswith("headway-")
    assert len(os.fsencode(path)) <= 40
    assert balancer.socket_path_for(deep) == path  # the same dir, the same socket
    assert balancer.socket_path_for(tmp_path / ("e" * 90)) != path
    # relative and absolute spellings of one dir agree
    monkeypatch.chdir(tmp_path)
    assert balancer.socket_path_for(Path("d" * 90)) == path


def test_a_shared_socket_dir_that_others_may_enter_is_refused(tmp_path: Path) -> None:
    lax = tmp_path / "lax"
    lax.mkdir(mode=0o755)
    lax.chmod(0o755)
    with pytest.raises(HeadwayError, match="not a private directory"):
        balancer._private_dir(lax)
    own = tmp_path / "own"
    balancer._private_dir(own)
    assert own.stat().st_mode & 0o777 == 0o700
    balancer._private_dir(own)  # ours already: fine


@pytest.mark.integration
def test_detached_haproxy_with_a_tmp_socket_is_stopped_and_tidied_by_fleet_down(tmp_path: Path) -> None:
    state = tmp_path / ("s" * 90)
    state.mkdir()
    socket_path = balancer.socket_path_for(state)
    proxy = balancer.FleetHAProxy(state, local.find_port(0), socket_path)
    pid = balancer.start_detached(proxy, spawn, dict(os.environ), clock=SystemClock())
    try:
        assert socket_path.exists() and balancer.answers(socket_path, pid)
        assert balancer.is_haproxy(pid, state / "haproxy" / "haproxy.cfg")
        assert os.getsid(pid) == pid  # its own session, like the server and the agents
        assert f"stats socket {socket_path} " in (state / "haproxy" / "haproxy.cfg").read_text()
        assert (state / "haproxy" / "haproxy.pid").read_text().strip() == str(pid)
        assert balancer.server_stats(socket_path) == {}  # backend web, no servers yet
        with pytest.raises(HeadwayError, match="does not serve the expected hosts"):
            balancer.wait_serving(socket_path, ["host-01"], ["host-01"], timeout=0.3,
                                  clock=SystemClock())
        # no fleet.json (start-up failed before it was written): haproxy.pid is enough
        result = local.fleet_down(state)
        assert result.stopped == [f"haproxy (pid {pid})"]
        assert not local.is_alive(pid)
        assert not socket_path.parent.exists()
    finally:
        if local.is_alive(pid):
            os.kill(pid, 9)
            while local.is_alive(pid):
                time.sleep(0.01)


@pytest.mark.integration
def test_haproxy_that_cannot_bind_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proxy = balancer.FleetHAProxy(tmp_path, taken.getsockname()[1], balancer.socket_path_for(tmp_path))
        with pytest.raises(HeadwayError, match=r"HAProxy exited at start.*cannot bind socket") as caught:
            balancer.start_detached(proxy, spawn, dict(os.environ), clock=SystemClock())
    assert "haproxy.log" in caught.value.hint
