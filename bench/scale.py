"""T3/T4/T5 scale check: one real server, N simulated agents, a change pushed to all of
them at once, a rolling upgrade and a rollback.

    python bench/scale.py --agents 1000 [--batches 10] [--restart-time 1.0] [--json]
    python bench/scale.py --agents 1000 --database postgresql --servers 2

Starts ``headway server`` (SQLite in a temporary directory) as a child
process (with ``--database postgresql``: ``--servers`` of them on a fresh
schema of the PostgreSQL test database, dropped afterwards, sharing one
state directory; the API calls go to the leader; the agents are spread
evenly over the servers, agent i starting at server i mod N with the
others after it in its list, so that failover would work), applies a
service whose rolling strategy upgrades ``agents/batches`` hosts at a time,
uploads a tiny artifact and creates release v1. Then it runs N `SimAgent`s
in this process, each speaking the real WebSocket protocol from its own
source address (127.40.x.y), and measures:

- connect: from starting the agents until every one has its ``welcome``;
- install: from starting the agents until the server sees every host
  healthy on v1;
- propagation (T4; skip with ``--no-propagation``): a change of 1 KiB
  (``--config-bytes``) delivered to every host at once, from the server's
  timestamp of the change (taken before its commit) to each agent's
  acknowledgement (its report of the new release, healthy), as p50/p99/max
  over the agents that are not slow. 1% of the agents (``--slow-fraction``)
  take ``--slow-time`` seconds to apply it; the others apply at once
  (``--apply-time``). Until configuration releases land, the change is
  modelled as release v2 = v1 with a 1 KiB parameter, rolled out with one
  batch of 100% and ``min_healthy_time: 0s``;
- rollout: from ``POST .../rollouts`` (to a copy of the current release
  with a changed param) until the server reports the rollout ``succeeded``;
  the floor is batches x restart time;
- rollback: from ``POST .../rollback`` until the rollback rollout has
  succeeded and the server sees every host healthy on the previous release
  again (T5).

The server's RSS and CPU time are read from /proc/<pid> apart from this
process's, which carries the simulator (with several servers: each one's,
and their sum; on PostgreSQL also the CPU of the database sessions the
servers opened, found by their ``application_name``). Benchmarks live in ``bench/``, not
in the test suite; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psycopg
from sqlalchemy.engine import url as sa_url

from headway.clock import SystemClock
from headway.domain.models import Health
from headway.protocol.messages import Desired, ErrorMessage, Welcome, server_message
from headway.sim import agents as sim_agents
from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.cluster import Cluster
from headway.testing.pg import POSTGRES_URL, fresh_schema
from headway.testing.server_process import ServerProcess, start_server

SERVICE = "web"
TERMINAL = {"succeeded", "failed", "rolled_back", "aborted"}
CLOCK = SystemClock()
PAGE_KIB = 1024


# ----------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    agents: int = 1000
    batches: int = 10
    restart_time: float = 1.0
    phase_timeout: float = 300.0  # seconds allowed for each phase before giving up
    poll: float = 0.05  # seconds between polls of the REST API
    seed: int = 0
    profile: Path | None = None  # py-spy flame graph of the server, if py-spy is installed
    propagation: bool = True  # measure T4 before the rollout
    config_bytes: int = 1024  # size of the change pushed in the propagation phase
    slow_fraction: float = 0.01  # agents that apply the change slowly
    slow_time: float = 5.0  # seconds a slow agent takes to apply it
    apply_time: float = 0.0  # seconds the other agents take to apply it
    database: str = "sqlite"  # or "postgresql": a fresh schema of postgres_url
    servers: int = 1  # server processes on that database (more than one: PostgreSQL)
    postgres_url: str = POSTGRES_URL
    logs: Path | None = None  # where to keep the servers' logs (else they go with the run)
    lease_ttl: float = 10.0  # PostgreSQL: the leader's lease (headway server --lease-ttl)
    stalls: bool = False  # time a GET /healthz of each server every 0.25 s (adds a little load)


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents (default 1000)")
    parser.add_argument("--batches", type=int, default=10, help="rolling batches (default 10)")
    parser.add_argument(
        "--restart-time", type=float, default=1.0, help="simulated restart, seconds (default 1.0)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-propagation", action="store_true", help="skip the propagation phase (T4)"
    )
    parser.add_argument(
        "--config-bytes", type=int, default=1024, help="size of the change pushed (default 1024)"
    )
    parser.add_argument(
        "--slow-fraction", type=float, default=0.01, help="share of slow agents (default 0.01)"
    )
    parser.add_argument(
        "--slow-time", type=float, default=5.0, help="seconds a slow agent takes to apply (default 5)"
    )
    parser.add_argument(
        "--apply-time", type=float, default=0.0, help="seconds the other agents take to apply (default 0)"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="sqlite (default: a file in a temporary directory) or postgresql (a fresh schema "
        "of --postgres-url, dropped afterwards)",
    )
    parser.add_argument(
        "--servers", type=int, default=1, help="server processes on that database (default 1)"
    )
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help=f"PostgreSQL database (default {POSTGRES_URL})"
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the servers' logs in this directory"
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        help="PostgreSQL: the leader's lease, seconds (default 10, as headway server's)",
    )
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="time a GET /healthz of each server every 0.25 s: the longest is how long its "
        "event loop stood still (a runner batch runs on it); off by default",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy profile of the server: flame graph (.svg) or collapsed stacks (.txt); needs py-spy",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or args.agents > 60_000:
        parser.error("--agents must be between 1 and 60000")
    if args.batches < 1 or args.batches > args.agents:
        parser.error("--batches must be between 1 and --agents")
    if args.restart_time < 0 or args.slow_time < 0 or args.apply_time < 0:
        parser.error("--restart-time, --slow-time and --apply-time must be 0 or more")
    if not 0 <= args.slow_fraction < 1:
        parser.error("--slow-fraction must be at least 0 and below 1")
    if args.config_bytes < 0:
        parser.error("--config-bytes must be 0 or more")
    if args.servers < 1 or args.servers > 16:
        parser.error("--servers must be between 1 and 16")
    if args.lease_ttl <= 0:
        parser.error("--lease-ttl must be above 0")
    if args.servers > 1 and args.database != "postgresql":
        parser.error("several servers share a PostgreSQL database: add --database postgresql")
    options = Options(
        agents=args.agents,
        batches=args.batches,
        restart_time=args.restart_time,
        phase_timeout=args.timeout,
        seed=args.seed,
        profile=args.profile,
        propagation=not args.no_propagation,
        config_bytes=args.config_bytes,
        slow_fraction=args.slow_fraction,
        slow_time=args.slow_time,
        apply_time=args.apply_time,
        database=args.database,
        servers=args.servers,
        postgres_url=args.postgres_url,
        logs=args.logs,
        stalls=args.stalls,
        lease_ttl=args.lease_ttl,
    )
    return options, bool(args.json)


# ------------------------------------------------------------------ result


@dataclass
class ServerFigures:
    """One server of several: its part, its agents (those that started at it), its cost."""

    index: int
    url: str = ""
    role: str = ""  # leader or follower, when the agents started
    agents: int = 0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    cpu_by_phase_s: dict[str, float] = field(default_factory=dict)
    longest_stall_s: float = 0.0  # with --stalls: the slowest GET /healthz (else 0)
    # propagation to the agents connected to this server when the change was made (not slow)
    propagation_p50_s: float = 0.0
    propagation_p99_s: float = 0.0


@dataclass
class ScaleResult:
    agents: int
    batches: int
    restart_time_s: float
    connect_s: float = 0.0
    install_s: float = 0.0
    # T4: seconds from the change's server timestamp to each agent's acknowledgement
    propagation_agents: int = 0  # agents measured (not slow)
    propagation_slow_agents: int = 0
    propagation_p50_s: float = 0.0
    propagation_p99_s: float = 0.0
    propagation_max_s: float = 0.0
    propagation_slow_max_s: float = 0.0  # slow agents: about --slow-time
    propagation_server_s: float = 0.0  # until the server had every acknowledgement (rollout end)
    rollout_status: str = ""
    rollout_s: float = 0.0
    rollout_server_s: float = 0.0  # updated_at - created_at of the rollout, server clock
    floor_s: float = 0.0
    rollback_status: str = ""
    rollback_s: float = 0.0
    # T5 as the targets measure it, from the rollout's own timestamps (server clock): from
    # the rollback's start (the abort decision) to its last host back on the previous release
    rollback_server_s: float = 0.0
    server_peak_rss_mib: float = 0.0
    server_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0
    server_cpu_by_phase_s: dict[str, float] = field(default_factory=dict)
    extra_restarts: int = 0  # agent restarts beyond v1, v2, back to v1: should be 0
    # desired messages an agent received again with the generation it had just received
    # (a simulated agent starts its restart over on one; a real agent ignores it)
    repeated_desired: int = 0
    server_log_warnings: int = 0
    machine: str = ""
    database: str = "sqlite"
    servers: int = 1
    lease_ttl_s: float = 0.0  # PostgreSQL: the leader's lease
    # several servers (or PostgreSQL): the sums above are over the servers; each one here
    per_server: list[ServerFigures] = field(default_factory=list)
    # PostgreSQL: CPU of the database sessions the servers opened (their backends)
    database_cpu_s: float = 0.0
    database_cpu_by_phase_s: dict[str, float] = field(default_factory=dict)
    server_log_lines: list[str] = field(default_factory=list)  # distinct warnings, a few

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("agents", f"{self.agents}"),
            ("batches x restart", f"{self.batches} x {self.restart_time_s:g} s"),
            ("connect time", f"{self.connect_s:.2f} s"),
            ("initial install time", f"{self.install_s:.2f} s"),
            (
                "propagation p50/p99/max",
                f"{self.propagation_p50_s:.3f} / {self.propagation_p99_s:.3f} / "
                f"{self.propagation_max_s:.3f} s over {self.propagation_agents} agents",
            ),
            (
                "  slow agents, server",
                f"{self.propagation_slow_agents} slow, last at {self.propagation_slow_max_s:.2f} s; "
                f"server had all at {self.propagation_server_s:.2f} s",
            ),
            ("rollout time", f"{self.rollout_s:.2f} s ({self.rollout_status})"),
            ("rollout, server timestamps", f"{self.rollout_server_s:.2f} s"),
            ("rollout floor", f"{self.floor_s:.2f} s"),
            ("rollout / floor", f"{self.rollout_s / self.floor_s:.2f}" if self.floor_s else "-"),
            ("rollback time", f"{self.rollback_s:.2f} s ({self.rollback_status})"),
            ("rollback, server timestamps", f"{self.rollback_server_s:.2f} s"),
            ("server peak RSS", f"{self.server_peak_rss_mib:.1f} MiB"),
            ("server CPU", f"{self.server_cpu_s:.2f} s"),
            (
                "  by phase",
                ", ".join(f"{k} {v:.2f}" for k, v in self.server_cpu_by_phase_s.items()),
            ),
            ("bench CPU", f"{self.bench_cpu_s:.2f} s"),
            ("extra agent restarts", f"{self.extra_restarts}"),
            ("server log warnings", f"{self.server_log_warnings}"),
            *self.cluster_rows(),
        ]

    def cluster_rows(self) -> list[tuple[str, str]]:
        """What a PostgreSQL run adds (nothing for the default: SQLite, one server)."""
        if self.database == "sqlite" and self.servers == 1:
            stall = self.per_server[0].longest_stall_s if self.per_server else 0.0
            return [("longest server stall", f"{stall:.2f} s")] if stall else []
        rows = [
            ("database, servers, lease", f"{self.database}, {self.servers}, {self.lease_ttl_s:g} s"),
            ("repeated desired messages", f"{self.repeated_desired}"),
        ]
        for s in self.per_server:
            rows.append(
                (
                    f"  server {s.index} ({s.role})",
                    f"{s.agents} agents, propagation p50/p99 {s.propagation_p50_s:.3f} / "
                    f"{s.propagation_p99_s:.3f} s, CPU {s.cpu_s:.2f} s, peak RSS {s.peak_rss_mib:.1f} MiB, "
                    f"longest stall {s.longest_stall_s:.2f} s; "
                    + ", ".join(f"{k} {v:.2f}" for k, v in s.cpu_by_phase_s.items()),
                )
            )
        rows.append(("database sessions CPU", f"{self.database_cpu_s:.2f} s"))
        rows.append(
            ("  by phase", ", ".join(f"{k} {v:.2f}" for k, v in self.database_cpu_by_phase_s.items()))
        )
        rows.extend(("  log", line) for line in self.server_log_lines)
        return rows

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.rows())


# ---------------------------------------------------------- process probes


class ProcProbe:
    """RSS and CPU time of one process, from /proc (Linux), without extra dependencies."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kib = 0
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15
        return (utime + stime) / self._ticks

    def sample(self) -> None:
        status = self._status()
        self.peak_rss_kib = max(self.peak_rss_kib, status.get("VmRSS", 0), status.get("VmHWM", 0))

    def _status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                out[key] = int(value.split()[0])  # kB
        return out

    async def watch(self, interval: float = 0.2) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.sample()
            await asyncio.sleep(interval)


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def raise_fd_limit(agents: int) -> None:
    """Each agent holds one socket here and one in the server, a child that inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = agents + 1024
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        raise SystemExit(
            f"{agents} agents need about {want} file descriptors but the hard limit is {hard}; "
            f"raise it (ulimit -Hn) or run fewer agents"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def agent_address(i: int) -> str:
    """127.40.0.1, 127.40.0.2, ... 127.40.0.250, 127.40.1.1, ...: one source address per agent."""
    return f"127.40.{i // 250}.{i % 250 + 1}"


def tiny_tarball(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """Record the server with py-spy while the body runs (nothing if ``out`` is None)."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy (into the venv, not pyproject)")
    kind = "raw" if out.suffix == ".txt" else "flamegraph"  # raw: collapsed stacks, to grep
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--output", str(out), "--format", kind, "--rate", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes the SVG on SIGINT
        try:
            recorder.wait(60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model or platform.processor()}, Python {platform.python_version()}"


