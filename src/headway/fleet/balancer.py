"""The local fleet's HAProxy: started detached, found again by `fleet_down`, polled until ready.

HAProxy's files live in ``<state_dir>/haproxy/`` (``haproxy.cfg``, ``haproxy.log``,
``haproxy.pid``), written by `headway.traffic.HAProxyProcess`'s template. Its stats socket
goes there too (``<state_dir>/haproxy/haproxy.sock``) when that path fits a UNIX socket
address (at most 107 bytes); for deeper state dirs it goes to
``/tmp/headway-<12 hex of sha256(state dir)>/haproxy.sock`` instead, a directory only we
may enter. `socket_path_for` decides, and the chosen path is written in ``fleet.json``
and in the service's traffic spec.

HAProxy runs in the foreground (``-db``) in its own session, like the server and the
agents, with no parent handle: the CLI that started it exits, and `fleet_down` (often
another process) stops it by the pid recorded in ``fleet.json`` once it has checked that
pid still is this HAProxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import socket
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path

from headway.clock import Clock
from headway.errors import HeadwayError
from headway.fleet.processes import cmdline, is_alive, stop
from headway.traffic import HAProxyBackend, HAProxyProcess, ServerState, ServerStats, TrafficError

BACKEND = "web"
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path holds 108 bytes, the last one a NUL
SOCKET_NAME = "haproxy.sock"


def socket_path_for(state_dir: Path) -> Path:
    """``<state_dir>/haproxy/haproxy.sock`` if short enough, else a short path under /tmp.

    >>> socket_path_for(Path("/srv/fleet"))
    PosixPath('/srv/fleet/haproxy/haproxy.sock')
    >>> str(socket_path_for(Path("/x" * 60))).startswith("/tmp/headway-")
    True
    """
    state_dir = Path(os.path.abspath(state_dir))
    inside = state_dir / "haproxy" / SOCKET_NAME
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    return Path("/tmp") / f"headway-{digest}" / SOCKET_NAME


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or accept it only if it is ours and no one else may enter."""
    try:
        path.mkdir(mode=0o700, parents=False)
        return
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HeadwayError(
            f"{path} exists but is not a private directory of this user",
            hint=f"remove {path}, or use a shorter --state-dir so the HAProxy socket fits inside it",
        )


class FleetHAProxy(HAProxyProcess):
    """`HAProxyProcess`'s files and config, with the stats socket where `socket_path_for` says.

    Only its paths and `config_text` are used: `start_detached` spawns HAProxy without
    keeping a `subprocess.Popen` (whose owner exits long before HAProxy does).
    """

    def __init__(self, state_dir: Path, port: int, socket_path: Path) -> None:
        super().__init__(state_dir / "haproxy", port=port, backend=BACKEND)
        self._socket_path = socket_path

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    def config_text(self) -> str:
        """The template's config, plus a log (in ``haproxy.log``) of every request that did
        not end normally: a 5xx, a retry, an aborted connection, with HAProxy's termination
        flags. Requests that went well are not logged."""
        text = super().config_text()
        for section, lines in (
            ("global", ["log stdout format raw local0 info"]),
            ("defaults", ["log global", "option httplog", "option dontlog-normal"]),
        ):
            head = f"\n{section}\n"
            if head not in text:
                raise TrafficError(
                    f"HAProxy's config template has no `{section}` section",
                    hint="headway.traffic.haproxy_process.CONFIG changed; update headway.fleet.balancer",
                )
            text = text.replace(head, head + "".join(f"    {line}\n" for line in lines), 1)
        return text


