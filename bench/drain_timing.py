"""T2 drain: how soon a host is out of HAProxy and its app stopped once its drain starts.

    python bench/drain_timing.py [--hosts 3] [--runs 3] [--slow-ms 3000] [--json]

Starts one local fleet (`headway.fleet.local.fleet_up`: a real ``headway server``, HAProxy
and ``--hosts`` agents with the sample app, on 127.0.51.x), rolling one host at a time
(``batch_size: 1``, ``min_healthy_time: 1s``). Each run is two rollouts to a new release:

- **idle**: no traffic at all; every host is drained with nothing in flight;
- **busy**: just before the rollout starts, one ``/slow?ms=3000`` request per host is sent
  through HAProxy (each is matched to the host that took it by watching HAProxy's
  per-server session count). The first host drained is serving its request when its drain
  starts; the hosts drained later have finished theirs by then and count as idle.

While a rollout runs, a monitor polls every 20 ms (``--poll``) HAProxy's runtime API
(``show stat`` and ``show servers state``: admin state, check status, sessions per
server) and each host's app process (the pid in ``hosts/<name>/app.json``; gone from
``/proc`` or a zombie counts as exited). After it, the rollout's events are read back
(``host.drained``, whose detail says how long the drain handshake took, ``host.updating``
and ``host.admitted``, each with its server timestamp). Per host drained:

- drain start: the ``traffic.drain`` event, which the engine records when it issues the
  Drain action. Two cross-checks are reported beside it: when HAProxy first showed the
  host in DRAIN (seen by the monitor), and ``host.drained``'s time minus the handshake's
  own figure ("drained in X s", measured by the handshake from its start, to 10 ms). A
  server whose log lacks ``traffic.drain`` falls back to the earlier of the two;
- out of the balancer: HAProxy shows DRAIN (no new requests go there); for a busy host
  also when its session count reached 0;
- last request end: when the client got the end of the host's /slow answer;
- app stopped: the old app's pid gone.

T2: idle host out of the balancer and its app stopped within 1 s of the drain start; busy
host's app stopped within 1 s of its last request ending. All times are epoch seconds from
this machine's clock (the server's events too); each is printed relative to the drain start.

The fleet is stopped (`fleet_down`) at the end, on an error or on Ctrl-C / SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from headway.client.api import ApiClient
from headway.client.watch import watch_rollout
from headway.clock import SystemClock
from headway.domain.models import Event
from headway.domain.spec import RollingStrategy
from headway.fleet.local import Fleet, fleet_down, fleet_up, is_alive, publish_sample_release
from headway.traffic import HAProxyBackend, TrafficError

CLOCK = SystemClock()
TARGET_SECONDS = 1.0
DRAINED_IN = re.compile(r"drained in ([0-9.]+)s")


@dataclass(frozen=True)
class Options:
    hosts: int = 3
    runs: int = 3
    slow_ms: int = 3000
    poll: float = 0.02
    address_prefix: str = "127.0.51"
    state_dir: Path | None = None
    keep: bool = False
    json: bool = False


# ----------------------------------------------------------------- the monitor


@dataclass(frozen=True)
class LbState:
    t: float
    admin: str  # ready, drain, maint
    status: str  # HAProxy's check status: UP, DOWN, DRAIN, MAINT, ...
    sessions: int


@dataclass
class HostWatch:
    name: str
    app_file: Path
    lb: list[LbState] = field(default_factory=list)  # changes only
    exits: list[tuple[float, int]] = field(default_factory=list)  # (time, pid) of each app gone
    starts: list[tuple[float, int]] = field(default_factory=list)  # (time, pid) of each app seen
    pid: int = 0


def _read_pid(path: Path) -> int:
    try:
        return int(json.loads(path.read_text("utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class Monitor:
    """Polls HAProxy and the hosts' app pids every ``poll`` seconds on its own thread."""

    def __init__(self, fleet: Fleet, poll: float) -> None:
        self.poll = poll
        self.hosts = {h.name: HostWatch(h.name, h.state_dir / "app.json") for h in fleet.hosts}
        self.backend = HAProxyBackend(Path(fleet.haproxy_socket), "web", rng=random.Random(0), attempts=2)
        self.polls = 0
        self.errors = 0
        self.slowest_poll = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Monitor:
        for watch in self.hosts.values():
            watch.pid = _read_pid(watch.app_file)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    async def _run(self) -> None:
        while not self._stop.is_set():
            began = CLOCK.monotonic()
            await self._once()
            took = CLOCK.monotonic() - began
            self.slowest_poll = max(self.slowest_poll, took)
            await asyncio.sleep(max(0.0, self.poll - took))

    async def _once(self) -> None:
        self.polls += 1
        try:
            stats = await self.backend.stats()
        except TrafficError:
            self.errors += 1
            stats = {}
        now = CLOCK.now()
        for name, watch in self.hosts.items():
            server = stats.get(name)
            if server is not None:
                state = LbState(now, server.admin_state.value, server.status, server.current_sessions)
                last = watch.lb[-1] if watch.lb else None
                if last is None or (last.admin, last.status, last.sessions) != (
                    state.admin, state.status, state.sessions,
                ):
                    watch.lb.append(state)
            if watch.pid and not is_alive(watch.pid):
                watch.exits.append((now, watch.pid))
                watch.pid = 0
            current = _read_pid(watch.app_file)
            if current and current != watch.pid and is_alive(current):
                watch.starts.append((now, current))
                watch.pid = current


