"""Start a real `headway server` process for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    options: dict[str, float | str] = field(default_factory=dict)  # start_server's keywords

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

    @property
    def log(self) -> Path:
        return self.state_dir / str(self.options.get("log_name", "server.log"))

    def pause(self) -> None:
        """SIGSTOP: the process and its sockets stay, it just stops answering (a long pause)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

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
        options = {"reconnect_grace": 5.0, **self.options}
        return start_server(self.state_dir, self.port, self.database_url, **options)  # type: ignore[arg-type]


def start_server(
    state_dir: Path,
    port: int | None = None,
    database_url: str | None = None,
    *,
    reconnect_grace: float = 5.0,
    heartbeat: float = 15.0,
    lease_ttl: float = 10.0,
    log_name: str = "server.log",
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``headway server`` on 127.0.0.1:``port`` and wait for /healthz. Several servers
    may share ``state_dir`` (tokens, artifacts) and ``database_url`` (PostgreSQL); give
    each its own ``log_name``."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    code = (
        "from pathlib import Path; from headway.server.main import run_server; "
        "from headway.server.settings import ServerSettings; "
        f"run_server(ServerSettings(state_dir=Path({str(state_dir)!r}), port={port}, "
        f"database_url={database_url!r}, reconnect_grace={reconnect_grace}, heartbeat={heartbeat}, "
        f"lease_ttl={lease_ttl}))"
    )
    log = open(state_dir / log_name, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    log.close()
    options: dict[str, float | str] = {
        "reconnect_grace": reconnect_grace,
        "heartbeat": heartbeat,
        "lease_ttl": lease_ttl,
        "log_name": log_name,
    }
    server = ServerProcess(state_dir, port, proc, database_url, options)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {state_dir / log_name}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"server did not answer within {timeout}s; see {state_dir / log_name}")
