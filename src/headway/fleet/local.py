"""A whole fleet on this machine: one server, one HAProxy and N agents as detached processes.

``fleet_up`` starts ``headway server`` on a free loopback port and one HAProxy
(`headway.fleet.balancer`) with an empty backend ``web`` on another, applies the
sample service (``sample-service.yaml``) with ``traffic: {balancer: haproxy}``
pointing at that HAProxy's stats socket, publishes release v1 of the sample app,
starts one ``headway agent`` per host, each on its own loopback address
(127.0.10.1, 127.0.10.2, ...), and waits until every host runs v1 healthily *and*
HAProxy sends requests to the hosts it should: all of them, or with pools only
the live pool. The server registers each host at HAProxy and admits it once it
is healthy; the launcher never touches the backend itself.

With ``pools=("blue", "green")`` the first half of the hosts (rounded up) get the
label ``pool=blue`` and the rest ``pool=green``; the service's strategy becomes
blue-green, and the first pool is live.

Everything it starts is recorded in ``<state_dir>/fleet.json`` so that
``fleet_down`` can stop it later from another process:

    <state_dir>/
      fleet.json            server URL and pid, API token, HAProxy URL, pid and socket, hosts
      service.yaml          the service spec as applied (edit it and `headway apply -f` it)
      server.log            the server's output
      server/               the server's own state dir (database, artifacts, tokens.json)
      haproxy/              haproxy.cfg, haproxy.log, haproxy.pid and, if the path is short
                            enough for a UNIX socket, haproxy.sock (else under /tmp, see
                            `headway.fleet.balancer.socket_path_for`)
      artifacts/            sample app tarballs built for upload
      hosts/<name>/         each agent's state dir; agent.log, app.json ({"pid": ...})
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from headway.api_models import CreateRelease
from headway.client.api import ApiClient
from headway.clock import Clock, SystemClock
from headway.domain.models import Health, HostView, Release
from headway.domain.spec import (
    BlueGreenStrategy,
    CanaryStrategy,
    RollingStrategy,
    ServiceSpec,
    load_service_yaml,
    parse_service_spec,
)
from headway.errors import Conflict, HeadwayError, ServerUnreachable, SpecError
from headway.fleet import balancer
from headway.fleet.artifact import build_sample_artifact
from headway.fleet.processes import (
    Log,
    bind_probe,
    cmdline,
    find_port,
    is_alive,
    is_app_of,
    is_headway,
    spawn,
    stop,
    tail,
)

__all__ = [
    "DEFAULT_ADDRESS_PREFIX",
    "DEFAULT_POOLS",
    "DEFAULT_PORT",
    "DEFAULT_TRAFFIC_PORT",
    "FLEET_FILE",
    "MAX_HOSTS",
    "SERVICE",
    "DownResult",
    "Fleet",
    "FleetHost",
    "Log",
    "SampleStrategy",
    "assign_pools",
    "blue_green_strategy",
    "cmdline",
    "find_port",
    "fleet_down",
    "fleet_service_spec",
    "fleet_up",
    "host_plan",
    "is_alive",
    "load_fleet",
    "parse_pools",
    "publish_sample_release",
    "sample_spec",
    "sample_spec_text",
    "spawn",
    "wait_hosts",
]

SERVICE = "web"
DEFAULT_PORT = 7400
DEFAULT_TRAFFIC_PORT = 7480
DEFAULT_ADDRESS_PREFIX = "127.0.10"
DEFAULT_POOLS = ("blue", "green")
POOL_LABEL = "pool"
FLEET_FILE = "fleet.json"
SPEC_FILE = "service.yaml"
MAX_HOSTS = 254
TOKEN_ENV = ("HEADWAY_API_TOKEN", "HEADWAY_AGENT_TOKEN", "HEADWAY_TOKEN")

SampleStrategy = RollingStrategy | CanaryStrategy | BlueGreenStrategy


def _quiet(_: str) -> None:
    pass


# --- the sample service ---------------------------------------------------------------------


def sample_spec_text() -> str:
    return resources.files("headway.fleet").joinpath("sample-service.yaml").read_text("utf-8")


def sample_spec() -> ServiceSpec:
    """The sample service as written in ``sample-service.yaml`` (no load balancer)."""
    return load_service_yaml(sample_spec_text())


def blue_green_strategy(
    pools: tuple[str, str] = DEFAULT_POOLS, *, pause: float = 2.0, rollback_window: float = 10.0
) -> BlueGreenStrategy:
    """The local fleet's blue-green: half the traffic to the new pool, ``pause``, all of it,
    then ``rollback_window`` seconds in which ``headway rollback web`` shifts it back."""
    return BlueGreenStrategy.model_validate(
        {
            "type": "blue-green",
            "pools": list(pools),
            "pool_label": POOL_LABEL,
            "shift": ["50%", "100%"],
            "pause": pause,
            "rollback_window": rollback_window,
            "min_healthy_time": 2.0,
            "progress_deadline": 60.0,
        }
    )


def fleet_service_spec(socket_path: Path, strategy: SampleStrategy | None = None) -> ServiceSpec:
    """The sample service behind the fleet's HAProxy (backend ``web``), with ``strategy``."""
    data = sample_spec().model_dump(mode="json")
    data["traffic"] = {
        "balancer": "haproxy",
        "haproxy": {"socket": str(socket_path), "backend": balancer.BACKEND},
    }
    if strategy is not None:
        data["strategy"] = strategy.model_dump(mode="json")
    return parse_service_spec(data)


