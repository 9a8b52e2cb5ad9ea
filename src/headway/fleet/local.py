"""A whole fleet on this machine: one server and N agents as detached processes.

``fleet_up`` starts ``headway server`` on a free loopback port, applies the
sample service (``sample-service.yaml``), publishes release v1 of the sample
app, starts one ``headway agent`` per host, each on its own loopback address
(127.0.10.1, 127.0.10.2, ...), and waits until every host runs v1 healthily.
Everything it starts is recorded in ``<state_dir>/fleet.json`` so that
``fleet_down`` can stop it later from another process:

    <state_dir>/
      fleet.json            server URL and pid, API token, hosts and their agent pids
      server.log            the server's output
      server/               the server's own state dir (database, artifacts, tokens.json)
      artifacts/            sample app tarballs built for upload
      hosts/<name>/         each agent's state dir; agent.log, app.json ({"pid": ...})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from headway.api_models import CreateRelease
from headway.client.api import ApiClient
from headway.clock import Clock, SystemClock
from headway.domain.models import Health, HostView, Release
from headway.domain.spec import ServiceSpec, load_service_yaml
from headway.errors import Conflict, HeadwayError, ServerUnreachable, SpecError
from headway.fleet.artifact import build_sample_artifact

SERVICE = "web"
DEFAULT_PORT = 7400
DEFAULT_ADDRESS_PREFIX = "127.0.10"
FLEET_FILE = "fleet.json"
MAX_HOSTS = 254
TOKEN_ENV = ("HEADWAY_API_TOKEN", "HEADWAY_AGENT_TOKEN", "HEADWAY_TOKEN")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- the sample service ---------------------------------------------------------------------


def sample_spec_text() -> str:
    return resources.files("headway.fleet").joinpath("sample-service.yaml").read_text("utf-8")


def sample_spec() -> ServiceSpec:
    return load_service_yaml(sample_spec_text())


def publish_sample_release(
    client: ApiClient, service: str, version: str, artifacts_dir: Path, note: str = ""
) -> Release:
    """Build the sample app as ``version``, upload it and create a release from it."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    tarball = build_sample_artifact(version, artifacts_dir)
    ref = client.upload_artifact(tarball)
    return client.create_release(
        service, CreateRelease(artifact=ref.digest, note=note or f"sample app {version}")
    )


# --- the record of a running fleet ----------------------------------------------------------


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str
    pid: int
    state_dir: Path

    @property
    def log(self) -> Path:
        return self.state_dir / "agent.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "pid": self.pid,
            "state_dir": str(self.state_dir),
            "log": str(self.log),
        }


