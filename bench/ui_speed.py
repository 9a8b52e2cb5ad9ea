"""Web UI speed: the fleet page with 10,000 hosts in headless Chromium.

    .venv/bin/python bench/ui_speed.py [--hosts 10000] [--loads 5] [--changes 20] [--json]
                                       [--screenshot docs/img/fleet-10k.png]

Seeds a fresh store directly (``headway.store``, no agents): four services sharing the
hosts 40/30/20/10 %, each host labelled with one of three zones and a blue or green pool,
two releases per service with 30 % of the hosts on v2, and a sprinkle of starting,
unhealthy, failed and disconnected hosts. Then it starts a real ``headway server`` on that
store, signs in with Debian's Chromium driven by Playwright, and measures:

- **first render**: from navigation start to the fleet page's ``fleet-first-render``
  performance mark (set once every cell of the snapshot is drawn on the canvas), over
  ``--loads`` fresh page loads;
- **change to screen**: a host's health changes in the store (an observation plus an
  audit event, committed from this process), and the time until the page has drawn that
  host's new state (the page stamps each redrawn host with ``Date.now()``), over
  ``--changes`` changes. The server polls the store every 250 ms while someone watches,
  so about half of that is the expected wait.

Also reported: the size of the snapshot the event stream sends first. Results and the
machine they ran on go to docs/benchmarks.md ("Web UI").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

from headway.domain.models import ArtifactRef, Health
from headway.domain.spec import parse_service_spec
from headway.store import NewEvent, Store
from headway.testing.server_process import ServerProcess, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVICES = (("web", 0.4), ("api", 0.3), ("worker", 0.2), ("cache", 0.1))
ZONES = ("zone-a", "zone-b", "zone-c")
DIGEST = "sha256:" + "ab" * 32


@dataclass
class Result:
    hosts: int
    seed_seconds: float
    snapshot_bytes: int
    first_render_ms: list[float]
    change_ms: list[float]
    render_marks: list[dict[str, float]]  # per load: html, dom, data, render (ms from navigation)

    @property
    def first_render_median(self) -> float:
        return statistics.median(self.first_render_ms)

    @property
    def change_median(self) -> float:
        return statistics.median(self.change_ms)

    @property
    def change_max(self) -> float:
        return max(self.change_ms)


def seed(db_url: str, hosts: int, rng: random.Random) -> list[str]:
    """Services, releases and ``hosts`` hosts in a fresh store; the host names."""
    store = Store(db_url)
    store.migrate()
    now = time.time()
    names: list[str] = []
    with store.tx() as tx:
        tx.put_artifact(ArtifactRef(digest=DIGEST, size=1, url="/api/v1/artifacts/x"), "/dev/null", now)
        for service, share in SERVICES:
            spec = parse_service_spec(
                {"name": service, "run": {"start": ["true"]}, "health": {"http": {"path": "/healthz"}}}
            )
            tx.put_service(spec, now)
            artifact = ArtifactRef(digest=DIGEST, size=1, url="/api/v1/artifacts/x")
            tx.create_release(service, artifact, {}, "bench", "v1", now)
            tx.create_release(service, artifact, {"tuned": "yes"}, "bench", "v2", now)
            tx.set_service_current_release(service, 1)
            for i in range(round(hosts * share)):
                name = f"{service}-{i:05d}"
                labels = {"service": service, "zone": ZONES[i % 3], "pool": "blue" if i % 2 else "green"}
                address = f"127.{20 + len(names) // 65536}.{len(names) // 256 % 256}.{len(names) % 256}"
                tx.upsert_host(name, service, address, labels, now)
                release = 2 if rng.random() < 0.3 else 1
                tx.set_host_desired(name, release, 1)
                roll = rng.random()
                health = (
                    Health.STARTING if roll < 0.01 else
                    Health.UNHEALTHY if roll < 0.015 else
                    Health.FAILED if roll < 0.018 else Health.HEALTHY
                )
                tx.record_observation(name, release, 1, health, "", now)
                if rng.random() < 0.005:
                    tx.set_disconnected(name, now)
                names.append(name)
    store.close()
    return names


def sign_in(page: Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/ui/signin")
    page.fill("#token", server.tokens["api"])
    page.fill("#name", "bench")
    page.click("#signin")
    page.wait_for_url(f"{server.url}/ui")


def first_render(page: Page, server: ServerProcess, hosts: int) -> tuple[float, dict[str, float]]:
    """Milliseconds from navigation start to the first full render, and where they went."""
    page.goto(f"{server.url}/ui")
    page.wait_for_selector(f'#fleet[data-hosts="{hosts}"]', timeout=30_000)
    marks: dict[str, float] = page.evaluate(
        """() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const at = (name) => performance.getEntriesByName(name)[0].startTime;
            return {html: nav.responseEnd, dom: nav.domContentLoadedEventEnd,
                    data: at('fleet-first-data'), render: at('fleet-first-render')};
        }"""
    )
    return marks["render"], marks


def change_to_screen(page: Page, store: Store, name: str, health: Health) -> float:
    started = time.time()
    with store.tx() as tx:
        host = tx.get_host(name)
        tx.record_observation(name, host.observed_release, host.observed_generation, health, "", started)
        tx.append_events(
            [NewEvent(ts=started, kind="host.bench", message=f"{name}: {health.value}", host=name)]
        )
    page.wait_for_function(
        "([n, h]) => headwayFleet.host(n) && headwayFleet.host(n).health === h",
        arg=[name, health.value],
        timeout=10_000,
        polling=5,
    )
    stamp = float(page.evaluate("(n) => headwayFleet.stamps[n]", name))
    return stamp - started * 1000


def snapshot_size(server: ServerProcess, cookie: str) -> int:
    with (
        httpx.Client(base_url=server.url, cookies={"headway_session": cookie}, timeout=30) as client,
        client.stream("GET", "/ui/events/stream") as stream,
    ):
        for line in stream.iter_lines():
            if line.startswith("data: "):
                return len(line) - len("data: ")
    return 0


def run(hosts: int, loads: int, changes: int, screenshot: Path | None, seed_value: int) -> Result:
    rng = random.Random(seed_value)
    with tempfile.TemporaryDirectory(prefix="headway-ui-bench-") as tmp:
        state_dir = Path(tmp) / "server"
        state_dir.mkdir()
        db_url = f"sqlite:///{state_dir / 'headway.db'}"
        began = time.monotonic()
        names = seed(db_url, hosts, rng)
        seeded = time.monotonic() - began
        server = start_server(state_dir)
        store = Store(db_url)
        breakdown: list[dict[str, float]] = []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1440, "height": 900})
                page = context.new_page()
                sign_in(page, server)
                renders = []
                for _ in range(loads):
                    total, marks = first_render(page, server, len(names))
                    renders.append(total)
                    breakdown.append(marks)
                if screenshot is not None:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot))
                page.wait_for_timeout(500)  # let the first polls settle
                latencies = []
                for name in rng.sample(names, changes):
                    before = page.evaluate("(n) => headwayFleet.host(n).health", name)
                    target = Health.UNHEALTHY if before != "unhealthy" else Health.HEALTHY
                    latencies.append(change_to_screen(page, store, name, target))
                    page.wait_for_timeout(rng.uniform(50, 400))  # spread over the poll phase
                cookie = next(c["value"] for c in context.cookies() if c["name"] == "headway_session")
                size = snapshot_size(server, cookie)
                browser.close()
        finally:
            store.close()
            server.stop()
    return Result(len(names), seeded, size, renders, latencies, breakdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5, help="page loads timed (default 5)")
    parser.add_argument("--changes", type=int, default=20, help="host changes timed (default 20)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the loaded page here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is missing; run scripts/setup.sh as root", file=sys.stderr)
        return 2
    result = run(args.hosts, args.loads, args.changes, args.screenshot, args.seed)
    if args.json:
        out: dict[str, Any] = asdict(result)
        out.update(
            first_render_median_ms=result.first_render_median,
            change_median_ms=result.change_median,
            change_max_ms=result.change_max,
            machine=f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        )
        print(json.dumps(out))
        return 0
    print(f"hosts:                 {result.hosts:,} (seeded in {result.seed_seconds:.1f} s)")
    print(f"first snapshot:        {result.snapshot_bytes / 1024:.0f} KiB of JSON")
    print(
        f"first render:          median {result.first_render_median:.0f} ms "
        f"[{' '.join(f'{v:.0f}' for v in result.first_render_ms)}]"
    )
    for marks in result.render_marks:
        print("  load:               " + ", ".join(f"{k} {v:.0f}" for k, v in marks.items()) + " ms")
    print(
        f"change to screen:      median {result.change_median:.0f} ms, "
        f"p90 {statistics.quantiles(result.change_ms, n=10)[-1]:.0f} ms, max {result.change_max:.0f} ms "
        f"({len(result.change_ms)} changes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
