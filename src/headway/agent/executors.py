"""How the agent starts and stops the app: an `Executor` protocol, two implementations.

``process``: the agent runs ``run.start`` itself (an argument list, never a
shell) in its own session, so the app outlives the agent; stopping sends
SIGTERM to the process group, then SIGKILL after ``run.stop_timeout``.
``commands``: the service's own ``run.start`` / ``run.stop`` do the work
(systemd units and the like); the health check tells whether it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from headway.agent.appstate import inspect
from headway.clock import Clock
from headway.domain.spec import ExecutorKind

START_COMMAND_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 10.0


class StartFailed(Exception):
    """The app could not be started; ``str()`` says why, for the report's detail."""


@dataclass(frozen=True)
class Launch:
    """Everything needed to start and stop one release of the app."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    stop_argv: list[str] | None = None
    stop_timeout: float = DEFAULT_STOP_TIMEOUT


@dataclass(frozen=True)
class Exited:
    code: int | None     # None: the process was not ours to reap, so its code is unknown


class Executor(Protocol):
    kind: ExecutorKind

    async def start(self, launch: Launch) -> int | None:
        """Start the app; its pid (None if the executor has none). Raises `StartFailed`."""
        ...

    def poll(self, pid: int | None) -> Exited | None:
        """None while the app runs (or cannot be known to have stopped)."""
        ...

    async def stop(self, pid: int | None, launch: Launch | None) -> str:
        """Stop the app and wait for it; "" or what went wrong. Never raises."""
        ...


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def run_command(
    argv: list[str],
    *,
    cwd: Path | None,
    env: dict[str, str] | None,
    timeout: float,
    log_path: Path | None = None,
) -> tuple[int | None, str]:
    """Run ``argv`` to completion; (exit code or None, a description of a failure)."""
    log_fd = _open_log(log_path) if log_path else subprocess.DEVNULL
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd if cwd and cwd.is_dir() else None, env=env,
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            return None, f"cannot run: {error.strerror or error}"
    finally:
        if log_path:
            os.close(log_fd)
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None, f"timed out after {timeout:g}s"
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code, "" if code == 0 else f"exited with code {code}"


class ProcessExecutor:
    """Runs the app as a child in its own session and supervises it by pid."""

    kind = ExecutorKind.PROCESS

    def __init__(self, app_id: str, clock: Clock) -> None:
        self.app_id = app_id
        self.clock = clock
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    async def start(self, launch: Launch) -> int:
        log_fd = _open_log(launch.log_path)
        try:
            child = subprocess.Popen(
                launch.argv, cwd=launch.cwd, env=launch.env, stdin=subprocess.DEVNULL,
                stdout=log_fd, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        except OSError as error:
            raise StartFailed(
                f"cannot start {launch.argv[0]!r}: {error.strerror or error}"
            ) from None
        finally:
            os.close(log_fd)
        self._children[child.pid] = child
        return child.pid

    def poll(self, pid: int | None) -> Exited | None:
        if pid is None:
            return Exited(None)
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            return None if code is None else Exited(code)
        return None if inspect(pid, self.app_id) is not None else Exited(None)

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def send(self, pid: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to the app's process group (a config reload); False if it is gone."""
        if self.poll(pid) is not None:
            return False
        self._signal(pid, sig)
        return True

    async def _wait(self, pid: int, seconds: float) -> bool:
        deadline = self.clock.monotonic() + seconds
        while self.poll(pid) is None:
            if self.clock.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, pid: int | None, launch: Launch | None) -> str:
        if pid is None or self.poll(pid) is not None:
            self._children.pop(pid or -1, None)
            return ""
        timeout = launch.stop_timeout if launch else DEFAULT_STOP_TIMEOUT
        self._signal(pid, signal.SIGTERM)
        detail = ""
        if not await self._wait(pid, timeout):
            detail = f"app did not stop within {timeout:g}s of SIGTERM; killed it"
            self._signal(pid, signal.SIGKILL)
            await self._wait(pid, 5.0)
        self._children.pop(pid, None)
        return detail

    def detach(self) -> None:
        """Let the apps we started outlive us without a "still running" warning at exit.

        Marking a still-running child as finished makes `Popen` forget it;
        once the agent exits, init (or a subreaper) reaps it instead.
        """
        for child in self._children.values():
            if child.poll() is None:
                child.returncode = -1
        self._children.clear()


class CommandsExecutor:
    """Runs the service's own start and stop commands (e.g. ``systemctl start app``)."""

    kind = ExecutorKind.COMMANDS

    async def start(self, launch: Launch) -> None:
        code, detail = await run_command(
            launch.argv, cwd=launch.cwd, env=launch.env, timeout=START_COMMAND_TIMEOUT,
            log_path=launch.log_path,
        )
        if code != 0:
            raise StartFailed(f"start command {launch.argv[0]!r} {detail}")

    def poll(self, pid: int | None) -> Exited | None:
        return None

    async def stop(self, pid: int | None, launch: Launch | None) -> str:
        if launch is None or not launch.stop_argv:
            return "no stop command known for the running release; left it as it is"
        code, detail = await run_command(
            launch.stop_argv, cwd=launch.cwd, env=launch.env, timeout=launch.stop_timeout,
            log_path=launch.log_path,
        )
        return "" if code == 0 else f"stop command {launch.stop_argv[0]!r} {detail}; went on"
