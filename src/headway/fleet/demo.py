"""The demo: a local fleet behind HAProxy on v1, live traffic, a rollout to v2, the figures.

    fleet up (with pools blue/green for blue-green)
    -> open-loop load through HAProxy (`headway.fleet.loadgen`): ``rate`` req/s, 5% of
       them to /slow?ms=2000-5000
    -> a few seconds of steady state ("before")
    -> release v2 and roll it out with the chosen strategy ("during")
    -> a few seconds on v2 ("after"), then stop sending and wait for the answers in flight
    -> summary: requests sent, non-2xx, connection errors, p50/p99 before and during, and
       which versions answered

It passes when the rollout succeeded, every host ended healthy on v2 (blue-green: every
host of the new live pool on v2, the old pool healthy on v1, kept for a rollback), only
v2 answered after the rollout, and no request failed.

UI-free: the CLI passes a callback that draws each `DemoFrame` with Rich.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from headway.client.api import ApiClient
from headway.client.watch import RolloutSnapshot, watch_rollout
from headway.clock import Clock, SystemClock
from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import CanaryStrategy, RollingStrategy, StrategyKind
from headway.fleet.loadgen import (
    BackgroundLoad,
    LoadGenerator,
    LoadSettings,
    LoadSummary,
    RequestRecord,
    summarize,
    timeline,
)
from headway.fleet.local import (
    DEFAULT_ADDRESS_PREFIX,
    DEFAULT_POOLS,
    DEFAULT_PORT,
    DEFAULT_TRAFFIC_PORT,
    Fleet,
    Log,
    SampleStrategy,
    blue_green_strategy,
    fleet_down,
    fleet_up,
    publish_sample_release,
    sample_spec,
)

DEFAULT_DEMO_DIR = Path("state/demo")
DEFAULT_DEMO_HOSTS = 10
DEFAULT_RATE = 50.0
SLOW_SHARE = 0.05
BEFORE_SECONDS = 5.0  # steady state measured before the rollout starts
AFTER_SECONDS = 3.0  # traffic kept up after it ends
MAX_LOAD_SECONDS = 1800.0  # the generator's own bound; the demo stops it long before
FRAME_INTERVAL = 0.25


def demo_strategy(kind: StrategyKind) -> SampleStrategy:
    """rolling: the sample service's (20% batches); canary: 10%, pause 5s, 50%, pause 5s,
    100%; blue-green: the idle pool upgraded, 50% of traffic, 3 s, 100%, a 5 s rollback
    window."""
    if kind is StrategyKind.CANARY:
        return CanaryStrategy.model_validate(
            {
                "type": "canary",
                "steps": [
                    {"hosts": "10%"},
                    {"pause": "5s"},
                    {"hosts": "50%"},
                    {"pause": "5s"},
                    {"hosts": "100%"},
                ],
                "min_healthy_time": "2s",
                "progress_deadline": "60s",
            }
        )
    if kind is StrategyKind.BLUE_GREEN:
        return blue_green_strategy(DEFAULT_POOLS, pause=3.0, rollback_window=5.0)
    strategy = sample_spec().strategy
    assert isinstance(strategy, RollingStrategy)
    return strategy


class Phase(StrEnum):
    BEFORE = "before"
    DURING = "during"
    AFTER = "after"
    BAD_RELEASE = "bad release"  # `headway demo --bad-release` (headway.fleet.bad_release): v3
    FINISHING = "finishing"  # no new requests; waiting for the ones in flight


@dataclass(frozen=True)
class TrafficNow:
    """The load as the live view shows it."""

    elapsed: float
    sent: int
    in_flight: int
    answered: int
    failed: int
    rps: float  # answers per second over the last second
    versions: dict[str, int]  # 2xx answers by X-App-Version over the last 2 seconds

    @classmethod
    def of(cls, generator: LoadGenerator) -> TrafficNow:
        records = generator.records
        now = generator.elapsed()
        recent = [r for r in records if r.ended >= now - 2.0]
        return cls(
            elapsed=now,
            sent=generator.sent,
            in_flight=generator.in_flight,
            answered=len(records),
            failed=sum(1 for r in records if not r.ok),
            rps=float(sum(1 for r in recent if r.ended >= now - 1.0)),
            versions=dict(sorted(Counter(r.version or "?" for r in recent if r.ok).items())),
        )


@dataclass(frozen=True)
class DemoFrame:
    strategy: str
    phase: Phase
    traffic: TrafficNow
    rollout: RolloutSnapshot | None = None


@dataclass(frozen=True)
class DemoSummary:
    ok: bool
    strategy: str
    status: RolloutStatus
    reason: str
    rollout_id: str
    service: str
    from_release: int | None
    to_release: int
    duration_seconds: float
    hosts_total: int
    hosts_on_target: int
    hosts_healthy_on_target: int
    hosts_healthy: int
    events: int
    server: str
    token: str
    traffic: str
    state_dir: Path
    load: dict[str, LoadSummary]  # before, during, after, total
    timeline: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failures: list[RequestRecord] = field(default_factory=list)  # the first few failed requests
    load_started_at: float = 0.0  # wall clock (epoch seconds) of the load's time 0
    rollout_window: tuple[float, float] = (0.0, 0.0)  # the rollout, in seconds of the load

    @property
    def total(self) -> LoadSummary:
        return self.load["total"]

    def to_json(self) -> dict[str, Any]:
        total = self.total
        return {
            "ok": self.ok,
            "strategy": self.strategy,
            "status": self.status.value,
            "reason": self.reason,
            "problems": self.problems,
            "rollout_id": self.rollout_id,
            "service": self.service,
            "from_release": self.from_release,
            "to_release": self.to_release,
            "duration_seconds": round(self.duration_seconds, 3),
            "hosts_total": self.hosts_total,
            "hosts_on_target": self.hosts_on_target,
            "hosts_healthy_on_target": self.hosts_healthy_on_target,
            "hosts_healthy": self.hosts_healthy,
            "events": self.events,
            "server": self.server,
            "token": self.token,
            "traffic": self.traffic,
            "state_dir": str(self.state_dir),
            "load": {name: summary.to_json() for name, summary in self.load.items()},
            "load_started_at": round(self.load_started_at, 3),
            "rollout_window": [round(t, 3) for t in self.rollout_window],
            "timeline": self.timeline,
            "failures": [
                {
                    "index": r.index,
                    "path": r.path,
                    "scheduled": round(r.scheduled, 3),
                    "ended": round(r.ended, 3),
                    "status": r.status,
                    "error": r.error.value if r.error else None,
                    "version": r.version,
                }
                for r in self.failures
            ],
            # the zero-downtime figures, last
            "requests": total.sent,
            "non_2xx": total.non_2xx,
            "connection_errors": total.connection_errors,
            "p50_before_ms": self.load["before"].to_json()["p50_ms"],
            "p99_before_ms": self.load["before"].to_json()["p99_ms"],
            "p50_during_ms": self.load["during"].to_json()["p50_ms"],
            "p99_during_ms": self.load["during"].to_json()["p99_ms"],
            "versions_seen": sorted(total.versions),
        }


def reset_state_dir(state_dir: Path, log: Log) -> None:
    """Stop whatever an earlier run left in ``state_dir``, then remove it."""
    if state_dir.exists():
        if fleet_down(state_dir, log=log).stopped:
            log(f"stopped a fleet left running in {state_dir}")
        shutil.rmtree(state_dir)


@contextlib.contextmanager
def fresh_fleet(
    state_dir: Path,
    hosts: int,
    *,
    strategy: SampleStrategy,
    stay: bool,
    pools: tuple[str, str] | None = None,
    port: int = DEFAULT_PORT,
    traffic_port: int = DEFAULT_TRAFFIC_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = lambda _: None,
) -> Iterator[Fleet]:
    """A fleet started anew in ``state_dir`` (what an earlier run left there is stopped and
    removed first), stopped when the block ends unless ``stay``."""
    state_dir = state_dir.resolve()
    reset_state_dir(state_dir, log)
    fleet = fleet_up(
        state_dir,
        hosts,
        port=port,
        traffic_port=traffic_port,
        address_prefix=address_prefix,
        pools=pools,
        strategy=strategy,
        clock=clock,
        sleep=sleep,
        log=log,
    )
    try:
        yield fleet
    finally:
        if not stay:
            log("stopping the fleet")
            fleet_down(state_dir, clock=clock, sleep=sleep)


class LoadRun:
    """Open-loop load through the fleet's HAProxy while a ``with`` block runs: ``rate``
    req/s, `SLOW_SHARE` of them to /slow, each moment drawn as a `DemoFrame` by ``on_frame``.

    Leaving the block stops the sending, draws `Phase.FINISHING` frames while the answers
    in flight come back (60 s at most, past the requests' own 30 s timeout), and keeps every
    request's record in `records`.
    """

    def __init__(
        self,
        fleet: Fleet,
        strategy: str,
        *,
        rate: float,
        on_frame: Callable[[DemoFrame], None],
        clock: Clock,
        sleep: Callable[[float], None],
        log: Log,
    ) -> None:
        self.generator = LoadGenerator(
            LoadSettings(
                url=fleet.traffic,
                rate=rate,
                duration=MAX_LOAD_SECONDS,
                slow_share=SLOW_SHARE,
                seed=1,
            ),
            clock=clock,
        )
        self.started_at = 0.0  # wall clock (epoch seconds) of the load's time 0
        self.records: list[RequestRecord] = []  # every request's, once the block has ended
        self._fleet = fleet
        self._strategy = strategy
        self._rate = rate
        self._on_frame = on_frame
        self._clock = clock
        self._sleep = sleep
        self._log = log
        self._load: BackgroundLoad | None = None

    def elapsed(self) -> float:
        """Seconds of the load so far: the time base of every record."""
        return self.generator.elapsed()

    def frame(self, phase: Phase, snapshot: RolloutSnapshot | None = None) -> None:
        self._on_frame(DemoFrame(self._strategy, phase, TrafficNow.of(self.generator), snapshot))

    def hold(self, phase: Phase, seconds: float) -> None:
        """Keep the load up for ``seconds``, drawing a frame every `FRAME_INTERVAL`."""
        end = self._clock.monotonic() + seconds
        while self._clock.monotonic() < end:
            self.frame(phase)
            self._sleep(min(FRAME_INTERVAL, max(0.0, end - self._clock.monotonic())))

    def __enter__(self) -> LoadRun:
        self._log(f"sending {self._rate:g} requests/s through HAProxy at {self._fleet.traffic}")
        self._load = BackgroundLoad(self.generator).start()
        self.started_at = self._clock.now()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        load = self._load
        if load is None:
            return
        self.generator.stop()
        deadline = self._clock.monotonic() + 60.0  # past the requests' own 30 s timeout
        while load.running and self._clock.monotonic() < deadline:
            self.frame(Phase.FINISHING)
            self._sleep(FRAME_INTERVAL)
        self.records = load.stop(timeout=5.0)


def _judge(
    fleet: Fleet, strategy: SampleStrategy, hosts: Sequence[HostView], to_release: int,
    from_release: int | None,
) -> tuple[list[HostView], list[str]]:
    """The hosts that should run the target (every host, or the new live pool), and what
    is wrong with the fleet's end state."""
    problems = []
    by_name = {h.name: h for h in hosts}
    missing = [h.name for h in fleet.hosts if h.name not in by_name]
    if missing:
        problems.append(f"hosts unknown to the server: {', '.join(missing)}")
    unhealthy = [h.name for h in hosts if not (h.connected and h.health is Health.HEALTHY)]
    if unhealthy:
        problems.append(f"hosts not healthy: {', '.join(unhealthy)}")
    target = list(hosts)
    if fleet.pools is not None and strategy.type is StrategyKind.BLUE_GREEN:
        # the idle pool became live; the old one keeps the previous release for a rollback
        live = {h.name for h in fleet.pool_hosts(fleet.pools[1])}
        target = [h for h in hosts if h.name in live]
        stale = [h.name for h in hosts if h.name not in live and h.observed_release != from_release]
        if stale:
            problems.append(f"hosts of the old pool not on v{from_release}: {', '.join(stale)}")
    wrong = [h.name for h in target if h.observed_release != to_release]
    if wrong:
        problems.append(f"hosts not on v{to_release}: {', '.join(wrong)}")
    return target, problems


def upgrade(
    fleet: Fleet,
    strategy: SampleStrategy,
    *,
    rate: float = DEFAULT_RATE,
    on_frame: Callable[[DemoFrame], None] = lambda _: None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    before: float = BEFORE_SECONDS,
    after: float = AFTER_SECONDS,
    timeout: float = 600.0,
    log: Log = lambda _: None,
) -> DemoSummary:
    """Under load through HAProxy: publish v2 of the sample app and roll ``fleet`` out to
    it; the outcome and the load's figures, measured."""
    clock = clock or SystemClock()
    kind = strategy.type.value
    with LoadRun(fleet, kind, rate=rate, on_frame=on_frame, clock=clock, sleep=sleep, log=log) as load:
        load.hold(Phase.BEFORE, before)
        with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
            release = publish_sample_release(
                client, fleet.service, "v2", fleet.state_dir / "artifacts", note="headway demo"
            )
            log(f"created release {release.service} {release.version}; starting the {kind} rollout")
            started = clock.monotonic()
            t_start = load.elapsed()
            out = client.start_rollout(fleet.service, to=release.version, note="headway demo")
            final = watch_rollout(
                client,
                out.rollout.id,
                on_update=lambda snap: load.frame(Phase.DURING, snap),
                clock=clock,
                timeout=timeout,
                interval=FRAME_INTERVAL,
                sleep=sleep,
            )
            t_end = load.elapsed()
            duration = clock.monotonic() - started
            load.hold(Phase.AFTER, after)
            hosts = client.list_hosts(service=fleet.service)
    records = load.records

    summary = final.rollout.rollout
    target, problems = _judge(fleet, strategy, hosts, release.number, summary.from_release)
    on_target = [h for h in target if h.observed_release == release.number]
    healthy_on_target = [h for h in on_target if h.health is Health.HEALTHY]
    windows = {
        "before": summarize(records, until=t_start),
        "during": summarize(records, since=t_start, until=t_end),
        "after": summarize(records, since=t_end),
        "total": summarize(records),
    }
    if summary.status is not RolloutStatus.SUCCEEDED:
        problems.insert(0, f"the rollout ended {summary.status.value}: {summary.reason}")
    if windows["total"].failed:
        problems.append(
            f"{windows['total'].failed} request(s) failed: "
            + ", ".join(f"{n} {kind}" for kind, n in windows["total"].errors.items())
        )
    late = set(windows["after"].versions) - {release.version}
    if late:
        problems.append(f"after the rollout, {', '.join(sorted(late))} still answered")
    if windows["total"].sent == 0:
        problems.append("no request was sent")
    return DemoSummary(
        ok=not problems,
        strategy=kind,
        status=summary.status,
        reason=summary.reason,
        rollout_id=summary.id,
        service=fleet.service,
        from_release=summary.from_release,
        to_release=summary.to_release,
        duration_seconds=duration,
        hosts_total=len(hosts),
        hosts_on_target=len(on_target),
        hosts_healthy_on_target=len(healthy_on_target),
        hosts_healthy=sum(1 for h in hosts if h.health is Health.HEALTHY),
        events=final.events_seen,
        server=fleet.server,
        token=fleet.token,
        traffic=fleet.traffic,
        state_dir=fleet.state_dir,
        load=windows,
        timeline=[b.to_json() for b in timeline(records)],
        problems=problems,
        failures=sorted((r for r in records if not r.ok), key=lambda r: r.scheduled)[:20],
        load_started_at=load.started_at,
        rollout_window=(t_start, t_end),
    )


def run_demo(
    state_dir: Path = DEFAULT_DEMO_DIR,
    hosts: int = DEFAULT_DEMO_HOSTS,
    *,
    strategy: StrategyKind = StrategyKind.ROLLING,
    rate: float = DEFAULT_RATE,
    stay: bool = False,
    port: int = DEFAULT_PORT,
    traffic_port: int = DEFAULT_TRAFFIC_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    on_frame: Callable[[DemoFrame], None] = lambda _: None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = lambda _: None,
) -> DemoSummary:
    """Fresh fleet on v1 -> load -> rollout to v2 -> summary; the fleet is stopped unless
    ``stay``."""
    chosen = demo_strategy(strategy)
    with fresh_fleet(
        state_dir,
        hosts,
        strategy=chosen,
        stay=stay,
        pools=DEFAULT_POOLS if strategy is StrategyKind.BLUE_GREEN else None,
        port=port,
        traffic_port=traffic_port,
        address_prefix=address_prefix,
        clock=clock,
        sleep=sleep,
        log=log,
    ) as fleet:
        return upgrade(fleet, chosen, rate=rate, on_frame=on_frame, clock=clock, sleep=sleep, log=log)
