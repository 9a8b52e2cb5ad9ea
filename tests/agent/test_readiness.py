"""The agent's readiness endpoint (GET /ready) for balancers that poll.

In process: the endpoint's answers as the serve flag and the app's health change, what
else the port says, bind failures, the saved flag. With a real agent and the sample app:
the server's flag flips /ready, an app that dies turns it 503 until it is healthy again,
and a drain arriving with a new release holds the old app until the balancer let go.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from headway.agent.appstate import pid_alive
from headway.agent.converge import Controller
from headway.agent.readiness import Readiness, ReadinessEndpoint
from headway.agent.settings import AgentSettings
from headway.clock import SystemClock
from headway.domain.models import ArtifactRef, Health
from headway.domain.spec import ServiceSpec
from headway.protocol.messages import Desired

from .conftest import Agent, FakeServer, desired, service, wait_until

MakeAgent = Callable[..., Agent]


def readiness_spec(port: int, interval: str = "200ms", fall: int = 2) -> ServiceSpec:
    data = service().model_dump(mode="json")
    readiness = {"port": port, "interval": interval, "fall": fall}
    data["traffic"] = {"balancer": "readiness", "readiness": readiness}
    return ServiceSpec.model_validate(data)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def get(address: str, port: int, path: str = "/ready", method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def aget(address: str, port: int, path: str = "/ready", method: str = "GET") -> tuple[int, str]:
    return await asyncio.to_thread(get, address, port, path, method)


@asynccontextmanager
async def endpoint(readiness: Readiness, address: str = "127.0.0.1") -> AsyncIterator[list[int]]:
    """Run the endpoint; yields the count of reports it asked for (one list item each)."""
    reports: list[int] = []
    ep = ReadinessEndpoint(readiness, address, lambda: reports.append(1))
    task = asyncio.create_task(ep.run())
    try:
        yield reports
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def listening(address: str, port: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            await aget(address, port)
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {address}:{port}"
            await asyncio.sleep(0.01)


# -- in process ------------------------------------------------------------------------------


def test_ready_only_when_serving_and_healthy(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        readiness = Readiness(tmp_path, SystemClock())
        readiness.configure(readiness_spec(port))
        async with endpoint(readiness):
            await listening("127.0.0.1", port)
            assert await aget("127.0.0.1", port) == (503, "not ready: the agent is starting\n")
            readiness.update(Health.HEALTHY, "")
            assert await aget("127.0.0.1", port) == (200, "ready\n")
            assert readiness.note() == "/ready: 200"

            assert readiness.set_serve(False) is True
            readiness.update(Health.HEALTHY, "")
            assert await aget("127.0.0.1", port) == (503, "not ready: drained by the server\n")
            assert readiness.note() == "/ready: 503 (drained by the server)"

            readiness.set_serve(True)
            readiness.update(Health.UNHEALTHY, "health check http://x/healthz answered 500,\nexpected 200")
            status, body = await aget("127.0.0.1", port)
            assert status == 503
            assert body == (
                "not ready: app unhealthy: health check http://x/healthz answered 500, expected 200\n"
            )
            assert readiness.note() == "/ready: 503 (app unhealthy)"
            readiness.update(Health.HEALTHY, "")
            assert (await aget("127.0.0.1", port))[0] == 200

    asyncio.run(main())


def test_the_port_serves_nothing_but_get_ready(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        readiness = Readiness(tmp_path, SystemClock())
        readiness.configure(readiness_spec(port))
        readiness.update(Health.HEALTHY, "")
        async with endpoint(readiness):
            await listening("127.0.0.1", port)
            assert await aget("127.0.0.1", port, "/ready?from=lb") == (200, "ready\n")
            assert await aget("127.0.0.1", port, method="HEAD") == (200, "")
            assert (await aget("127.0.0.1", port, "/"))[0] == 404
            assert (await aget("127.0.0.1", port, "/healthz"))[0] == 404
            assert (await aget("127.0.0.1", port, method="POST"))[0] == 405

            def garbage() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"hello\r\n\r\n")
                    return sock.recv(200)

            assert (await asyncio.to_thread(garbage)).startswith(b"HTTP/1.1 400 ")
            assert (await aget("127.0.0.1", port))[0] == 200  # still serving

    asyncio.run(main())


def test_it_follows_the_configured_port_and_closes_without_a_readiness_balancer(tmp_path: Path) -> None:
    async def main() -> None:
        first, second = free_port(), free_port()
        readiness = Readiness(tmp_path, SystemClock())
        readiness.update(Health.HEALTHY, "")
        async with endpoint(readiness):
            readiness.configure(readiness_spec(first))
            await listening("127.0.0.1", first)
            readiness.configure(readiness_spec(second))
            await listening("127.0.0.1", second)
            assert await refused("127.0.0.1", first)
            readiness.configure(service())  # no balancer: nothing listens, nothing noted
            deadline = time.monotonic() + 5
            while not await refused("127.0.0.1", second):
                assert time.monotonic() < deadline, "the port stayed open"
                await asyncio.sleep(0.01)
            assert readiness.note() == ""
            readiness.configure(readiness_spec(second))
            await listening("127.0.0.1", second)
        assert await refused("127.0.0.1", second)  # closed with the agent

    asyncio.run(main())


async def refused(address: str, port: int) -> bool:
    try:
        await aget(address, port)
    except (ConnectionRefusedError, ConnectionResetError):  # reset: queued as it closed
        return True
    return False


def test_a_port_in_use_is_reported_and_retried(tmp_path: Path) -> None:
    async def main() -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        readiness = Readiness(tmp_path, SystemClock())
        readiness.configure(readiness_spec(port))
        readiness.update(Health.HEALTHY, "")
        async with endpoint(readiness) as reports:
            await until(lambda: bool(readiness.problem), "the bind failure")
            assert f"cannot listen on 127.0.0.1:{port}" in readiness.note()
            assert readiness.note().startswith("/ready is down: ") and reports
            blocker.close()
            await until(lambda: not readiness.problem, "the retry to succeed", timeout=10)
            assert await aget("127.0.0.1", port) == (200, "ready\n")
            assert readiness.note() == "/ready: 200"

    asyncio.run(main())


def test_the_serve_flag_survives_an_agent_restart(tmp_path: Path) -> None:
    first = Readiness(tmp_path, SystemClock())
    assert first.serve is True  # a host serves unless the server said otherwise
    first.set_serve(False)
    assert Readiness(tmp_path, SystemClock()).serve is False
    first.set_serve(True)
    assert Readiness(tmp_path, SystemClock()).serve is True


def test_settle_left_counts_from_the_last_200(tmp_path: Path) -> None:
    readiness = Readiness(tmp_path, SystemClock())
    assert readiness.settle_left() == 0.0  # no polling balancer: nothing to wait for
    readiness.configure(readiness_spec(free_port(), interval="1s", fall=3))
    readiness.update(Health.HEALTHY, "")
    assert readiness.settle_left() == pytest.approx(3.25)  # still answering 200
    readiness.set_serve(False)
    readiness.update(Health.HEALTHY, "")
    assert 3.0 < readiness.settle_left() <= 3.25
    readiness.unready_since -= 10
    assert readiness.settle_left() == 0.0


def test_a_serve_only_change_does_not_disturb_the_controller(tmp_path: Path) -> None:
    controller = Controller(AgentSettings(name="h", state_dir=tmp_path), SystemClock())
    spec = readiness_spec(free_port())
    artifact = ArtifactRef(digest="sha256:" + "ab" * 32, size=1, url="/a")
    controller.offer(desired(1, 1, artifact, spec))
    waiter = controller.desired_changed.waiter()
    before = controller.observed
    controller.offer(desired(1, 1, artifact, spec).model_copy(update={"serve": False}))
    assert not waiter.is_set(), "a serve-only change must not start a new pass"
    assert controller.readiness.serve is False
    assert controller.observed != before and "drained by the server" in controller.observed.detail
    controller.offer(desired(2, 1, artifact, spec).model_copy(update={"serve": False}))
    assert waiter.is_set(), "a new generation is a new pass"
    controller.close()


# -- a real agent with the sample app ----------------------------------------------------------

READY_PORT = 18099


def with_serve(message: Desired, serve: bool) -> Desired:
    return message.model_copy(update={"serve": serve})


@pytest.mark.integration
def test_real_agent_serves_ready_through_drains_and_app_restarts(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    v1 = server.add_release("v1", tmp_path)
    spec = readiness_spec(READY_PORT)
    agent = make_agent("r1").start()
    server.set_desired("r1", desired(1, 1, v1, spec))
    server.wait_observed("r1", release=1, generation=1, health=Health.HEALTHY, detail="/ready: 200")
    assert get(agent.address, READY_PORT) == (200, "ready\n")

    server.set_desired("r1", with_serve(desired(1, 1, v1, spec), False))
    server.wait_observed("r1", detail="/ready: 503 (drained by the server)")
    assert get(agent.address, READY_PORT) == (503, "not ready: drained by the server\n")
    assert agent.get()[0] == 200  # the app itself is untouched
    server.set_desired("r1", desired(1, 1, v1, spec))
    server.wait_observed("r1", detail="/ready: 200")

    # the app dies: 503 until the agent has restarted it and its health check passes
    pid = agent.app_pids()[0]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: get(agent.address, READY_PORT)[0] == 503, 5, "/ready to turn 503")
    down = server.wait_observed("r1", health=Health.UNHEALTHY)
    assert "/ready: 503 (app unhealthy)" in down.detail
    server.wait_observed("r1", health=Health.HEALTHY, detail="/ready: 200")
    assert get(agent.address, READY_PORT) == (200, "ready\n")
    assert agent.app_pids() and agent.app_pids()[0] != pid


@pytest.mark.integration
def test_a_drain_that_comes_with_a_new_release_holds_the_old_app_for_the_settle_time(
    server: FakeServer, make_agent: MakeAgent, tmp_path: Path
) -> None:
    """After a reconnect the server's drain and the new release can arrive together; the
    agent still lets the balancer's interval x fall pass before it stops the old app."""
    v1, v2 = server.add_release("v1", tmp_path), server.add_release("v2", tmp_path)
    spec = readiness_spec(READY_PORT, interval="500ms", fall=2)  # settle 1.25 s
    agent = make_agent("r2").start()
    server.set_desired("r2", desired(1, 1, v1, spec))
    server.wait_observed("r2", release=1, health=Health.HEALTHY, detail="/ready: 200")
    old = agent.app_pids()[0]
    sent = time.monotonic()
    server.set_desired("r2", with_serve(desired(2, 2, v2, spec), False))
    wait_until(lambda: get(agent.address, READY_PORT)[0] == 503, 5, "/ready to turn 503")
    wait_until(lambda: not pid_alive(old), 10, "the old app to stop")
    assert time.monotonic() - sent >= 1.2, "the old app was stopped before the balancer let go"
    server.wait_observed("r2", release=2, generation=2, health=Health.HEALTHY)
    assert get(agent.address, READY_PORT)[0] == 503  # healthy, but still drained
    server.set_desired("r2", desired(2, 2, v2, spec))
    wait_until(lambda: get(agent.address, READY_PORT) == (200, "ready\n"), 5, "/ready to turn 200")
    assert agent.get()[:2] == (200, "v2")