def parse_pools(text: str) -> tuple[str, str]:
    """``"blue,green"`` -> ``("blue", "green")``; a `SpecError` unless two different names."""
    names = tuple(part.strip() for part in text.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise SpecError(
            f"--pools {text!r} must name two different pools",
            hint="write it like --pools blue,green",
        )
    return names[0], names[1]


def assign_pools(hosts: Sequence[str], pools: tuple[str, str]) -> dict[str, str]:
    """The first half of ``hosts`` (rounded up) in the first pool, the rest in the second.

    >>> assign_pools(["h1", "h2", "h3"], ("blue", "green"))
    {'h1': 'blue', 'h2': 'blue', 'h3': 'green'}
    """
    if len(hosts) < 2:
        raise SpecError(
            "blue-green pools need at least 2 hosts, one in each pool", hint="pass --hosts 2 or more"
        )
    half = (len(hosts) + 1) // 2
    return {name: pools[0] if i < half else pools[1] for i, name in enumerate(hosts)}


def publish_sample_release(
    client: ApiClient,
    service: str,
    version: str,
    artifacts_dir: Path,
    note: str = "",
    *,
    params: dict[str, str] | None = None,
) -> Release:
    """Build the sample app as ``version`` (its ``X-App-Version``), upload it and create a
    release of it with ``params``."""
    tarball = build_sample_artifact(version, artifacts_dir)  # creates artifacts_dir if need be
    ref = client.upload_artifact(tarball)
    return client.create_release(
        service,
        CreateRelease(artifact=ref.digest, params=dict(params or {}), note=note or f"sample app {version}"),
    )


# --- the record of a running fleet ----------------------------------------------------------


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str
    pid: int
    state_dir: Path
    pool: str | None = None

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
            "pool": self.pool,
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
    traffic: str = ""  # HAProxy's URL: send requests here
    haproxy_pid: int = 0
    haproxy_socket: str = ""
    pools: tuple[str, str] | None = None

    @property
    def server_log(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def haproxy_dir(self) -> Path:
        return self.state_dir / "haproxy"

    @property
    def spec_path(self) -> Path:
        return self.state_dir / SPEC_FILE

    def pool_hosts(self, pool: str) -> list[FleetHost]:
        return [h for h in self.hosts if h.pool == pool]

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "token": self.token,
            "traffic": self.traffic,
            "state_dir": str(self.state_dir),
            "service": self.service,
            "service_spec": str(self.spec_path),
            "release": self.release,
            "server_pid": self.server_pid,
            "server_log": str(self.server_log),
            "haproxy_pid": self.haproxy_pid,
            "haproxy_socket": self.haproxy_socket,
            "haproxy_log": str(self.haproxy_dir / "haproxy.log"),
            "pools": list(self.pools) if self.pools else None,
            "hosts": [host.to_json() for host in self.hosts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fleet:
        pools = data.get("pools")
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
                    pool=str(h["pool"]) if h.get("pool") else None,
                )
                for h in data.get("hosts", [])
            ),
            traffic=str(data.get("traffic", "")),
            haproxy_pid=int(data.get("haproxy_pid", 0)),
            haproxy_socket=str(data.get("haproxy_socket", "")),
            pools=(str(pools[0]), str(pools[1])) if pools else None,
        )


