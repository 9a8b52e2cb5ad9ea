"""Real HAProxy, real sample apps on 127.0.21.x, and an open-loop load generator."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from headway.fleet.artifact import SAMPLE_APP
from headway.traffic.base import ServerState, ServerStats
from headway.traffic.haproxy import HAProxyBackend
from headway.traffic.haproxy_process import HAProxyProcess

ADDRESSES = ("127.0.21.1", "127.0.21.2", "127.0.21.3")


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxyProcess]:
    with HAProxyProcess(tmp_path / "lb") as process:
        yield process


def backend_for(process: HAProxyProcess, *, check: bool = True, seed: int = 1) -> HAProxyBackend:
    return HAProxyBackend(process.socket_path, process.backend, rng=random.Random(seed), check=check)


class SampleApp:
    """The fleet's sample app as a child process; ``version`` shows in ``X-App-Version``."""

    def __init__(self, host: str, address: str, port: int | None = None) -> None:
        self.host, self.address = host, address
        self.port = port or free_port(address)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, version: str) -> SampleApp:
        env = dict(os.environ, HEADWAY_ADDRESS=self.address, HEADWAY_PORT=str(self.port),
                   HEADWAY_HOST=self.host, HEADWAY_RELEASE=version, HEADWAY_SEED="1")
        self.proc = subprocess.Popen([sys.executable, str(SAMPLE_APP)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.healthy():
            assert self.proc.poll() is None, f"the sample app {self.host} exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"the sample app {self.host} did not listen within 10 s"
            time.sleep(0.02)
        return self

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM: the app finishes the requests in flight, then exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


@pytest.fixture
def apps() -> Iterator[Callable[[str, str], SampleApp]]:
    started: list[SampleApp] = []

    def start(host: str, version: str) -> SampleApp:
        app = SampleApp(host, ADDRESSES[len(started) % len(ADDRESSES)]).start(version)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)


async def server(backend: HAProxyBackend, host: str) -> ServerStats:
    return (await backend.stats())[host]


class Spy:
    """A backend wrapper that notes when ``host`` was first read back as drained."""

    def __init__(self, inner: HAProxyBackend, host: str) -> None:
        self.inner, self.host = inner, host
        self.name, self.settle_time = inner.name, inner.settle_time
        self.confirmed_at: float | None = None
        self.sessions_at_confirm = -1

    async def register(self, host: str, address: str, port: int, *, admitted: bool) -> None:
        await self.inner.register(host, address, port, admitted=admitted)

    async def deregister(self, host: str) -> None:
        await self.inner.deregister(host)

    async def set_state(self, host: str, state: ServerState) -> None:
        await self.inner.set_state(host, state)

    async def set_weight(self, host: str, weight: int) -> None:
        await self.inner.set_weight(host, weight)

    async def stats(self) -> dict[str, ServerStats]:
        stats = await self.inner.stats()
        if self.confirmed_at is None and stats[self.host].admin_state == ServerState.DRAIN:
            self.confirmed_at = time.monotonic()
            self.sessions_at_confirm = stats[self.host].total_sessions
        return stats


@dataclass(frozen=True)
class Result:
    path: str
    sent: float
    done: float
    status: int | None  # None: no HTTP answer (see error)
    version: str
    error: str = ""


@dataclass
class Load:
    """An open-loop load generator: one request every ``1/rate`` seconds, whatever the answers
    take (a closed loop would slow down exactly when the fleet does and hide failures)."""

    client: httpx.AsyncClient
    rate: float
    path: Callable[[int], str] = lambda i: "/"
    results: list[Result] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _runner: asyncio.Task[None] | None = None

    def start(self) -> Load:
        self._runner = asyncio.create_task(self._run())
        return self

    async def stop(self) -> list[Result]:
        self._stop.set()
        assert self._runner is not None
        await self._runner
        await asyncio.gather(*self._tasks)
        return sorted(self.results, key=lambda r: r.sent)

    async def _run(self) -> None:
        next_at, i = time.monotonic(), 0
        while not self._stop.is_set():
            task = asyncio.create_task(self._one(self.path(i)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
            next_at += 1 / self.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))

    async def _one(self, path: str) -> None:
        sent = time.monotonic()
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as error:
            self.results.append(Result(path, sent, time.monotonic(), None, "", repr(error)))
        else:
            self.results.append(Result(path, sent, time.monotonic(), response.status_code,
                                       response.headers.get("x-app-version", "")))