# ------------------------------------------------------------------ phases


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, poll: float
) -> float:
    """Poll ``check`` until true; the monotonic time it first was. TimeoutError naming ``what``."""
    deadline = CLOCK.monotonic() + timeout
    while True:
        if await check():
            return CLOCK.monotonic()
        if CLOCK.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(poll)


def agents_on(agents: Sequence[SimAgent], release: int) -> bool:
    return all(a.release == release and a.health is Health.HEALTHY for a in agents)


async def server_sees(api: httpx.AsyncClient, release: int, n: int) -> bool:
    hosts: list[dict[str, Any]] = (await api.get("/api/v1/hosts", params={"service": SERVICE})).json()
    return len(hosts) == n and all(
        h["observed_release"] == release and h["health"] == "healthy" and h["connected"] for h in hosts
    )


async def everyone_on(
    api: httpx.AsyncClient, agents: Sequence[SimAgent], release: int, options: Options
) -> float:
    """Wait until the agents say so (cheap), then until the server agrees; when it did."""

    async def local() -> bool:
        return agents_on(agents, release)

    async def remote() -> bool:
        return await server_sees(api, release, len(agents))

    await wait_until(f"all agents on v{release}", local, options.phase_timeout, 0.01)
    return await wait_until(f"server sees all on v{release}", remote, options.phase_timeout, options.poll)