def load_fleet(state_dir: Path) -> Fleet | None:
    """The fleet recorded in ``state_dir``, or None when there is no readable record."""
    try:
        data = json.loads((state_dir / FLEET_FILE).read_text("utf-8"))
        return Fleet.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _save_fleet(fleet: Fleet) -> None:
    path = fleet.state_dir / FLEET_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(fleet.to_json(), out, indent=2)
    tmp.replace(path)


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
    traffic_port: int = DEFAULT_TRAFFIC_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    pools: tuple[str, str] | None = None,
    strategy: SampleStrategy | None = None,
    timeout: float | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = _quiet,
) -> Fleet:
    """Start a server, an HAProxy and ``hosts`` agents; return once every host is healthy on
    the release and HAProxy sends requests to exactly the hosts that should serve.

    ``strategy`` replaces the sample service's rolling one; with ``pools`` it defaults to
    `blue_green_strategy`. On any failure, what was started is stopped again (logs stay in
    ``state_dir``).
    """
    clock = clock or SystemClock()
    plan = host_plan(hosts, address_prefix)
    if pools is not None:
        assign_pools([name for name, _ in plan], pools)  # refuses a single host early
        strategy = strategy or blue_green_strategy(pools)
        if isinstance(strategy, BlueGreenStrategy) and tuple(strategy.pools) != pools:
            raise SpecError(
                f"the strategy's pools {strategy.pools} differ from --pools {pools}",
                hint="give the same two pool names to both",
            )
    elif isinstance(strategy, BlueGreenStrategy):
        raise SpecError("a blue-green fleet needs two pools", hint="pass --pools blue,green")
    state_dir = state_dir.resolve()
    running = load_fleet(state_dir)
    if running is not None and (
        is_headway(running.server_pid)
        or any(is_headway(h.pid) for h in running.hosts)
        or balancer.is_haproxy(running.haproxy_pid, running.haproxy_dir / "haproxy.cfg")
    ):
        raise Conflict(
            f"a fleet already runs from {state_dir} (server {running.server})",
            hint=f"stop it first: headway fleet down --state-dir {state_dir}",
        )
    _check_free(plan, sample_spec().port)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _start(
            state_dir,
            plan,
            port,
            traffic_port,
            pools,
            strategy,
            timeout or 60.0 + 2.0 * hosts,
            clock,
            sleep,
            log,
        )
    except BaseException:
        log("start-up failed; stopping what was started")
        fleet_down(state_dir, clock=clock, sleep=sleep)
        raise