@dataclass(frozen=True)
class Fleet:
    server: str
    token: str
    state_dir: Path
    service: str = SERVICE
    server_pid: int = 0
    release: int | None = None
    hosts: tuple[FleetHost, ...] = field(default_factory=tuple)

    @property
    def server_log(self) -> Path:
        return self.state_dir / "server.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "token": self.token,
            "state_dir": str(self.state_dir),
            "service": self.service,
            "release": self.release,
            "server_pid": self.server_pid,
            "server_log": str(self.server_log),
            "hosts": [host.to_json() for host in self.hosts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fleet:
        return cls(
            server=str(data["server"]),
            token=str(data.get("token", "")),
            state_dir=Path(data["state_dir"]),
            service=str(data.get("service", SERVICE)),
            server_pid=int(data.get("server_pid", 0)),
            release=data.get("release"),
            hosts=tuple(
                FleetHost(
                    name=str(h["name"]),
                    address=str(h["address"]),
                    pid=int(h.get("pid", 0)),
                    state_dir=Path(h["state_dir"]),
                )
                for h in data.get("hosts", [])
            ),
        )


def load_fleet(state_dir: Path) -> Fleet | None:
    """The fleet recorded in ``state_dir``, or None when there is no readable record."""
    try:
        data = json.loads((state_dir / FLEET_FILE).read_text("utf-8"))
        return Fleet.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_fleet(fleet: Fleet) -> None:
    path = fleet.state_dir / FLEET_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(fleet.to_json(), out, indent=2)
    tmp.replace(path)


# --- processes ------------------------------------------------------------------------------


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


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_headway(pid: int) -> bool:
    return is_alive(pid) and any("headway" in part for part in _cmdline(pid))


def _is_app_of(pid: int, state_dir: Path) -> bool:
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
    return any(Path(part).is_absolute() and Path(part).is_relative_to(root) for part in _cmdline(pid))


def _wait_gone(
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


def _stop(
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
    left = _wait_gone([pid for _, pid in targets], timeout, clock, sleep)
    for label, pid in targets:
        if pid in left:
            log(f"{label} did not stop within {timeout:g}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone(left, 5.0, clock, sleep)
    return stopped


def find_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            bound: int = probe.getsockname()[1]
            return bound
    raise HeadwayError(f"no free TCP port on {host}", hint="stop something that listens there")


def host_plan(count: int, address_prefix: str = DEFAULT_ADDRESS_PREFIX) -> list[tuple[str, str]]:
    """``[("host-01", "127.0.10.1"), ...]`` for ``count`` hosts."""
    if not 1 <= count <= MAX_HOSTS:
        raise SpecError(
            f"--hosts {count} is out of range", hint=f"a local fleet has 1 to {MAX_HOSTS} hosts"
        )
    octets = address_prefix.split(".")
    if (
        len(octets) != 3
        or octets[0] != "127"
        or not all(o.isdigit() and 0 <= int(o) <= 255 for o in octets)
    ):
        raise SpecError(
            f"address prefix {address_prefix!r} is not three octets of 127.0.0.0/8",
            hint="write it like 127.0.10 (hosts get 127.0.10.1, 127.0.10.2, ...)",
        )
    width = max(2, len(str(count)))
    return [(f"host-{i:0{width}d}", f"{address_prefix}.{i}") for i in range(1, count + 1)]


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- up ---------------------------------------------------------------------------------------


def fleet_up(
    state_dir: Path,
    hosts: int,
    *,
    port: int = DEFAULT_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    timeout: float | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = _quiet,
) -> Fleet:
    """Start a server and ``hosts`` agents; return once every host is healthy on the release.

    On any failure, what was started is stopped again (logs stay in ``state_dir``).
    """
    clock = clock or SystemClock()
    plan = host_plan(hosts, address_prefix)
    state_dir = state_dir.resolve()
    running = load_fleet(state_dir)
    if running is not None and (
        _is_headway(running.server_pid) or any(_is_headway(h.pid) for h in running.hosts)
    ):
        raise Conflict(
            f"a fleet already runs from {state_dir} (server {running.server})",
            hint=f"stop it first: headway fleet down --state-dir {state_dir}",
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _start(state_dir, plan, port, timeout or 60.0 + 2.0 * hosts, clock, sleep, log)
    except BaseException:
        log("start-up failed; stopping what was started")
        fleet_down(state_dir, clock=clock, sleep=sleep)
        raise


def _start(
    state_dir: Path,
    plan: list[tuple[str, str]],
    preferred_port: int,
    timeout: float,
    clock: Clock,
    sleep: Callable[[float], None],
    log: Log,
) -> Fleet:
    env = _child_env()
    port = find_port(preferred_port)
    url = f"http://127.0.0.1:{port}"
    server_state = state_dir / "server"
    server_log = state_dir / "server.log"
    log(f"starting headway server on {url} (log: {server_log})")
    server_pid = spawn(
        [sys.executable, "-m", "headway", "server", "--state-dir", str(server_state),
         "--listen", f"127.0.0.1:{port}"],
        server_log,
        env,
    )
    fleet = Fleet(server=url, token="", state_dir=state_dir, server_pid=server_pid)
    _save_fleet(fleet)
    _wait_server(url, server_pid, server_log, clock, sleep, timeout=30.0)
    tokens = _read_tokens(server_state / "tokens.json", server_log)
    fleet = Fleet(server=url, token=tokens["api"], state_dir=state_dir, server_pid=server_pid)
    _save_fleet(fleet)

    with ApiClient(url, fleet.token, timeout=30.0) as client:
        spec = sample_spec()
        client.apply_service(spec.model_dump(mode="json"))
        log(f"applied service {spec.name}")
        if not client.list_releases(spec.name):
            release = publish_sample_release(client, spec.name, "v1", state_dir / "artifacts")
            log(f"created release {release.service} {release.version}")
        target = client.get_service(spec.name).current_release
        if target is None:
            raise HeadwayError(
                f"service {spec.name} has releases but no current one",
                hint=f"see {server_log}",
            )

        started: list[FleetHost] = []
        agent_env = {**env, "HEADWAY_AGENT_TOKEN": tokens["agent"]}
        for name, address in plan:
            host_dir = state_dir / "hosts" / name
            pid = spawn(
                [sys.executable, "-m", "headway", "agent", "--server", url, "--name", name,
                 "--address", address, "--label", f"service={spec.name}",
                 "--state-dir", str(host_dir)],
                host_dir / "agent.log",
                agent_env,
            )
            started.append(FleetHost(name=name, address=address, pid=pid, state_dir=host_dir))
            fleet = Fleet(
                server=url,
                token=fleet.token,
                state_dir=state_dir,
                service=spec.name,
                server_pid=server_pid,
                release=target,
                hosts=tuple(started),
            )
            _save_fleet(fleet)
        log(f"started {len(started)} agents; waiting for every host to run v{target} healthily")
        wait_hosts(client, fleet, target, timeout=timeout, clock=clock, sleep=sleep)
    log(f"fleet up: {len(started)} hosts healthy on v{target}")
    return fleet


def _wait_server(
    url: str, pid: int, log_path: Path, clock: Clock, sleep: Callable[[float], None], timeout: float
) -> None:
    deadline = clock.monotonic() + timeout
    with ApiClient(url, timeout=2.0) as probe:
        while True:
            if not is_alive(pid):
                raise HeadwayError(
                    f"headway server exited during start-up; its last lines:\n{_tail(log_path)}",
                    hint=f"see {log_path}",
                )
            try:
                probe.healthz()
                return
            except ServerUnreachable:
                pass
            if clock.monotonic() >= deadline:
                raise HeadwayError(
                    f"headway server did not answer {url}/healthz within {timeout:g}s",
                    hint=f"see {log_path}",
                )
            sleep(0.1)


def _read_tokens(path: Path, server_log: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text("utf-8"))
        return {"api": str(data["api"]), "agent": str(data["agent"])}
    except (OSError, ValueError, KeyError, TypeError):
        raise HeadwayError(
            f"the server did not write its tokens to {path}",
            hint=f"see {server_log}",
        ) from None


def _host_ready(host: HostView | None, release: int) -> bool:
    return (
        host is not None
        and host.connected
        and host.observed_release == release
        and host.health is Health.HEALTHY
    )


def wait_hosts(
    client: ApiClient,
    fleet: Fleet,
    release: int,
    *,
    timeout: float,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[HostView]:
    """Poll until every host of ``fleet`` is connected and healthy on ``release``."""
    clock = clock or SystemClock()
    deadline = clock.monotonic() + timeout
    while True:
        seen = {h.name: h for h in client.list_hosts(service=fleet.service)}
        if all(_host_ready(seen.get(h.name), release) for h in fleet.hosts):
            return [seen[h.name] for h in fleet.hosts]
        dead = [h for h in fleet.hosts if not is_alive(h.pid)]
        if dead or clock.monotonic() >= deadline:
            lagging = [h for h in fleet.hosts if not _host_ready(seen.get(h.name), release)]
            why = "agents exited" if dead else f"not healthy on v{release} after {timeout:g}s"
            shown = dead or lagging
            lines = [f"{h.name}: {_describe_host(seen.get(h.name))}" for h in shown[:10]]
            more = f" (and {len(shown) - 10} more)" if len(shown) > 10 else ""
            raise HeadwayError(
                f"hosts {why}: {', '.join(h.name for h in shown)}{more}\n  " + "\n  ".join(lines),
                hint="see their logs: " + ", ".join(str(h.log) for h in shown[:3])
                + (" ..." if len(shown) > 3 else "")
                + f" and {fleet.server_log}",
            )
        sleep(0.2)


def _describe_host(host: HostView | None) -> str:
    if host is None:
        return "never registered with the server"
    state = f"{'connected' if host.connected else 'disconnected'}, "
    state += f"release {host.observed_release or '-'}, {host.health.value}"
    return state + (f" ({host.detail})" if host.detail else "")


# --- down -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownResult:
    stopped: list[str]

    @property
    def nothing_ran(self) -> bool:
        return not self.stopped


def _app_pid(host_dir: Path) -> int:
    try:
        data = json.loads((host_dir / "app.json").read_text("utf-8"))
        return int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def fleet_down(
    state_dir: Path,
    *,
    timeout: float = 10.0,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = _quiet,
) -> DownResult:
    """Stop the agents, then their apps, then the server of the fleet in ``state_dir``.

    SIGTERM first, SIGKILL after ``timeout``. Idempotent: a second call stops nothing.
    Only processes that are still what the record says (a headway process, or
    an app running from the host's state dir) are signalled.
    """
    clock = clock or SystemClock()
    state_dir = state_dir.resolve()
    fleet = load_fleet(state_dir)
    host_dirs = sorted((state_dir / "hosts").glob("*")) if (state_dir / "hosts").is_dir() else []
    stopped: list[str] = []

    agents = [
        (f"agent {h.name} (pid {h.pid})", h.pid) for h in (fleet.hosts if fleet else ()) if _is_headway(h.pid)
    ]
    if agents:
        log(f"stopping {len(agents)} agents")
        stopped += _stop(agents, timeout, clock, sleep, log)

    apps = [
        (f"app on {d.name} (pid {pid})", pid)
        for d in host_dirs
        if (pid := _app_pid(d)) and _is_app_of(pid, d)
    ]
    if apps:
        log(f"stopping {len(apps)} apps")
        stopped += _stop(apps, timeout, clock, sleep, log)

    if fleet is not None and _is_headway(fleet.server_pid):
        log(f"stopping the server (pid {fleet.server_pid})")
        stopped += _stop(
            [(f"server (pid {fleet.server_pid})", fleet.server_pid)], timeout, clock, sleep, log
        )
    return DownResult(stopped=stopped)