# ----------------------------------------------------------------- busy requests


@dataclass
class SlowRequest:
    host: str = ""
    sent: float = 0.0
    ended: float = 0.0
    status: int | None = None


def send_slow(fleet: Fleet, monitor: Monitor, count: int, ms: int) -> list[SlowRequest]:
    """``count`` requests to /slow?ms=``ms`` through HAProxy, one after another, each
    matched to the host whose session count rose for it (so one per host)."""
    requests: list[SlowRequest] = []
    threads = []
    taken: set[str] = set()
    for _ in range(count):
        request = SlowRequest(sent=CLOCK.now())

        def fire(request: SlowRequest = request) -> None:
            with httpx.Client(base_url=fleet.traffic, timeout=ms / 1000 + 30) as client:
                try:
                    request.status = client.get(f"/slow?ms={ms}").status_code
                finally:
                    request.ended = CLOCK.now()

        thread = threading.Thread(target=fire, daemon=True)
        thread.start()
        threads.append(thread)
        deadline = CLOCK.monotonic() + 2.0
        while not request.host and CLOCK.monotonic() < deadline:
            busy = {
                name for name, w in monitor.hosts.items() if w.lb and w.lb[-1].sessions > 0
            } - taken
            if len(busy) == 1:
                request.host = busy.pop()
                taken.add(request.host)
            time.sleep(monitor.poll / 2)
        requests.append(request)
    return requests


# ----------------------------------------------------------------- per host


