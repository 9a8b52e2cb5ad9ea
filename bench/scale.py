"""T3/T4/T5 scale check: one real server, N simulated agents, a change pushed to all of
them at once, a rolling upgrade and a rollback.

    python bench/scale.py --agents 1000 [--batches 10] [--restart-time 1.0] [--json]

Starts ``headway server`` (SQLite in a temporary directory) as a child
process, applies a service whose rolling strategy upgrades ``agents/batches``
hosts at a time, uploads a tiny artifact and creates release v1. Then it
runs N `SimAgent`s in this process, each speaking the real WebSocket
protocol from its own source address (127.40.x.y), and measures:

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
process's, which carries the simulator. Benchmarks live in ``bench/``, not
in the test suite; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
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

from headway.clock import SystemClock
from headway.domain.models import Health
from headway.protocol.messages import Desired, ErrorMessage, Welcome, server_message
from headway.sim import agents as sim_agents
from headway.sim.agents import SimAgent, SimAgentConfig
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
    )
    return options, bool(args.json)


# ------------------------------------------------------------------ result


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
    server_log_warnings: int = 0
    machine: str = ""

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
        ]

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
    configs: tuple[SimAgentConfig, SimAgentConfig],
    options: Options,
    result: ScaleResult,
) -> int:
    """T4: one change to every host at once; per-agent time from its commit to the ack.

    Returns the new release's number.
    """
    fast_config, slow_config = configs
    fast_config.restart_time, slow_config.restart_time = options.apply_time, options.slow_time
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
    for agent in agents:
        agent.on_applied = None
    fast_config.restart_time = slow_config.restart_time = options.restart_time
    await apply_service(api, max(1, options.agents // options.batches))
    return acks.release


class Phases:
    """Server CPU seconds spent in each named phase."""

    def __init__(self, probe: ProcProbe, result: ScaleResult) -> None:
        self.probe = probe
        self.result = result
        self._last = probe.cpu_seconds()

    def end(self, name: str) -> None:
        now = self.probe.cpu_seconds()
        self.result.server_cpu_by_phase_s[name] = round(now - self._last, 3)
        self._last = now


async def drive(server: ServerProcess, options: Options, result: ScaleResult) -> None:
    probe = ProcProbe(server.proc.pid)
    watcher = asyncio.create_task(probe.watch())
    phases = Phases(probe, result)
    headers = {"Authorization": f"Bearer {server.tokens['api']}"}
    agent_tasks: list[asyncio.Task[None]] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as api:
            await setup_service(api, options)
            phases.end("setup")

            configs = tuple(
                SimAgentConfig(
                    server.url,
                    server.tokens["agent"],
                    SERVICE,
                    restart_time=options.restart_time,
                    seed=options.seed,
                )
                for _ in range(2)
            )
            fast_config, slow_config = configs
            names = [f"sim-{i:05d}" for i in range(options.agents)]
            slow = set(
                random.Random(options.seed).sample(names, round(options.agents * options.slow_fraction))
            )
            agents = [
                SimAgent(name, agent_address(i), slow_config if name in slow else fast_config)
                for i, name in enumerate(names)
            ]
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
                current = await propagate(api, agents, slow, (fast_config, slow_config), options, result)
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
    finally:
        for task in agent_tasks:
            task.cancel()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            probe.sample()
            result.server_cpu_s = probe.cpu_seconds()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        result.server_peak_rss_mib = probe.peak_rss_kib / PAGE_KIB


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
    )
    cpu0 = own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="headway-bench-") as tmp:
        server = start_server(Path(tmp) / "server")
        try:
            with (
                profiled(server.proc.pid, options.profile),
                mock.patch.object(sim_agents, "server_message", OnceParsed()),
            ):
                asyncio.run(drive(server, options, result))
        finally:
            server.stop()
            log = (Path(tmp) / "server" / "server.log").read_text(errors="replace")
            result.server_log_warnings = sum(
                1 for line in log.splitlines() if " WARNING " in line or " ERROR " in line
            )
    result.bench_cpu_s = own_cpu_seconds() - cpu0
    return result


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
