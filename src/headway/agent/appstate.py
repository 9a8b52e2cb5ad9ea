"""Which process runs which release: ``app.json``, and finding the app again in ``/proc``.

Every app the agent starts carries ``HEADWAY_APP_ID`` (derived from the state
directory's path) in its environment and leads its own session. So the agent
can find its app after a crash, after its state directory was deleted, and
tell it from an unrelated process that got the same pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from headway.agent.files import atomic_write_json, read_json
from headway.agent.target import Target
from headway.domain.spec import ExecutorKind

APP_FILE = "app.json"


def app_id_for(state_dir: Path) -> str:
    """A stable id for the app of the agent that owns ``state_dir`` (same path, same id)."""
    path = os.path.abspath(os.fspath(state_dir))
    return "hw-" + hashlib.sha256(path.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class AppRecord:
    """What ``app.json`` says: the app process, its release, and the converged generation."""

    pid: int | None                 # None: not running (crashed) or run by 'commands'
    release: int
    generation: int                 # generation of the desired state converged to
    started_at: float               # wall clock, for people reading the file
    release_dir: str
    executor: ExecutorKind = ExecutorKind.PROCESS
    target: Target | None = None    # None when rebuilt from /proc (no spec known yet)

    @property
    def dir_name(self) -> str:
        return Path(self.release_dir).name

    def with_(self, **changes: Any) -> AppRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "release": self.release,
            "generation": self.generation,
            "started_at": self.started_at,
            "release_dir": self.release_dir,
            "executor": self.executor.value,
            "target": self.target.to_json() if self.target else None,
        }


def load_app(state_dir: Path) -> AppRecord | None:
    data = read_json(state_dir / APP_FILE)
    if data is None:
        return None
    try:
        pid = data.get("pid")
        return AppRecord(
            pid=int(pid) if pid is not None else None,
            release=int(data["release"]),
            generation=int(data.get("generation", 0)),
            started_at=float(data.get("started_at", 0.0)),
            release_dir=str(data["release_dir"]),
            executor=ExecutorKind(data.get("executor", "process")),
            target=Target.from_json(data.get("target")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def save_app(state_dir: Path, record: AppRecord | None) -> None:
    path = state_dir / APP_FILE
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    atomic_write_json(path, record.to_json())


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    start_ticks: int              # start time in clock ticks since boot (orders processes)
    release: int | None
    release_dir: str


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def inspect(pid: int, app_id: str) -> ProcessInfo | None:
    """Our app's main process at ``pid``, or None (gone, a zombie, or someone else's process)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X") or int(fields[3]) != pid:
        return None          # dead, or not a session leader (a worker the app forked)
    env = _environ(pid)
    if env is None or env.get("HEADWAY_APP_ID") != app_id:
        return None
    raw_release = env.get("HEADWAY_RELEASE", "").removeprefix("v")
    return ProcessInfo(
        pid=pid,
        start_ticks=int(fields[19]),
        release=int(raw_release) if raw_release.isdigit() else None,
        release_dir=env.get("HEADWAY_RELEASE_DIR", ""),
    )


def find_app_processes(app_id: str) -> list[ProcessInfo]:
    """Every live session leader whose environment holds ``HEADWAY_APP_ID=app_id``, oldest first."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                info = inspect(int(entry.name), app_id)
                if info is not None:
                    found.append(info)
    return sorted(found, key=lambda p: p.start_ticks)
