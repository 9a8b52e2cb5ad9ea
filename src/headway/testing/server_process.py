"""Start a real `headway server` process for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    database_url: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tokens(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.state_dir / "tokens.json").read_text())
        return data

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.tokens['api']}"},
            timeout=30,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProcess:
        self.kill()
        return start_server(self.state_dir, self.port, self.database_url, reconnect_grace=5.0)


def start_server(
    state_dir: Path,
    port: int | None = None,
    database_url: str | None = None,
    *,
    reconnect_grace: float = 5.0,
    heartbeat: float = 15.0,
    timeout: float = 30.0,
) -> ServerProcess:
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    code = (
        "from pathlib import Path; from headway.server.main import run_server; "
        "from headway.server.settings import ServerSettings; "
        f"run_server(ServerSettings(state_dir=Path({str(state_dir)!r}), port={port}, "
        f"database_url={database_url!r}, reconnect_grace={reconnect_grace}, heartbeat={heartbeat}))"
    )
    log = open(state_dir / "server.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    log.close()
    server = ServerProcess(state_dir, port, proc, database_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {state_dir / 'server.log'}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"server did not answer within {timeout}s; see {state_dir / 'server.log'}")