@dataclass
class Sample:
    run: int
    rollout: str  # idle or busy (the rollout's traffic)
    host: str
    busy: bool  # its request was in flight when its drain started
    drain_start: float
    drain_event: float | None  # traffic.drain: the engine issued the Drain action
    lb_drain_seen: float | None  # HAProxy first showed DRAIN/MAINT
    engine_drain_start: float | None  # host.drained minus the handshake's duration
    handshake: float | None  # the handshake's own figure ("drained in X s")
    drained_event: float | None
    updating_event: float | None
    app_exit: float | None
    app_start: float | None  # the new app process seen
    admitted_event: float | None
    lb_ready_seen: float | None  # HAProxy shows it READY again
    sessions_zero: float | None = None  # busy: HAProxy's session count first read 0
    request_end: float | None = None  # busy: the client had the end of its answer

    @property
    def figure(self) -> float | None:
        """T2's figure: app stopped after the drain start (idle) or the request's end (busy)."""
        if self.app_exit is None:
            return None
        base = self.request_end if self.busy else self.drain_start
        return None if base is None else self.app_exit - base

    @property
    def out_of_lb(self) -> float | None:
        """Seconds from the drain start to the host taking no new requests."""
        return None if self.lb_drain_seen is None else max(0.0, self.lb_drain_seen - self.drain_start)

    def to_json(self) -> dict[str, Any]:
        def rel(value: float | None) -> float | None:
            return None if value is None else round(value - self.drain_start, 3)

        return {
            "run": self.run,
            "rollout": self.rollout,
            "host": self.host,
            "busy": self.busy,
            "drain_start": round(self.drain_start, 3),
            "figure_s": None if self.figure is None else round(self.figure, 3),
            "figure_of": f"app stopped after {'last request end' if self.busy else 'drain start'}",
            "out_of_lb_s": None if self.out_of_lb is None else round(self.out_of_lb, 3),
            "handshake_s": self.handshake,
            # every timestamp relative to the drain start, in seconds
            "drain_event": rel(self.drain_event),
            "lb_drain_seen": rel(self.lb_drain_seen),
            "engine_drain_start": rel(self.engine_drain_start),
            "request_end": rel(self.request_end),
            "sessions_zero": rel(self.sessions_zero),
            "drained_event": rel(self.drained_event),
            "updating_event": rel(self.updating_event),
            "app_exit": rel(self.app_exit),
            "app_start": rel(self.app_start),
            "admitted_event": rel(self.admitted_event),
            "lb_ready_seen": rel(self.lb_ready_seen),
        }


def _first(events: Sequence[Event], kind: str, host: str) -> Event | None:
    return next((e for e in events if e.kind == kind and e.host == host), None)


def samples_of(
    run: int, rollout: str, events: Sequence[Event], monitor: Monitor, slow: Sequence[SlowRequest],
    started: float,
) -> list[Sample]:
    out = []
    for name, watch in monitor.hosts.items():
        drained = _first(events, "host.drained", name)
        seen = next((s.t for s in watch.lb if s.t >= started and s.admin != "ready"), None)
        handshake = None
        engine_start = None
        if drained is not None and (found := DRAINED_IN.search(drained.message)):
            handshake = float(found[1])
            engine_start = drained.ts - handshake
        issued = _first(events, "traffic.drain", name)
        candidates = [t for t in (seen, engine_start) if t is not None]
        if issued is None and not candidates:
            continue  # never drained (it should have been: reported as missing)
        start = issued.ts if issued is not None else min(candidates)
        request = next((r for r in slow if r.host == name), None)
        busy = request is not None and request.ended > start
        app_exit = next((t for t, _ in watch.exits if t >= start), None)
        after_exit = app_exit if app_exit is not None else start
        updating = _first(events, "host.updating", name)
        admitted = _first(events, "host.admitted", name)
        out.append(
            Sample(
                run=run,
                rollout=rollout,
                host=name,
                busy=busy,
                drain_start=start,
                drain_event=issued.ts if issued is not None else None,
                lb_drain_seen=seen,
                engine_drain_start=engine_start,
                handshake=handshake,
                drained_event=drained.ts if drained else None,
                updating_event=updating.ts if updating else None,
                app_exit=app_exit,
                app_start=next((t for t, _ in watch.starts if t >= after_exit), None),
                admitted_event=admitted.ts if admitted else None,
                lb_ready_seen=next(
                    (s.t for s in watch.lb if s.t > after_exit and s.admin == "ready"), None
                ),
                sessions_zero=next(
                    (s.t for s in watch.lb if s.t >= start and s.sessions == 0), None
                ) if busy else None,
                request_end=request.ended if busy and request is not None else None,
            )
        )
    return sorted(out, key=lambda s: s.drain_start)


# ----------------------------------------------------------------- the bench