def _start(
    state_dir: Path,
    plan: list[tuple[str, str]],
    preferred_port: int,
    traffic_port: int,
    pools: tuple[str, str] | None,
    strategy: SampleStrategy | None,
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
    fleet = Fleet(server=url, token="", state_dir=state_dir, server_pid=server_pid, pools=pools)
    _save_fleet(fleet)

    socket_path = balancer.socket_path_for(state_dir)
    proxy = balancer.FleetHAProxy(state_dir, find_port(traffic_port), socket_path)
    log(f"starting HAProxy on {proxy.url} (stats socket: {socket_path})")
    haproxy_pid = balancer.start_detached(proxy, spawn, env, clock=clock, sleep=sleep)
    fleet = Fleet(
        server=url, token="", state_dir=state_dir, server_pid=server_pid, pools=pools,
        traffic=proxy.url, haproxy_pid=haproxy_pid, haproxy_socket=str(socket_path),
    )
    _save_fleet(fleet)

    _wait_server(url, server_pid, server_log, clock, sleep, timeout=30.0)
    tokens = _read_tokens(server_state / "tokens.json", server_log)
    fleet = replace(fleet, token=tokens["api"])
    _save_fleet(fleet)

    with ApiClient(url, fleet.token, timeout=30.0) as client:
        spec = fleet_service_spec(socket_path, strategy)
        client.apply_service(spec.model_dump(mode="json"))
        fleet.spec_path.write_text(
            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        log(f"applied service {spec.name} ({spec.strategy.type.value}, behind HAProxy)")
        if not client.list_releases(spec.name):
            release = publish_sample_release(client, spec.name, "v1", state_dir / "artifacts")
            log(f"created release {release.service} {release.version}")
        target = client.get_service(spec.name).current_release
        if target is None:
            raise HeadwayError(
                f"service {spec.name} has releases but no current one",
                hint=f"see {server_log}",
            )

        pool_of = assign_pools([name for name, _ in plan], pools) if pools else {}
        started: list[FleetHost] = []
        agent_env = {**env, "HEADWAY_AGENT_TOKEN": tokens["agent"]}
        for name, address in plan:
            host_dir = state_dir / "hosts" / name
            labels = [f"service={spec.name}"]
            if name in pool_of:
                labels.append(f"{POOL_LABEL}={pool_of[name]}")
            pid = spawn(
                [sys.executable, "-m", "headway", "agent", "--server", url, "--name", name,
                 "--address", address, *(arg for label in labels for arg in ("--label", label)),
                 "--state-dir", str(host_dir)],
                host_dir / "agent.log",
                agent_env,
            )
            started.append(
                FleetHost(name=name, address=address, pid=pid, state_dir=host_dir, pool=pool_of.get(name))
            )
            fleet = replace(fleet, service=spec.name, release=target, hosts=tuple(started))
            _save_fleet(fleet)
        log(f"started {len(started)} agents; waiting for every host to run v{target} healthily")
        deadline = clock.monotonic() + timeout
        wait_hosts(client, fleet, target, timeout=timeout, clock=clock, sleep=sleep)

    live = fleet.pool_hosts(pools[0]) if pools else list(fleet.hosts)
    log(f"waiting for HAProxy to send requests to {len(live)} host(s)")
    balancer.wait_serving(
        socket_path,
        [h.name for h in live],
        [h.name for h in fleet.hosts],
        timeout=max(10.0, deadline - clock.monotonic()),
        clock=clock,
        sleep=sleep,
        check=lambda: _check_alive(fleet),
    )
    log(f"fleet up: {len(started)} hosts healthy on v{target}; traffic at {fleet.traffic}")
    return fleet


def _check_free(plan: list[tuple[str, str]], port: int) -> None:
    """Refuse hosts whose address:port something already listens on: another fleet's app
    there would answer this fleet's traffic (and this fleet's app could not start)."""
    taken = [f"{name} ({address}:{port})" for name, address in plan if bind_probe(address, port) is None]
    if taken:
        raise Conflict(
            f"something already listens where hosts would serve: {', '.join(taken[:5])}"
            + (f" and {len(taken) - 5} more" if len(taken) > 5 else ""),
            hint="another local fleet may run there: stop it, or pick other addresses with "
            "--address-prefix (e.g. 127.0.40)",
        )


def _check_alive(fleet: Fleet) -> None:
    if not is_alive(fleet.server_pid):
        raise HeadwayError(
            f"headway server exited; its last lines:\n{tail(fleet.server_log)}",
            hint=f"see {fleet.server_log}",
        )
    if not balancer.is_haproxy(fleet.haproxy_pid, fleet.haproxy_dir / "haproxy.cfg"):
        raise HeadwayError("HAProxy exited", hint=f"see {fleet.haproxy_dir / 'haproxy.log'}")


def _wait_server(
    url: str, pid: int, log_path: Path, clock: Clock, sleep: Callable[[float], None], timeout: float
) -> None:
    deadline = clock.monotonic() + timeout
    with ApiClient(url, timeout=2.0) as probe:
        while True:
            if not is_alive(pid):
                raise HeadwayError(
                    f"headway server exited during start-up; its last lines:\n{tail(log_path)}",
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
    """Connected and healthy on the release the server wants it on (``release`` for a new
    host; a blue-green idle pool may rightly stay on the previous one)."""
    if host is None or not host.connected or host.health is not Health.HEALTHY:
        return False
    wanted = host.desired_release if host.desired_release is not None else release
    return host.observed_release == wanted


def wait_hosts(
    client: ApiClient,
    fleet: Fleet,
    release: int,
    *,
    timeout: float,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[HostView]:
    """Poll until every host of ``fleet`` is connected and healthy on its desired release
    (``release`` unless the server says otherwise)."""
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


def _haproxy_pid(state_dir: Path, fleet: Fleet | None) -> int:
    if fleet is not None and fleet.haproxy_pid:
        return fleet.haproxy_pid
    try:  # fleet.json may predate HAProxy's start when start-up failed half-way
        return int((state_dir / "haproxy" / "haproxy.pid").read_text("utf-8").strip())
    except (OSError, ValueError):
        return 0


def fleet_down(
    state_dir: Path,
    *,
    timeout: float = 10.0,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = _quiet,
) -> DownResult:
    """Stop the agents, then their apps, then HAProxy and the server of the fleet in
    ``state_dir``.

    SIGTERM first, SIGKILL after ``timeout``. Idempotent: a second call stops nothing.
    Only processes that are still what the record says (a headway process, an app
    running from the host's state dir, HAProxy with this fleet's config) are signalled.
    """
    clock = clock or SystemClock()
    state_dir = state_dir.resolve()
    fleet = load_fleet(state_dir)
    host_dirs = sorted((state_dir / "hosts").glob("*")) if (state_dir / "hosts").is_dir() else []
    stopped: list[str] = []

    agents = [
        (f"agent {h.name} (pid {h.pid})", h.pid) for h in (fleet.hosts if fleet else ()) if is_headway(h.pid)
    ]
    if agents:
        log(f"stopping {len(agents)} agents")
        stopped += stop(agents, timeout, clock, sleep, log)

    apps = [
        (f"app on {d.name} (pid {pid})", pid)
        for d in host_dirs
        if (pid := _app_pid(d)) and is_app_of(pid, d)
    ]
    if apps:
        log(f"stopping {len(apps)} apps")
        stopped += stop(apps, timeout, clock, sleep, log)

    haproxy_pid = _haproxy_pid(state_dir, fleet)
    if balancer.is_haproxy(haproxy_pid, state_dir / "haproxy" / "haproxy.cfg"):
        log(f"stopping HAProxy (pid {haproxy_pid})")
        stopped += stop([(f"haproxy (pid {haproxy_pid})", haproxy_pid)], timeout, clock, sleep, log)
    socket_path = balancer.socket_path_for(state_dir)
    if socket_path.parent != state_dir / "haproxy":  # the short path under /tmp: tidy it away
        with contextlib.suppress(OSError):
            socket_path.unlink(missing_ok=True)
            socket_path.parent.rmdir()

    if fleet is not None and is_headway(fleet.server_pid):
        log(f"stopping the server (pid {fleet.server_pid})")
        stopped += stop(
            [(f"server (pid {fleet.server_pid})", fleet.server_pid)], timeout, clock, sleep, log
        )
    return DownResult(stopped=stopped)
