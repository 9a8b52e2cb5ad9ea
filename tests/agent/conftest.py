"""A small stand-in server (Starlette + uvicorn in a thread) and real agents as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import http.client
import io
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from headway.agent.appstate import app_id_for, find_app_processes
from headway.domain.models import ArtifactRef
from headway.domain.spec import ServiceSpec
from headway.fleet.artifact import build_sample_artifact, sha256_file
from headway.protocol.messages import (
    CHANNEL_PATH,
    ConfigBundle,
    Desired,
    DesiredRelease,
    Hello,
    Observation,
    Report,
    Welcome,
    agent_message,
)

TOKEN = "agent-secret"
APP_PORT = 18080
_taken: set[str] = set()


def free_address(port: int = APP_PORT) -> str:
    """An unused 127.0.20.x where ``port`` can be bound (other test runs may be going on)."""
    candidates = [f"127.0.20.{n}" for n in range(1, 250)]
    random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(candidates)
    for address in candidates:
        if address in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        _taken.add(address)
        return address
    raise RuntimeError("no free 127.0.20.x address for a test app")


def config_tarball(files: dict[str, str | bytes]) -> bytes:
    """A .tar.gz of ``files`` (relative name -> contents), the same bytes for the same files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 946684800
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


class FakeServer:
    """Serves the agent channel and artifacts; records hellos, reports and artifact GETs."""

    def __init__(self, port: int = 0) -> None:
        self.artifacts: dict[str, bytes] = {}
        self.artifact_gets: list[str] = []
        self.configs: dict[str, bytes] = {}
        self.config_gets: list[str] = []
        self.artifact_delay: dict[str, float] = {}
        self.hellos: list[Hello] = []
        self.reports: dict[str, list[Observation]] = {}
        self._desired: dict[str, Desired] = {}
        self._sockets: dict[str, WebSocket] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        app = Starlette(routes=[
            WebSocketRoute(CHANNEL_PATH, self._channel),
            Route("/api/v1/artifacts/{digest}", self._artifact),
            Route("/api/v1/configs/{digest}", self._config),
            Route("/stream/{digest}", self._stream),
        ])
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, ws="websockets-sansio", loop="asyncio", lifespan="off",
                                log_level="warning", ws_ping_interval=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "the test server")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def _artifact(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return Response("bad token", status_code=401)
        digest = request.path_params["digest"]
        self.artifact_gets.append(digest)
        await asyncio.sleep(self.artifact_delay.get(digest, 0.0))
        data = self.artifacts.get(digest)
        if data is None:
            return Response("no such artifact", status_code=404)
        return Response(data, media_type="application/gzip")

    async def _config(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return Response("bad token", status_code=401)
        digest = request.path_params["digest"]
        self.config_gets.append(digest)
        data = self.configs.get(digest)
        if data is None:
            return Response("no such config", status_code=404)
        return Response(data, media_type="application/gzip")

    async def _stream(self, request: Request) -> Response:
        """The artifact in chunks, with no Content-Length (so only the agent's count stops it)."""
        data = self.artifacts[request.path_params["digest"]]

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 256):
                yield data[i : i + 256]

        return StreamingResponse(chunks(), media_type="application/gzip")

    async def _channel(self, ws: WebSocket) -> None:
        if ws.headers.get("authorization") != f"Bearer {TOKEN}":
            await ws.send_denial_response(Response("bad token", status_code=401))
            return
        await ws.accept()
        hello = agent_message.validate_json(await ws.receive_text())
        assert isinstance(hello, Hello)
        host = hello.host
        self.hellos.append(hello)
        self.reports.setdefault(host, []).append(hello.observed)
        self._sockets[host] = ws
        await ws.send_text(Welcome(host=host, heartbeat=1.0).model_dump_json())
        if host in self._desired:
            await ws.send_text(self._desired[host].model_dump_json())
        try:
            while True:
                message = agent_message.validate_json(await ws.receive_text())
                assert isinstance(message, Report)
                self.reports[host].append(message.observed)
        except WebSocketDisconnect:
            pass
        finally:
            if self._sockets.get(host) is ws:
                del self._sockets[host]

    def set_desired(self, host: str, desired: Desired) -> None:
        async def push() -> None:
            self._desired[host] = desired
            ws = self._sockets.get(host)
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.send_text(desired.model_dump_json())

        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(push(), self.loop).result(5)

    def observed(self, host: str) -> Observation | None:
        reports = self.reports.get(host)
        return reports[-1] if reports else None

    def wait_observed(self, host: str, timeout: float = 20.0, **fields: Any) -> Observation:
        def match() -> Observation | None:
            obs = self.observed(host)
            if obs is not None and all(getattr(obs, k) == v for k, v in fields.items()):
                return obs
            return None

        try:
            found: Observation = wait_until(match, timeout, f"{host} to report {fields}")
        except AssertionError:
            raise AssertionError(
                f"{host} never reported {fields}; last: {self.observed(host)}"
            ) from None
        return found

    def add_release(self, version: str, tmp: Path) -> ArtifactRef:
        path = build_sample_artifact(version, tmp / "artifacts-built")
        digest = sha256_file(path)
        self.artifacts[digest] = path.read_bytes()
        return ArtifactRef(digest=digest, size=path.stat().st_size,
                           url=f"/api/v1/artifacts/{digest}")

    def gets_of(self, ref: ArtifactRef) -> int:
        return self.artifact_gets.count(ref.digest)

    def add_config(self, files: dict[str, str | bytes], revision: str = "") -> ConfigBundle:
        return self.add_config_bytes(config_tarball(files), revision)

    def add_config_bytes(self, data: bytes, revision: str = "") -> ConfigBundle:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.configs[digest] = data
        return ConfigBundle(digest=digest, size=len(data), url=f"/api/v1/configs/{digest}",
                            revision=revision)

    def config_gets_of(self, bundle: ConfigBundle) -> int:
        return self.config_gets.count(bundle.digest)


def service(port: int = APP_PORT, stop_timeout: str = "5s", progress: str = "60s",
            config: dict[str, Any] | None = None) -> ServiceSpec:
    return ServiceSpec.model_validate({
        "name": "web",
        "port": port,
        "run": {"start": [sys.executable, "app.py"], "stop_timeout": stop_timeout},
        "health": {"http": {"path": "/healthz"}, "interval": "200ms", "timeout": "1s"},
        "strategy": {"min_healthy_time": "1s", "progress_deadline": progress},
        **({"config": config} if config is not None else {}),
    })


def desired(generation: int, number: int, ref: ArtifactRef, spec: ServiceSpec,
            config: ConfigBundle | None = None, **params: str) -> Desired:
    return Desired(generation=generation,
                   release=DesiredRelease(number=number, artifact=ref, params=params,
                                          config=config),
                   service=spec)


class Agent:
    """``python -m headway.agent`` as a subprocess, with its own state dir and address."""

    def __init__(self, server: FakeServer, tmp: Path, name: str, token: str = TOKEN) -> None:
        self.server = server
        self.name = name
        self.address = free_address()
        self.state_dir = tmp / f"state-{name}"
        self.log_path = tmp / f"agent-{name}.log"
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "headway.agent", "--server", self.server.url,
                 "--token", self.token, "--name", self.name, "--address", self.address,
                 "--label", "service=web", "--state-dir", str(self.state_dir),
                 "--heartbeat", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        return self

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(15)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def app_id(self) -> str:
        return app_id_for(self.state_dir)

    def app_pids(self) -> list[int]:
        return [p.pid for p in find_app_processes(self.app_id)]

    def get(self, path: str = "/", timeout: float = 5.0) -> tuple[int, str, str]:
        """(status, X-App-Version, body) of a GET to this host's app."""
        conn = http.client.HTTPConnection(self.address, APP_PORT, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode()
            return response.status, response.getheader("X-App-Version") or "", body
        finally:
            conn.close()

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None
        for pid in self.app_pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def make_agent(server: FakeServer, tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    agents: list[Agent] = []

    def make(name: str, token: str = TOKEN) -> Agent:
        agent = Agent(server, tmp_path, name, token)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.cleanup()
    wait_until(lambda: not any(a.app_pids() for a in agents), 5, "test apps to exit")
