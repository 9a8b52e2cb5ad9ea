"""T10 config push: a config file written and the app reloaded on every host, in 10% batches
with a health check and no bake; wall time from the push to the last host acknowledged.

    python bench/config_push.py --agents 100 [--runs 3] [--batch 10%] [--cli] [--json]

Starts ``headway server`` (SQLite in a temporary directory) as a child process and
applies service ``web``: rolling, ``batch_size = max_unavailable = 10%``,
``min_healthy_time: 0s`` (no bake), ``config.apply: reload`` with a
``reload_command``. v1 is a tiny artifact with config revision A. Then it runs N
simulated agents in this process (`ReloadingAgent`, a bench-local `SimAgent`), each
speaking the real WebSocket protocol from its own 127.41.x.y address. For a release
with config an agent fetches the bundle from the server with its token, checks the
digest, writes each file atomically (temporary file, fsync, rename) into its own
directory, runs the reload command for real (``kill -HUP`` of a process that traps
it: one fork and exec per host, as Ansible's handler would) and reports healthy on
the new release, which the server's rollout counts as that host's health check.

Each run pushes a new 1 KiB file and times, from just before the push:

- ``server``: until the server's timestamp of the rollout's success (it succeeds
  when the last host has acknowledged, healthy);
- ``client``: until this process sees the rollout ``succeeded`` (polled every 50 ms).

With ``--cli`` the push is the real command in a subprocess,
``headway config push web DIR --rollout --wait --json``, and the wall time of that
command is reported too (it includes Python's start-up and ``--wait``'s 0.5 s polls).

The Ansible anchors (targets.md): 10 hosts 5.7 s, 100 hosts 31.8 s, 1,000 hosts 328 s
for the same work with ``serial: 10%``, 50 forks, local connection on this machine kind.
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from headway.domain.models import Health
from headway.protocol.messages import ConfigBundle, Desired, Report
from headway.server.config_bundle import BundleFile, build_bundle
from headway.sim.agents import SimAgent, SimAgentConfig
from headway.testing.api_helpers import tiny_tarball
from headway.testing.server_process import ServerProcess, start_server

ANSIBLE = {10: 5.7, 100: 31.8, 1000: 328.0}  # seconds, targets.md T10
TARGET = {100: 3.0, 1000: 10.0}  # seconds, targets.md T10


@dataclass
class ReloadingAgent(SimAgent):
    """A simulated agent that writes the config files and runs the reload command for real."""

    root: Path = Path(".")
    reload_command: list[str] = field(default_factory=list)
    config_digest: str = ""
    reloads: int = 0
    http: httpx.AsyncClient | None = None  # shared: each client costs ~80 ms of CPU to make

    async def _fetch(self, bundle: ConfigBundle) -> bytes:
        assert self.http is not None
        response = await self.http.get(bundle.url, headers={"Authorization": f"Bearer {self.config.token}"})
        response.raise_for_status()
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != bundle.digest:
            raise RuntimeError(f"{self.name}: bundle digest mismatch")
        return response.content

    def _write(self, data: bytes) -> None:
        target = self.root / self.name
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                handle = tar.extractfile(member)
                assert handle is not None and "/" not in member.name
                tmp = target / f".{member.name}.tmp"
                with open(tmp, "wb") as out:
                    out.write(handle.read())
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target / member.name)

    def _write_and_reload(self, data: bytes) -> None:
        """In a worker thread: write the files, then run the reload command (fork and exec)."""
        self._write(data)
        subprocess.run(self.reload_command, check=True)
        self.reloads += 1

    async def _converge(self, ws: ClientConnection, desired: Desired, rng: Any) -> None:
        release = desired.release
        bundle = release.config if release else None
        if bundle is not None and bundle.digest != self.config_digest:
            for attempt in range(5):  # as a real agent, retry a fetch the busy server did not answer
                try:
                    data = await self._fetch(bundle)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2 * 2**attempt)
            else:
                raise RuntimeError(f"{self.name}: cannot fetch {bundle.url}")
            await asyncio.to_thread(self._write_and_reload, data)
            self.config_digest = bundle.digest
        self.release = release.number if release else None
        self.health = Health.HEALTHY
        self.generation = desired.generation
        await ws.send(Report(observed=self.observation()).model_dump_json())


def address(i: int) -> str:
    return f"127.41.{i // 250}.{i % 250 + 1}"


def spec(batch: str, reload_command: list[str]) -> dict[str, Any]:
    return {
        "name": "web",
        "run": {"start": ["./app"], "reload": reload_command},
        "health": {"http": {"path": "/healthz"}},
        "strategy": {
            "type": "rolling",
            "batch_size": batch,
            "max_unavailable": batch,
            "min_healthy_time": "0s",
            "progress_deadline": "60s",
        },
        "config": {"apply": "reload", "reload_command": reload_command},
    }


def bundle(run: int) -> bytes:
    line = f"# run {run}\n"
    text = line + "x" * (1024 - len(line) - 1) + "\n"  # 1 KiB
    return build_bundle([BundleFile("app.conf", text.encode())])


@dataclass
class Run:
    agents: int
    server_s: float
    client_s: float
    cli_s: float | None
    reloads: int
    server_cpu_s: float  # CPU time of the server process during the run
    bench_cpu_s: float  # CPU time of this process (the simulated agents) during the run


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of ``pid`` (this process if None), from /proc."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_succeeded(api: httpx.Client, rollout_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out: dict[str, Any] = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        if out["rollout"]["status"] in ("succeeded", "failed", "rolled_back", "aborted"):
            if out["rollout"]["status"] != "succeeded":
                raise RuntimeError(f"rollout {rollout_id} ended {out['rollout']['status']}: {out['rollout']}")
            return out
        time.sleep(0.05)
    raise RuntimeError(f"rollout {rollout_id} did not end within {timeout}s")


def push_in_process(api: httpx.Client, data: bytes) -> str:
    revision = api.post(
        "/api/v1/services/web/configs", content=data, headers={"content-type": "application/gzip"}
    ).json()["revision"]["id"]
    number = api.post("/api/v1/services/web/releases", json={"config": revision}).json()["number"]
    started = api.post("/api/v1/services/web/rollouts", json={"to": f"v{number}"})
    started.raise_for_status()
    rollout_id: str = started.json()["rollout"]["id"]
    return rollout_id


def push_with_cli(server: ServerProcess, workdir: Path, data: bytes) -> tuple[str, float]:
    folder = workdir / f"conf-{time.monotonic_ns()}"
    folder.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            assert handle is not None
            (folder / member.name).write_bytes(handle.read())
    headway = Path(sys.executable).with_name("headway")
    started = time.monotonic()
    out = subprocess.run(
        [str(headway), "config", "push", "web", str(folder), "--rollout", "--wait", "--json"],
        env={**os.environ, "HEADWAY_SERVER": server.url, "HEADWAY_TOKEN": server.tokens["api"]},
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    rollout_id: str = json.loads(out.stdout)["rollout"]["id"]
    return rollout_id, elapsed


async def bench(options: argparse.Namespace) -> list[Run]:
    workdir = Path(tempfile.mkdtemp(prefix="headway-config-push-"))
    # the "app" every host reloads: a process that traps SIGHUP, as nginx re-reads its config
    app = subprocess.Popen(
        ["sh", "-c", "trap 'echo reload' HUP; while :; do sleep 1; done"], stdout=subprocess.DEVNULL
    )
    reload_command = ["kill", "-HUP", str(app.pid)]
    server = start_server(workdir / "server", heartbeat=60.0)
    runs: list[Run] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        with server.client() as api:
            api.post(
                "/api/v1/services", json={"spec": spec(options.batch, reload_command)}
            ).raise_for_status()
            first = api.post(
                "/api/v1/services/web/configs",
                content=bundle(0),
                headers={"content-type": "application/gzip"},
            ).json()["revision"]["id"]
            artifact = api.post("/api/v1/artifacts", content=tiny_tarball("v1")).json()
            api.post(
                "/api/v1/services/web/releases", json={"artifact": artifact["digest"], "config": first}
            ).raise_for_status()
            config = SimAgentConfig(server.url, server.tokens["agent"], "web", restart_time=0.0)
            http = httpx.AsyncClient(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=64))
            agents = [
                ReloadingAgent(
                    f"web-{i:04d}",
                    address(i),
                    config,
                    root=workdir / "hosts",
                    reload_command=reload_command,
                    http=http,
                )
                for i in range(options.agents)
            ]
            tasks = [asyncio.create_task(a.run()) for a in agents]
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 120)
            await asyncio.to_thread(_wait_hosts, api, options.agents, 1)
            for n in range(1, options.runs + 1):
                data = bundle(n)
                reloads_before = sum(a.reloads for a in agents)
                cpu_before = (cpu_seconds(server.proc.pid), cpu_seconds())
                started_at = time.time()
                cli_s = None
                if options.cli:
                    rollout_id, cli_s = await asyncio.to_thread(push_with_cli, server, workdir, data)
                else:
                    rollout_id = await asyncio.to_thread(push_in_process, api, data)
                out = await asyncio.to_thread(wait_succeeded, api, rollout_id)
                client_s = time.time() - started_at
                server_s = out["rollout"]["updated_at"] - started_at
                run = Run(
                    options.agents,
                    server_s,
                    client_s,
                    cli_s,
                    sum(a.reloads for a in agents) - reloads_before,
                    cpu_seconds(server.proc.pid) - cpu_before[0],
                    cpu_seconds() - cpu_before[1],
                )
                runs.append(run)
                if not options.json:
                    print(
                        f"run {n}: {options.agents} hosts, last host acknowledged "
                        f"{server_s:.2f}s after the push "
                        f"(client saw it at {client_s:.2f}s"
                        + (f", `headway config push --rollout --wait` took {cli_s:.2f}s" if cli_s else "")
                        + f"); {run.reloads} reloads; CPU: server {run.server_cpu_s:.2f}s, "
                        f"simulated agents {run.bench_cpu_s:.2f}s",
                        flush=True,
                    )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stop()
        app.kill()
        app.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _wait_hosts(api: httpx.Client, n: int, release: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hosts = api.get("/api/v1/hosts", params={"service": "web"}).json()
        if len(hosts) == n and all(
            h["observed_release"] == release and h["health"] == "healthy" for h in hosts
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"hosts not all healthy on v{release} within {timeout}s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", default="10%")
    parser.add_argument("--cli", action="store_true", help="push with the real `headway config push` command")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Run]:
    options = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, options.agents * 4 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    runs = asyncio.run(bench(options))
    median = statistics.median(r.server_s for r in runs)
    summary = {
        "agents": options.agents,
        "batch": options.batch,
        "median_s": round(median, 3),
        "runs_s": [round(r.server_s, 3) for r in runs],
        "client_s": [round(r.client_s, 3) for r in runs],
        "cli_s": [round(r.cli_s, 3) for r in runs if r.cli_s is not None],
        "target_s": TARGET.get(options.agents),
        "ansible_s": ANSIBLE.get(options.agents),
        "runs": [asdict(r) for r in runs],
    }
    if options.json:
        print(json.dumps(summary))
    else:
        anchor = ANSIBLE.get(options.agents)
        print(
            f"median over {len(runs)} runs: {median:.2f}s for {options.agents} hosts"
            + (f" (Ansible: {anchor:g}s, {anchor / median:.0f}x)" if anchor else "")
        )
    return runs


if __name__ == "__main__":
    main()
