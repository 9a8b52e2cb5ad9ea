"""T10 config push with real hosts: a 1 KiB config written and the app reloaded on every
host of a real local fleet, in 10% batches with a health check and no bake.

    python bench/config_push_real.py --hosts 100 [--runs 3] [--cli] [--validate] [--json]

Starts a local fleet (`headway.fleet.local.fleet_up`: ``headway server``, HAProxy and one
``headway agent`` plus one sample app per host on 127.0.71.x; start-up is not measured)
and applies service ``web`` with a rolling strategy, ``batch_size = max_unavailable =
10%``, ``min_healthy_time: 0s`` (no bake), the agent's HTTP health check of ``/healthz``
every 0.5 s, and ``config.apply: reload`` (SIGHUP to the app, which re-reads
``$HEADWAY_CONFIG_DIR/app.conf``). A first config-only release (not measured) moves every
host onto a release with config. Then each run writes a new 1 KiB ``app.conf`` and times,
from just before the push:

- ``server``: until the server's timestamp of the rollout's success (it succeeds when the
  last host has acknowledged the release, healthy);
- ``client``: until this process sees the rollout ``succeeded`` (polled every 50 ms);
- with ``--cli``, the push is ``headway config push web DIR --rollout --wait --json`` in a
  subprocess and ``command`` is that command's wall time (Python start-up and ``--wait``'s
  polls included); without it, the same three calls (push, release, rollout) go through
  `ApiClient` in this process.

After each run every host's ``/`` must answer the new greeting from the same app process
(a reload, not a restart). With ``--validate`` the sample app's checker runs on every host
before activation (``config.validate``). Every process started is stopped at the end,
whatever happens. The Ansible anchors (targets.md, T10): 100 hosts 31.8 s, target 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from headway.api_models import CreateRelease
from headway.client.api import ApiClient
from headway.domain.spec import RollingStrategy
from headway.fleet import local
from headway.server.config_bundle import BundleFile, build_bundle

ADDRESS_PREFIX = "127.0.71"
APP_PORT = 8080
CONFIG_BYTES = 1024
VALIDATE = ["python3", "{release_dir}/app.py", "--check-config", "{config_dir}"]


@dataclass
class Run:
    run: int
    hosts: int
    release: int
    server_s: float
    client_s: float
    command_s: float | None


def strategy(batch: str) -> RollingStrategy:
    return RollingStrategy.model_validate({
        "type": "rolling", "batch_size": batch, "max_unavailable": batch,
        "min_healthy_time": "0s", "progress_deadline": "60s",
    })


def config_text(greeting: str) -> str:
    """``greeting = ...`` padded with comment lines to exactly `CONFIG_BYTES` bytes."""
    text = f"greeting = {greeting}\n"
    filler = "# padding to make a 1 KiB config file, like a small real one\n"
    while len(text) + len(filler) <= CONFIG_BYTES:
        text += filler
    return text + "#" * (CONFIG_BYTES - len(text) - 1) + "\n"


def rollout_succeeded_at(client: ApiClient, rollout_id: str) -> float:
    for event in client.iter_events(rollout=rollout_id):
        if event.kind == "rollout.succeeded":
            return event.ts
    raise RuntimeError(f"rollout {rollout_id} has no rollout.succeeded event")


def wait_rollout(client: ApiClient, rollout_id: str, timeout: float) -> float:
    """Poll every 50 ms until the rollout ends; the wall time it was seen succeeded."""
    deadline = time.monotonic() + timeout
    while True:
        summary = client.get_rollout(rollout_id).rollout
        if summary.status.terminal:
            if summary.status.value != "succeeded":
                raise RuntimeError(f"rollout {rollout_id} ended {summary.status.value}: {summary.reason}")
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"rollout {rollout_id} still {summary.status.value} after {timeout:g}s")
        time.sleep(0.05)


def push_api(client: ApiClient, directory: Path) -> str:
    data = (directory / "app.conf").read_bytes()
    revision = client.push_config(local.SERVICE, build_bundle([BundleFile("app.conf", data)])).revision
    release = client.create_release(
        local.SERVICE, CreateRelease(config=revision.id, note=f"config {revision.id}")
    )
    return client.start_rollout(local.SERVICE, to=release.version).rollout.id


def push_cli(fleet: local.Fleet, directory: Path) -> tuple[str, float]:
    env = {**os.environ, "HEADWAY_SERVER": fleet.server, "HEADWAY_TOKEN": fleet.token}
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "headway", "config", "push", local.SERVICE, str(directory),
         "--rollout", "--wait", "--json"],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )
    took = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"headway config push failed ({done.returncode}): {done.stderr[-2000:]}")
    return str(json.loads(done.stdout)["rollout"]["id"]), took


def check_hosts(fleet: local.Fleet, greeting: str, pids: dict[str, int]) -> None:
    with httpx.Client(timeout=5.0) as http:
        for host in fleet.hosts:
            text = http.get(f"http://{host.address}:{APP_PORT}/").text
            if not text.startswith(f"{greeting} from "):
                raise RuntimeError(f"{host.name} answers {text.strip()!r}, not the greeting {greeting!r}")
    now = {h.name: local._app_pid(h.state_dir) for h in fleet.hosts}
    if now != pids:
        changed = sorted(name for name in pids if now.get(name) != pids[name])
        raise RuntimeError(f"apps restarted instead of reloading: {changed[:10]}")


def one_run(fleet: local.Fleet, client: ApiClient, number: int, work: Path, use_cli: bool) -> Run:
    greeting = f"run-{number}-{time.time_ns()}"
    directory = work / f"conf-{number}"
    directory.mkdir()
    (directory / "app.conf").write_text(config_text(greeting), encoding="utf-8")
    pids = {h.name: local._app_pid(h.state_dir) for h in fleet.hosts}
    started = time.time()
    command_s: float | None = None
    if use_cli:
        rollout_id, command_s = push_cli(fleet, directory)
        seen = time.time()
    else:
        rollout_id = push_api(client, directory)
        seen = wait_rollout(client, rollout_id, timeout=300)
    summary = client.get_rollout(rollout_id).rollout
    if summary.status.value != "succeeded":
        raise RuntimeError(f"rollout {rollout_id} ended {summary.status.value}: {summary.reason}")
    server = rollout_succeeded_at(client, rollout_id) - started
    check_hosts(fleet, greeting, pids)
    return Run(number, len(fleet.hosts), summary.to_release, round(server, 3), round(seen - started, 3),
               None if command_s is None else round(command_s, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", default="10%")
    parser.add_argument("--cli", action="store_true", help="push with the real `headway config push` command")
    parser.add_argument("--validate", action="store_true", help="run the app's config checker on each host")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hw-t10-real-") as tmp:
        work = Path(tmp)
        state_dir = work / "fleet"
        t0 = time.monotonic()
        runs: list[Run] = []
        try:
            fleet = local.fleet_up(state_dir, args.hosts, port=0, traffic_port=0,
                                   address_prefix=ADDRESS_PREFIX, strategy=strategy(args.batch),
                                   log=lambda line: print(f"# {line}", file=sys.stderr, flush=True))
            print(f"# fleet of {args.hosts} hosts up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
            with ApiClient(fleet.server, fleet.token, timeout=60.0) as client:
                spec = yaml.safe_load(fleet.spec_path.read_text("utf-8"))
                spec["config"] = {"apply": "reload", **({"validate": VALIDATE} if args.validate else {})}
                client.apply_service(spec)
                first = work / "conf-0"
                first.mkdir()
                (first / "app.conf").write_text(config_text("warm-up"), encoding="utf-8")
                wait_rollout(client, push_api(client, first), timeout=600)  # a restart: not measured
                for number in range(1, args.runs + 1):
                    result = one_run(fleet, client, number, work, args.cli)
                    runs.append(result)
                    print(json.dumps(asdict(result)) if args.json else
                          f"run {number}: {result.hosts} hosts, v{result.release}: "
                          f"server {result.server_s:.2f}s, client {result.client_s:.2f}s"
                          + (f", command {result.command_s:.2f}s" if result.command_s is not None else ""),
                          flush=True)
        finally:
            recorded = local.load_fleet(state_dir)
            pids = [] if recorded is None else [
                recorded.server_pid, recorded.haproxy_pid,
                *(pid for h in recorded.hosts for pid in (h.pid, local._app_pid(h.state_dir)))]
            down = local.fleet_down(state_dir)
            left = [pid for pid in pids if pid and local.is_alive(pid)]
            print(f"# stopped {len(down.stopped)} processes; still running: {left or 'none'}",
                  file=sys.stderr)

    summary: dict[str, Any] = {
        "hosts": args.hosts, "runs": len(runs), "batch": args.batch, "validate": args.validate,
        "cli": args.cli, "median_server_s": round(statistics.median(r.server_s for r in runs), 3),
        "median_client_s": round(statistics.median(r.client_s for r in runs), 3),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.cli:
        summary["median_command_s"] = round(statistics.median(r.command_s or 0.0 for r in runs), 3)
    print(json.dumps(summary) if args.json else
          "median: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