def drain_strategy() -> RollingStrategy:
    return RollingStrategy.model_validate(
        {"type": "rolling", "batch_size": 1, "min_healthy_time": "1s", "progress_deadline": "60s"}
    )


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    polls: int = 0
    slowest_poll: float = 0.0


def one_rollout(
    client: ApiClient, fleet: Fleet, options: Options, run: int, rollout: str, version: str,
    outcome: Outcome, log: Callable[[str], None],
) -> None:
    release = publish_sample_release(client, fleet.service, version, fleet.state_dir / "artifacts")
    with Monitor(fleet, options.poll) as monitor:
        time.sleep(0.2)  # a few polls of the steady state first
        started = CLOCK.now()
        slow = send_slow(fleet, monitor, len(fleet.hosts), options.slow_ms) if rollout == "busy" else []
        if slow and any(not r.host for r in slow):
            outcome.problems.append(f"run {run}: could not tell which host took each /slow request")
        out = client.start_rollout(fleet.service, to=release.version, note=f"drain bench {rollout}")
        final = watch_rollout(client, out.rollout.id, clock=CLOCK, interval=0.25, timeout=300.0)
        time.sleep(0.5)  # the last host's readmission seen by the monitor
    outcome.polls += monitor.polls
    outcome.slowest_poll = max(outcome.slowest_poll, monitor.slowest_poll)
    status = final.rollout.rollout.status.value
    if status != "succeeded":
        reason = final.rollout.rollout.reason
        outcome.problems.append(f"run {run} {rollout}: rollout ended {status}: {reason}")
    if any(r.status != 200 for r in slow):
        outcome.problems.append(f"run {run}: a /slow request failed: {[r.status for r in slow]}")
    events = list(client.iter_events(rollout=out.rollout.id))
    samples = samples_of(run, rollout, events, monitor, slow, started)
    missing = {h.name for h in fleet.hosts} - {s.host for s in samples}
    if missing:
        outcome.problems.append(f"run {run} {rollout}: no drain seen for {sorted(missing)}")
    if rollout == "busy" and not any(s.busy for s in samples):
        outcome.problems.append(f"run {run}: no host was busy when its drain started")
    for sample in samples:
        log(describe(sample))
    outcome.samples += samples


def describe(s: Sample) -> str:
    def at(value: float | None) -> str:
        return "-" if value is None else f"{(value - s.drain_start) * 1000:+.0f}"

    kind = "busy" if s.busy else "idle"
    head = f"run {s.run} {s.rollout:<4} {s.host} {kind}: "
    figure = "-" if s.figure is None else f"{s.figure * 1000:.0f} ms"
    what = "app stopped after last request end" if s.busy else "app stopped after drain start"
    busy = f", request end {at(s.request_end)}, sessions 0 {at(s.sessions_zero)}" if s.busy else ""
    return (
        f"{head}{what} {figure} | ms from traffic.drain: HAProxy DRAIN {at(s.lb_drain_seen)}, "
        f"handshake start {at(s.engine_drain_start)}{busy}, drained {at(s.drained_event)}, "
        f"updating {at(s.updating_event)}, app exit {at(s.app_exit)}, new app {at(s.app_start)}, "
        f"admitted {at(s.admitted_event)}, HAProxy READY {at(s.lb_ready_seen)}"
    )


