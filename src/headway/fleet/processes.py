"""Detached processes of the local fleet: start them, recognise them later, stop them.

The launcher hands its processes over to `headway fleet down`, often run by another
process, so it keeps no handle on them: each is recorded by pid, and a pid is only
signalled while it still looks like what was started (`is_headway`, `is_app_of`, and
`headway.fleet.balancer.is_haproxy`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from headway.clock import Clock
from headway.errors import HeadwayError

Log = Callable[[str], None]


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Start ``argv`` in a new session, detached from our terminal, output appended to ``log``.

    `os.posix_spawn` rather than `subprocess.Popen`: the launcher hands the
    processes over to `fleet_down` (often in another process) and keeps no
    handle on them.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    return os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own zombies are reaped)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"] and state != ["X"]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_headway(pid: int) -> bool:
    return is_alive(pid) and any("headway" in part for part in cmdline(pid))


def is_app_of(pid: int, state_dir: Path) -> bool:
    """The app a host's agent started: it runs from inside ``state_dir``."""
    if not is_alive(pid):
        return False
    root = state_dir.resolve()
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = None
    if cwd is not None and cwd.is_relative_to(root):
        return True
    return any(Path(part).is_absolute() and Path(part).is_relative_to(root) for part in cmdline(pid))


def wait_gone(
    pids: Iterable[int], timeout: float, clock: Clock, sleep: Callable[[float], None]
) -> list[int]:
    """Wait up to ``timeout`` for every pid to exit; the ones still running."""
    pending = list(pids)
    deadline = clock.monotonic() + timeout
    while pending:
        pending = [pid for pid in pending if is_alive(pid)]
        if not pending or clock.monotonic() >= deadline:
            break
        sleep(0.05)
    return pending


def stop(
    targets: list[tuple[str, int]],
    timeout: float,
    clock: Clock,
    sleep: Callable[[float], None],
    log: Log,
) -> list[str]:
    """SIGTERM every (label, pid), SIGKILL what outlives ``timeout``; the labels stopped."""
    stopped = []
    for label, pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(label)
    left = wait_gone([pid for _, pid in targets], timeout, clock, sleep)
    for label, pid in targets:
        if pid in left:
            log(f"{label} did not stop within {timeout:g}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_gone(left, 5.0, clock, sleep)
    return stopped


def bind_probe(host: str, port: int) -> int | None:
    """The port a TCP socket binds on ``host`` when asked for ``port`` (0: one the kernel
    picks), or None if something holds it; the probe closes at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return None
        bound: int = probe.getsockname()[1]
        return bound


def find_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port the kernel picks."""
    for port in (preferred, 0):
        bound = bind_probe(host, port)
        if bound is not None:
            return bound
    raise HeadwayError(f"no free TCP port on {host}", hint="stop something that listens there")


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
