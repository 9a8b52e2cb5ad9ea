"""One HAProxy in front of a local fleet (local fleets, tests, benchmarks).

HAProxy runs as a child in the foreground (``-db``: no daemon, no master process), so it
ends with its owner; its pid is also written to ``<state_dir>/haproxy.pid``. The backend
starts with no servers: hosts are added and removed over the stats socket
(`headway.traffic.haproxy.HAProxyBackend`). Dynamic servers are not written back to
``haproxy.cfg``, so a restarted HAProxy starts empty again and hosts must be registered anew.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from headway.traffic.base import TrafficError, check_name

# sockaddr_un.sun_path holds 108 bytes including the final NUL.
_MAX_SOCKET_PATH = 107

CONFIG = """\
# Written by Headway (headway.traffic.haproxy_process) at every start; edits are lost.
global
    stats socket {socket} mode 600 level admin
    stats timeout 30s
    maxconn {maxconn}
    # Without SO_REUSEPORT a second HAProxy on the same port fails to start instead of
    # silently taking half of the connections (a leftover from a crashed run, say).
    noreuseport
    # no `daemon`: HAProxy runs in the foreground as a child of whoever started it

defaults
    mode http
    # A request whose connection to a server fails (an app that just stopped) is retried,
    # on another server: together with the drain handshake, no request fails in a rollout.
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    # Long: a slow request must finish during a drain, not be cut by the balancer.
    timeout server 5m
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 30s
    timeout check 2s

frontend traffic
    bind {bind}:{port}
    default_backend {backend}

backend {backend}
    # Dynamic algorithm: needed for `add server`, and weights take effect at once.
    balance roundrobin
    option httpchk GET /healthz
    # Close the server side after each response (clients keep their keep-alive connections).
    # HAProxy never picks a DRAIN server in load balancing, and an idle connection is only
    # reused once its server has been picked, so reuse cannot route a new request to a drained
    # server. But idle keep-alive connections to a draining app would still (1) hold open an
    # app that waits for its connections to close before exiting, (2) make `del server` refuse
    # the server, and (3) after the app restarts, be stale connections HAProxy might try first.
    # Without them, "current sessions = 0" means the app holds no connection from HAProxy at
    # all. The cost is one loopback connect per request.
    option http-server-close
    # Servers are added at run time over the stats socket.
"""


class HAProxyProcess:
    def __init__(
        self,
        state_dir: Path,
        bind: str = "127.0.0.1",
        port: int = 0,
        backend: str = "web",
        *,
        maxconn: int = 4096,
        executable: str = "haproxy",
        start_timeout: float = 10.0,
    ) -> None:
        """``port`` 0 picks a free port on ``bind`` at `start`."""
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.port = port
        self.backend = check_name(backend, "backend")
        self.maxconn = maxconn
        self.executable = executable
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "haproxy.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "haproxy.pid"

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def config_text(self) -> str:
        return CONFIG.format(
            socket=self.socket_path,
            maxconn=self.maxconn,
            bind=self.bind,
            port=self.port,
            backend=self.backend,
        )

    def start(self) -> None:
        if self.running:
            return
        binary = shutil.which(self.executable)
        if binary is None:
            raise TrafficError(
                f"{self.executable} is not installed",
                hint="install the Debian package `haproxy` (scripts/setup.sh does)",
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.socket_path.resolve())) > _MAX_SOCKET_PATH:
            raise TrafficError(
                f"the stats socket path {self.socket_path} is too long for a UNIX socket",
                hint=f"use a state directory whose path is under {_MAX_SOCKET_PATH - 13} bytes",
            )
        if self.port == 0:
            self.port = _free_port(self.bind)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the CLI does not kill it first
            )
        self.pid_path.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise TrafficError(
                    f"HAProxy exited with code {code} at start: {self._log_tail()}",
                    hint=f"see {self.log_path} and {self.config_path}",
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TrafficError(
                    f"HAProxy did not open {self.socket_path} within {self.start_timeout:g}s",
                    hint=f"see {self.log_path}",
                )
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # hard stop: the fleet behind it is going too
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> HAProxyProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1.0)
                conn.connect(str(self.socket_path))
                conn.sendall(b"show info\n")
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
        except OSError:
            return False
        # A HAProxy left over from an earlier run may still answer on this path: ours must.
        return self._proc is not None and f"Pid: {self._proc.pid}\n".encode() in reply

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in lines[-5:] if line.strip()) or "(empty log)"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