def summary(outcome: Outcome) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "count": len(values),
            "median_ms": round(statistics.median(values) * 1000, 1) if values else None,
            "max_ms": round(max(values) * 1000, 1) if values else None,
            "values_ms": [round(v * 1000, 1) for v in values],
        }

    idle = [s for s in outcome.samples if not s.busy]
    busy = [s for s in outcome.samples if s.busy]
    idle_figures = [f for s in idle if (f := s.figure) is not None]
    busy_figures = [f for s in busy if (f := s.figure) is not None]
    return {
        "idle_app_stopped_after_drain_start": stats(idle_figures),
        "idle_out_of_lb_after_drain_start": stats([o for s in idle if (o := s.out_of_lb) is not None]),
        "busy_app_stopped_after_last_request_end": stats(busy_figures),
        "busy_drain_handshake": stats([h for s in busy if (h := s.handshake) is not None]),
        "busy_sessions_zero_after_request_end": stats(
            [s.sessions_zero - s.request_end for s in busy if s.sessions_zero and s.request_end]
        ),
        "polls": outcome.polls,
        "slowest_poll_ms": round(outcome.slowest_poll * 1000, 1),
        "t2_met": bool(idle_figures and busy_figures)
        and max(idle_figures + busy_figures) <= TARGET_SECONDS
        and len(idle_figures) == len(idle) and len(busy_figures) == len(busy),
        "problems": outcome.problems,
    }


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="each run: an idle and a busy rollout")
    parser.add_argument("--slow-ms", type=int, default=3000, help="the busy host's request")
    parser.add_argument("--poll", type=float, default=0.02, help="seconds between HAProxy polls")
    parser.add_argument("--address-prefix", default="127.0.51")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the fleet's state dir (logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.hosts < 2 or args.runs < 1:
        parser.error("--hosts must be at least 2 (one is drained while the rest serve), --runs at least 1")
    return Options(
        hosts=args.hosts, runs=args.runs, slow_ms=args.slow_ms, poll=args.poll,
        address_prefix=args.address_prefix, state_dir=args.state_dir, keep=args.keep, json=args.json,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    options = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr if options.json else sys.stdout, flush=True)

    # fleets are stopped in `finally`; SIGINT too, even where it was ignored (a job started with &)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    base = options.state_dir.resolve() if options.state_dir else Path(tempfile.mkdtemp(prefix="hw-drain-"))
    state_dir = base / "fleet"
    started = datetime.fromtimestamp(CLOCK.now(), UTC).isoformat(timespec="seconds")
    outcome = Outcome()
    log(f"drain bench: {options.hosts} hosts, {options.runs} run(s), busy request "
        f"/slow?ms={options.slow_ms}, polls every {options.poll * 1000:.0f} ms; {started}; "
        f"fleet in {state_dir}")
    try:
        fleet = fleet_up(
            state_dir, options.hosts, port=0, traffic_port=0, address_prefix=options.address_prefix,
            strategy=drain_strategy(), clock=CLOCK,
        )
        with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
            version = 1
            for run in range(1, options.runs + 1):
                for rollout in ("idle", "busy"):
                    version += 1
                    one_rollout(client, fleet, options, run, rollout, f"v{version}", outcome, log)
    finally:
        fleet_down(state_dir, clock=CLOCK)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = {"started": started, "hosts": options.hosts, "runs": options.runs, **summary(outcome)}
    result["samples"] = [s.to_json() for s in outcome.samples]
    if not options.keep and not outcome.problems:
        shutil.rmtree(base if not options.state_dir else state_dir, ignore_errors=True)
    if options.json:
        print(json.dumps(result), flush=True)
    else:
        for name in ("idle_app_stopped_after_drain_start", "idle_out_of_lb_after_drain_start",
                     "busy_app_stopped_after_last_request_end", "busy_drain_handshake",
                     "busy_sessions_zero_after_request_end"):
            figure = result[name]
            print(f"{name}: median {figure['median_ms']} ms, max {figure['max_ms']} ms "
                  f"over {figure['count']}")
        print(f"T2 {'met' if result['t2_met'] else 'NOT met'}; HAProxy polled {result['polls']} times "
              f"(slowest poll {result['slowest_poll_ms']} ms)"
              + (f"; problems: {'; '.join(outcome.problems)}" if outcome.problems else ""))
    return result


if __name__ == "__main__":
    try:
        final = main()
    except KeyboardInterrupt:
        print("interrupted; the fleet was stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(0 if final["t2_met"] and not final["problems"] else 1)