def start_detached(
    proxy: FleetHAProxy,
    spawn: Callable[[list[str], Path, dict[str, str]], int],
    env: dict[str, str],
    *,
    clock: Clock,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 10.0,
) -> int:
    """Write the config, spawn ``haproxy -db``, wait until its stats socket answers; its pid."""
    binary = shutil.which(proxy.executable)
    if binary is None:
        raise TrafficError(
            "haproxy is not installed; the local fleet runs one in front of its hosts",
            hint="install the Debian package `haproxy` (scripts/setup.sh does)",
        )
    if len(os.fsencode(proxy.socket_path)) > MAX_SOCKET_PATH:  # socket_path_for prevents it
        raise TrafficError(
            f"the stats socket path {proxy.socket_path} is too long for a UNIX socket",
            hint="use a shorter --state-dir",
        )
    proxy.state_dir.mkdir(parents=True, exist_ok=True)
    if proxy.socket_path.parent != proxy.state_dir:
        _private_dir(proxy.socket_path.parent)
    proxy.config_path.write_text(proxy.config_text(), encoding="utf-8")
    pid = spawn([binary, "-db", "-f", str(proxy.config_path)], proxy.log_path, env)
    proxy.pid_path.write_text(f"{pid}\n", encoding="utf-8")
    deadline = clock.monotonic() + timeout
    while not answers(proxy.socket_path, pid):
        # is_alive, not is_haproxy: for a moment after the spawn /proc/<pid>/cmdline is empty
        if not is_alive(pid):
            raise TrafficError(
                f"HAProxy exited at start: {_tail(proxy.log_path)}",
                hint=f"see {proxy.log_path} and {proxy.config_path} (is port {proxy.port} taken?)",
            )
        if clock.monotonic() >= deadline:
            stop([(f"haproxy (pid {pid})", pid)], 5.0, clock, sleep, lambda _: None)
            raise TrafficError(
                f"HAProxy did not open {proxy.socket_path} within {timeout:g}s",
                hint=f"see {proxy.log_path}",
            )
        sleep(0.02)
    return pid


def answers(socket_path: Path, pid: int) -> bool:
    """True if the HAProxy with ``pid`` answers ``show info`` on ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(socket_path))
            conn.sendall(b"show info\n")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    except OSError:
        return False
    return f"Pid: {pid}\n".encode() in reply


def is_haproxy(pid: int, config_path: Path) -> bool:
    """True while ``pid`` is a live HAProxy started with ``config_path`` (once it has
    started: while a spawned process execs, its command line reads empty)."""
    if not is_alive(pid):
        return False
    argv = cmdline(pid)
    return bool(argv) and "haproxy" in Path(argv[0]).name and str(config_path) in argv


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:] if line.strip()) or "(empty log)"


def server_stats(socket_path: Path, backend: str = BACKEND) -> dict[str, ServerStats]:
    """Every server of ``backend`` as HAProxy reports it now (a synchronous helper)."""
    adapter = HAProxyBackend(socket_path, backend, rng=random.Random(0), attempts=2)
    return asyncio.run(adapter.stats())


def serving(stats: dict[str, ServerStats]) -> set[str]:
    """Servers that take new requests: admin state READY, health UP, weight above 0."""
    return {
        name
        for name, s in stats.items()
        if s.admin_state is ServerState.READY and s.status.startswith("UP") and s.weight > 0
    }


def wait_serving(
    socket_path: Path,
    expected: Collection[str],
    registered: Collection[str],
    *,
    timeout: float,
    clock: Clock,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] = lambda: None,
) -> dict[str, ServerStats]:
    """Poll until every host in ``registered`` is a server of the backend and exactly
    ``expected`` of them take requests; ``check`` may raise to give up early."""
    deadline = clock.monotonic() + timeout
    want = set(expected)
    while True:
        try:
            stats = server_stats(socket_path)
        except TrafficError:
            stats = {}
        if set(registered) <= set(stats) and serving(stats) == want:
            return stats
        check()
        if clock.monotonic() >= deadline:
            now = serving(stats)
            missing = sorted(set(registered) - set(stats))
            raise HeadwayError(
                f"HAProxy does not serve the expected hosts after {timeout:g}s: "
                f"serving {sorted(now) or 'none'}, expected {sorted(want)}"
                + (f"; not registered: {missing}" if missing else ""),
                hint="the server registers and admits hosts once they are healthy; "
                "see the server log",
            )
        sleep(0.2)