async def wait_rollout(api: httpx.AsyncClient, rollout_id: str, options: Options) -> dict[str, Any]:
    """Poll the summary list (no per-host rows) until the rollout ends."""
    found: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal found
        rows = (await api.get("/api/v1/rollouts", params={"service": SERVICE, "limit": 5})).json()
        found = next((r["rollout"] for r in rows if r["rollout"]["id"] == rollout_id), {})
        return found.get("status") in TERMINAL

    await wait_until(f"rollout {rollout_id} to end", ended, options.phase_timeout, options.poll)
    return found


def check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


def service_spec(per_batch: int | str) -> dict[str, Any]:
    return {
        "name": SERVICE,
        "run": {"start": ["python3", "app.py"]},
        "health": {"http": {"path": "/healthz"}},
        "strategy": {
            "batch_size": per_batch,
            "max_unavailable": per_batch,
            "min_healthy_time": "0s",
            "progress_deadline": "120s",
        },
    }


async def apply_service(api: httpx.AsyncClient, per_batch: int | str) -> None:
    check(await api.post("/api/v1/services", json={"spec": service_spec(per_batch)}), "apply service")


async def setup_service(api: httpx.AsyncClient, options: Options) -> None:
    await apply_service(api, max(1, options.agents // options.batches))
    artifact = check(await api.post("/api/v1/artifacts", content=tiny_tarball("v1")), "upload artifact")
    release = check(
        await api.post(f"/api/v1/services/{SERVICE}/releases", json={"artifact": artifact["digest"]}),
        "create v1",
    )
    assert release["number"] == 1, release


def repeats(seen: Sequence[tuple[int | None, int]]) -> int:
    """Messages that repeat the generation of the one before."""
    return sum(1 for before, after in itertools.pairwise(seen) if before[1] == after[1])


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Acks:
    """When each agent acknowledged a release (wall clock, like the server's timestamps)."""

    def __init__(self) -> None:
        self.release = 0
        self.at: dict[str, float] = {}

    def __call__(self, agent: SimAgent, generation: int) -> None:
        if agent.release == self.release and agent.name not in self.at:
            self.at[agent.name] = CLOCK.now()


async def propagate(
    api: httpx.AsyncClient,
    agents: Sequence[SimAgent],
    slow: set[str],
    configs: AgentConfigs,
    options: Options,
    result: ScaleResult,
) -> int:
    """T4: one change to every host at once; per-agent time from its commit to the ack.

    Returns the new release's number.
    """
    configs.set_times(options.apply_time, options.slow_time)
    await apply_service(api, "100%")
    payload = "c" * options.config_bytes  # the 1 KiB "config", as a release parameter
    created = check(
        await api.post(
            f"/api/v1/services/{SERVICE}/releases",
            json={"from_version": "v1", "params": {"BENCH_CONFIG": payload}},
        ),
        "create the propagated release",
    )
    acks = Acks()
    acks.release = int(created["number"])
    for agent in agents:
        agent.on_applied = acks
    started = check(await api.post(f"/api/v1/services/{SERVICE}/rollouts", json={}), "start propagation")
    committed = float(started["rollout"]["created_at"])  # server clock, before the commit
    ended = await wait_rollout(api, started["rollout"]["id"], options)
    if ended["status"] != "succeeded":
        raise RuntimeError(f"propagation rollout ended {ended['status']}: {ended.get('reason', '')}")
    result.propagation_server_s = float(ended["updated_at"]) - committed
    await everyone_on(api, agents, acks.release, options)
    fast = sorted(acks.at[a.name] - committed for a in agents if a.name not in slow)
    late = sorted(acks.at[a.name] - committed for a in agents if a.name in slow)
    result.propagation_agents, result.propagation_slow_agents = len(fast), len(late)
    result.propagation_p50_s = percentile(fast, 0.50)
    result.propagation_p99_s = percentile(fast, 0.99)
    result.propagation_max_s = fast[-1] if fast else 0.0
    result.propagation_slow_max_s = late[-1] if late else 0.0
    for figures in result.per_server if len(result.per_server) > 1 else []:
        here = sorted(
            acks.at[a.name] - committed for a in agents if a.name not in slow and a.server == figures.url
        )
        figures.propagation_p50_s = percentile(here, 0.50)
        figures.propagation_p99_s = percentile(here, 0.99)
    for agent in agents:
        agent.on_applied = None
    configs.set_times(options.restart_time, options.restart_time)
    await apply_service(api, max(1, options.agents // options.batches))
    return acks.release


async def watch_stalls(url: str, figures: ServerFigures, interval: float = 0.25) -> None:
    """Time a trivial request to the server again and again: it answers only when its
    event loop is free, so the slowest answer is its longest stall."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while True:
            started = CLOCK.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/healthz")
                figures.longest_stall_s = max(figures.longest_stall_s, CLOCK.monotonic() - started)
            await asyncio.sleep(interval)


class SessionsProbe:
    """CPU time of the PostgreSQL backends that serve the servers' sessions.

    Each server names its database sessions after its server id (``application_name``,
    see `GET /api/v1/cluster`); `watch` looks for their backends every ``interval``, and
    a backend that ends keeps the CPU it had when last read. Reading another user's
    /proc/<pid>/stat needs no privilege; the database must run on this machine.
    """

    def __init__(self, conninfo: str, server_ids: Sequence[str]) -> None:
        self.conninfo = conninfo
        self.server_ids = list(server_ids)
        self._cpu: dict[int, float] = {}  # backend pid -> CPU seconds when last read
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _read(self, pid: int) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            self._cpu[pid] = (int(fields[11]) + int(fields[12])) / self._ticks

    def cpu_seconds(self) -> float:
        for pid in list(self._cpu):
            self._read(pid)
        return sum(self._cpu.values())

    async def watch(self, interval: float = 0.5) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            while True:
                cursor = await conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)",
                    (self.server_ids,),
                )
                for (pid,) in await cursor.fetchall():
                    self._read(int(pid))
                await asyncio.sleep(interval)


class Phases:
    """Server CPU seconds spent in each named phase: summed, per server, and the database's."""

    def __init__(
        self, probes: Sequence[ProcProbe], result: ScaleResult, sessions: SessionsProbe | None = None
    ) -> None:
        self.probes = probes
        self.result = result
        self.sessions = sessions
        self._last = [probe.cpu_seconds() for probe in probes]
        self._db_last = sessions.cpu_seconds() if sessions is not None else 0.0

    def end(self, name: str) -> None:
        now = [probe.cpu_seconds() for probe in self.probes]
        spent = [round(b - a, 3) for a, b in zip(self._last, now, strict=True)]
        self.result.server_cpu_by_phase_s[name] = round(sum(now) - sum(self._last), 3)
        for figures, cpu in zip(self.result.per_server, spent, strict=True):
            figures.cpu_by_phase_s[name] = cpu
        self._last = now
        if self.sessions is not None:
            db_now = self.sessions.cpu_seconds()
            self.result.database_cpu_by_phase_s[name] = round(db_now - self._db_last, 3)
            self._db_last = db_now


class AgentConfigs:
    """The agents' configurations: per server they start at, one for fast and one for slow
    agents (the propagation phase changes their apply time, then sets it back)."""

    def __init__(self, urls: Sequence[str], token: str, options: Options) -> None:
        def config(first: int) -> SimAgentConfig:
            order = list(urls[first:]) + list(urls[:first])
            return SimAgentConfig(
                ",".join(order), token, SERVICE, restart_time=options.restart_time, seed=options.seed
            )

        self.fast = [config(i) for i in range(len(urls))]
        self.slow = [config(i) for i in range(len(urls))]

    def set_times(self, fast: float, slow: float) -> None:
        for config in self.fast:
            config.restart_time = fast
        for config in self.slow:
            config.restart_time = slow


async def server_ids(servers: Sequence[ServerProcess]) -> list[tuple[str, str]]:
    """Each server's (id, role), from GET /api/v1/cluster."""
    out = []
    for server in servers:
        headers = {"Authorization": f"Bearer {server.tokens['api']}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as api:
            body = check(await api.get("/api/v1/cluster"), "cluster")
            out.append((str(body["server"]), str(body["role"])))
    return out


async def find_leader(servers: Sequence[ServerProcess], options: Options) -> int:
    """The index of the one server that leads (waits for the election)."""
    found = -1

    async def one() -> bool:
        nonlocal found
        leaders = [i for i, (_, role) in enumerate(await server_ids(servers)) if role == "leader"]
        found = leaders[0] if len(leaders) == 1 else -1
        return found >= 0

    await wait_until("a single leader", one, options.phase_timeout, 0.1)
    return found


async def drive(
    servers: Sequence[ServerProcess], options: Options, result: ScaleResult, conninfo: str | None
) -> None:
    """The phases, against ``servers`` (one, or several on one PostgreSQL database)."""
    probes = [ProcProbe(server.proc.pid) for server in servers]
    watchers = [asyncio.create_task(probe.watch()) for probe in probes]
    leader = await find_leader(servers, options) if len(servers) > 1 else 0
    sessions: SessionsProbe | None = None
    result.per_server = [ServerFigures(i, s.url) for i, s in enumerate(servers)]
    if options.stalls:
        watchers.extend(asyncio.create_task(watch_stalls(f.url, f)) for f in result.per_server)
    if conninfo is not None:
        ids = await server_ids(servers)
        for figures, (_, role) in zip(result.per_server, ids, strict=True):
            figures.role = role
        sessions = SessionsProbe(conninfo, [server_id for server_id, _ in ids])
        watchers.append(asyncio.create_task(sessions.watch()))
        await asyncio.sleep(0.1)  # the first look at the sessions
    else:
        result.per_server[0].role = "leader"
    phases = Phases(probes, result, sessions)
    server = servers[leader]  # the API calls go to the leader
    headers = {"Authorization": f"Bearer {server.tokens['api']}"}
    agent_tasks: list[asyncio.Task[None]] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as api:
            await setup_service(api, options)
            phases.end("setup")

            configs = AgentConfigs([s.url for s in servers], server.tokens["agent"], options)
            names = [f"sim-{i:05d}" for i in range(options.agents)]
            slow = set(
                random.Random(options.seed).sample(names, round(options.agents * options.slow_fraction))
            )
            agents = []
            for i, name in enumerate(names):
                first = i % len(servers)
                config = configs.slow[first] if name in slow else configs.fast[first]
                agents.append(SimAgent(name, agent_address(i), config))
                result.per_server[first].agents += 1
            t0 = CLOCK.monotonic()
            agent_tasks = [asyncio.create_task(a.run()) for a in agents]
            await asyncio.wait_for(
                asyncio.gather(*(a.connected.wait() for a in agents)), options.phase_timeout
            )
            result.connect_s = CLOCK.monotonic() - t0
            result.install_s = await everyone_on(api, agents, 1, options) - t0
            phases.end("install")

            current, expected_restarts = 1, 3  # v1, the rollout's release, back
            if options.propagation:
                current = await propagate(api, agents, slow, configs, options, result)
                expected_restarts += 1
                phases.end("propagation")

            target = check(
                await api.post(
                    f"/api/v1/services/{SERVICE}/releases",
                    json={"from_version": f"v{current}", "params": {"BENCH": "2"}},
                ),
                "create the rollout's release",
            )["number"]
            t0 = CLOCK.monotonic()
            started = check(await api.post(f"/api/v1/services/{SERVICE}/rollouts", json={}), "start rollout")
            ended = await wait_rollout(api, started["rollout"]["id"], options)
            result.rollout_s = CLOCK.monotonic() - t0
            result.rollout_status = str(ended["status"])
            result.rollout_server_s = float(ended["updated_at"]) - float(ended["created_at"])
            phases.end("rollout")
            if result.rollout_status != "succeeded":
                raise RuntimeError(f"rollout ended {result.rollout_status}: {ended.get('reason', '')}")
            await everyone_on(api, agents, target, options)

            t0 = CLOCK.monotonic()
            back = check(
                await api.post(f"/api/v1/services/{SERVICE}/rollback", json={"reason": "bench"}),
                "rollback",
            )
            ended = await wait_rollout(api, back["rollout"]["id"], options)
            result.rollback_status = str(ended["status"])
            result.rollback_server_s = float(ended["updated_at"]) - float(ended["created_at"])
            if result.rollback_status != "succeeded":
                raise RuntimeError(f"rollback ended {result.rollback_status}: {ended.get('reason', '')}")
            result.rollback_s = await everyone_on(api, agents, current, options) - t0
            phases.end("rollback")
            result.extra_restarts = sum(max(0, a.restarts - expected_restarts) for a in agents)
            result.repeated_desired = sum(repeats(a.desired_seen) for a in agents)
    finally:
        for task in agent_tasks:
            task.cancel()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        for probe, figures in zip(probes, result.per_server, strict=True):
            with contextlib.suppress(OSError):
                probe.sample()
                figures.cpu_s = probe.cpu_seconds()
            figures.peak_rss_mib = probe.peak_rss_kib / PAGE_KIB
        if sessions is not None:
            result.database_cpu_s = round(sessions.cpu_seconds(), 3)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        # one server: its figures, as always; several: the sum of each one's
        # (the peaks need not coincide, so their sum is an upper bound)
        result.server_cpu_s = sum(f.cpu_s for f in result.per_server)
        result.server_peak_rss_mib = sum(f.peak_rss_mib for f in result.per_server)


class OnceParsed:
    """Stands in for `server_message` in the simulated agents: each distinct message parsed once.

    Agents on real hosts each parse their own messages on their own CPU. Here
    thousands share this process and the machine's other core with the server,
    so parsing the same desired state (a service spec and a release) 10,000
    times would make the simulator, not the server, the slowest part of the
    propagation measurement. Messages that differ only in their generation are
    parsed once and copied with the generation; everything else is parsed as is.
    """

    _DESIRED = re.compile(r'\{"type":"desired","generation":(\d+),')

    def __init__(self) -> None:
        self._parsed: dict[str, Desired] = {}

    def validate_json(self, frame: str | bytes) -> Desired | Welcome | ErrorMessage:
        text = frame.decode() if isinstance(frame, bytes) else frame
        head = self._DESIRED.match(text)
        if head is None:
            return server_message.validate_json(text)
        rest = text[head.end() :]
        parsed = self._parsed.get(rest)
        if parsed is None:
            message = server_message.validate_json(text)
            assert isinstance(message, Desired)
            if len(self._parsed) > 64:
                self._parsed.clear()
            parsed = self._parsed[rest] = message
        return parsed.model_copy(update={"generation": int(head.group(1))})


def run(options: Options) -> ScaleResult:
    """Run the whole benchmark once; raises if the rollout or the rollback did not succeed."""
    raise_fd_limit(options.agents)
    result = ScaleResult(
        agents=options.agents,
        batches=options.batches,
        restart_time_s=options.restart_time,
        floor_s=options.batches * options.restart_time,
        machine=machine_line(),
        database=options.database,
        servers=options.servers,
        lease_ttl_s=options.lease_ttl if options.database == "postgresql" else 0.0,
    )
    cpu0 = own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="headway-bench-") as tmp:
        if options.database == "sqlite":
            server = start_server(Path(tmp) / "server")
            try:
                run_drive([server], options, result, None)
            finally:
                server.stop()
                count_warnings([server.log], result)
                keep_logs([server.log], options.logs)
        else:
            with fresh_schema(options.postgres_url, prefix="hw_bench") as url:
                cluster = Cluster(Path(tmp) / "shared", url, options={"lease_ttl": options.lease_ttl})
                try:
                    cluster.start(options.servers)
                    run_drive(cluster.servers, options, result, libpq_conninfo(options.postgres_url))
                finally:
                    cluster.stop()
                    count_warnings([s.log for s in cluster.servers], result)
                    keep_logs([s.log for s in cluster.servers], options.logs)
    result.bench_cpu_s = own_cpu_seconds() - cpu0
    return result


def run_drive(
    servers: Sequence[ServerProcess], options: Options, result: ScaleResult, conninfo: str | None
) -> None:
    with contextlib.ExitStack() as stack:
        for i, server in enumerate(servers):
            out = options.profile
            if out is not None and len(servers) > 1:
                out = out.with_name(f"{out.stem}-server{i}{out.suffix}")
            stack.enter_context(profiled(server.proc.pid, out))
        stack.enter_context(mock.patch.object(sim_agents, "server_message", OnceParsed()))
        asyncio.run(drive(servers, options, result, conninfo))


def keep_logs(logs: Sequence[Path], into: Path | None) -> None:
    if into is None:
        return
    into.mkdir(parents=True, exist_ok=True)
    for path in logs:
        with contextlib.suppress(OSError):
            shutil.copy(path, into / path.name)


def libpq_conninfo(url: str) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://...) as psycopg takes it."""
    return sa_url.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# Logged at WARNING on purpose, not problems: a server taking the lead, a runner stopping
# with its server (a deposed leader also logs "no longer leads", which counts).
_EXPECTED = re.compile(r"this server \(.*\) leads now, fencing token|runner stopped: this server follows now")


def count_warnings(logs: Sequence[Path], result: ScaleResult) -> None:
    """Warnings and errors in the servers' logs (taking the lead and stopping are not)."""
    seen: dict[str, int] = {}
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if (" WARNING " in line or " ERROR " in line) and not _EXPECTED.search(line):
                    result.server_log_warnings += 1
                    text = re.sub(r"\d+", "N", line.split(" ", 2)[-1])[:160]  # without the time
                    seen[text] = seen.get(text, 0) + 1
    result.server_log_lines = [f"{n} x {text}" for text, n in sorted(seen.items(), key=lambda x: -x[1])[:5]]


def main(argv: Sequence[str] | None = None) -> ScaleResult:
    options, as_json = parse_args(argv)
    result = run(options)
    if as_json:
        print(json.dumps(asdict(result), sort_keys=True))
    else:
        print(result.table())
    return result


if __name__ == "__main__":
    # the simulator shares the machine with the server: collect its garbage the way the
    # server does (headway.server.main.tune_gc), so that it takes less of the CPU it shares
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        main()
    except (RuntimeError, TimeoutError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        sys.exit(1)
