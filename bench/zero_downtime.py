"""T1 zero downtime: a constant request rate through HAProxy while a local fleet is upgraded.

    python bench/zero_downtime.py [--hosts 10] [--rate 100] [--runs 3] [--json]
                                  [--kinds rolling,canary,blue-green,rollback]

For every run of every kind it starts a fresh local fleet (`headway.fleet.local.fleet_up`:
a real ``headway server``, one HAProxy, ``--hosts`` real agents, each running the sample
app on its own loopback address: 127.0.50.x, or 127.0.51.x for the blue-green fleet with
pools ``blue,green``), all on v1. Then:

- an open-loop generator (`headway.fleet.loadgen`: request ``i`` leaves at ``i / rate`` s
  whether or not earlier ones were answered; latency counts from the scheduled time)
  sends ``--rate`` requests/s through HAProxy, ``--slow-share`` of them to
  ``/slow?ms=N`` with N uniform in ``--slow-ms`` (2000-5000), the rest to ``/``;
- ``--before`` seconds of steady state;
- the rollout, by kind (the same strategies as ``headway demo``, `headway.fleet.demo`):
  ``rolling`` (batches of 20%), ``canary`` (10%, pause 5 s, 50%, pause 5 s, 100%),
  ``blue-green`` (the idle pool upgraded, 50% of traffic, 3 s, 100%, a 5 s rollback
  window), ``rollback`` (a rolling rollout to v2, and ``POST /api/v1/services/web/rollback``
  once 40% of the hosts are done: the hosts on v2 and those on their way go back to v1);
- ``--after`` seconds on the final release; then no new sends, and every request in
  flight is waited for.

Every request is counted: a 2xx answer, a non-2xx answer, or a socket error (no answer).
Reported per run: requests sent, non-2xx, connection errors, p50/p99 latency before and
during the rollout (over every request, and over ``/`` alone, since /slow sets p99),
their ratio, which versions answered before / during / after and second by second
(``X-App-Version``), how long the rollout (and the rollback) took, and how many requests
HAProxy logged as not normal (retried or redispatched ones included: it logs only those).
T1: no failed request, and p99 during at most 1.5x p99 before.

Because /slow sets p99, two more figures say what the rollout adds to the short requests:
p99 over ``/`` alone, and p99 of the *excess* (latency minus the time a /slow request asked
for). On a shared machine a burst of other work shows up in them as well; to tell that
apart, each second of the timeline also carries the machine's CPU use (all processes, from
/proc/stat) and the generator's own delay in sending (``lag_ms``; a run whose generator fell
more than 1 s behind is reported as a problem). ``--records FILE`` writes every request
(JSON lines) for a closer look.

``--runs N`` repeats each kind N times and prints the medians. ``--json`` prints one JSON
object per run, then one with the medians. Each fleet is stopped (`fleet_down`) at the end
of its run, on an error or on Ctrl-C / SIGTERM too; its state dir (under a temporary
directory, or ``--state-dir``) is removed unless ``--keep`` or the run found a problem.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from headway.client.api import ApiClient
from headway.client.watch import RolloutSnapshot, watch_rollout
from headway.clock import Clock, SystemClock
from headway.domain.models import Health, HostView, RolloutStatus
from headway.domain.spec import StrategyKind
from headway.errors import HeadwayError
from headway.fleet.demo import demo_strategy
from headway.fleet.loadgen import (
    BackgroundLoad,
    LoadGenerator,
    LoadSettings,
    LoadSummary,
    RequestRecord,
    percentile,
    summarize,
    timeline,
)
from headway.fleet.local import (
    DEFAULT_POOLS,
    Fleet,
    fleet_down,
    fleet_up,
    publish_sample_release,
)

KINDS = ("rolling", "canary", "blue-green", "rollback")
ROLLBACK_AT = 0.4  # share of hosts done on the new release when the rollback is asked for
MAX_LOAD_SECONDS = 3600.0  # the generator's own bound; a run stops it long before
T1_P99_RATIO = 1.5
MAX_LAG = 1.0  # seconds the generator may fall behind its schedule before a run is suspect
CLOCK = SystemClock()


@dataclass(frozen=True)
class Options:
    hosts: int = 10
    rate: float = 100.0
    runs: int = 1
    kinds: tuple[str, ...] = KINDS
    before: float = 15.0
    after: float = 5.0
    slow_share: float = 0.05
    slow_ms: tuple[int, int] = (2000, 5000)
    address_prefix: str = "127.0.50"
    pools_prefix: str = "127.0.51"
    state_dir: Path | None = None
    keep: bool = False
    json: bool = False
    records: Path | None = None  # write every request here (JSON lines), for a closer look
    seed: int = 1
    timeout: float = 600.0  # for one rollout (and its rollback)


@dataclass
class RunResult:
    kind: str
    run: int
    hosts: int
    rate: float
    status: str = ""
    reason: str = ""
    from_release: int | None = None
    to_release: int | None = None
    rollout_seconds: float = 0.0
    rollback_seconds: float | None = None  # rollback kind: from POST .../rollback to its end
    rollback_after_hosts: int | None = None  # hosts done on the new release at that moment
    window: tuple[float, float] = (0.0, 0.0)  # the rollout, in seconds since the load started
    load: dict[str, LoadSummary] = field(default_factory=dict)  # before, during, after, total
    timeline: list[dict[str, Any]] = field(default_factory=list)
    excess_p99: dict[str, float | None] = field(default_factory=dict)  # before/during, seconds
    cpu_busy: float | None = None  # the busiest second of the rollout: share of all cores in use
    loadavg: tuple[float, float] = (0.0, 0.0)  # the machine's 1-min load average at start, at end
    haproxy_logged: int = 0  # request lines in haproxy.log: only the ones not ending normally
    problems: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first few failed requests
    state_dir: str = ""

    @property
    def total(self) -> LoadSummary:
        return self.load["total"]

    @property
    def failed(self) -> int:
        return self.total.failed

    def ratio(self, fast: bool) -> float | None:
        before, during = self.load["before"], self.load["during"]
        a, b = (before.p99_fast, during.p99_fast) if fast else (before.p99, during.p99)
        return None if not a or b is None else b / a

    @property
    def t1_met(self) -> bool:
        ratio = self.ratio(fast=False)
        return self.failed == 0 and ratio is not None and ratio <= T1_P99_RATIO

    def to_json(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 1)

        def r3(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        total, before, during = self.total, self.load["before"], self.load["during"]
        return {
            "kind": self.kind,
            "run": self.run,
            "hosts": self.hosts,
            "rate": self.rate,
            "status": self.status,
            "reason": self.reason,
            "from_release": self.from_release,
            "to_release": self.to_release,
            "rollout_seconds": round(self.rollout_seconds, 3),
            "rollback_seconds": r3(self.rollback_seconds),
            "rollback_after_hosts": self.rollback_after_hosts,
            "window": [round(t, 3) for t in self.window],
            "load": {name: summary.to_json() for name, summary in self.load.items()},
            "timeline": self.timeline,
            "haproxy_logged": self.haproxy_logged,
            "loadavg": list(self.loadavg),
            "cpu_busy_max": self.cpu_busy,
            "max_lag_ms": ms(total.max_lag),
            "problems": self.problems,
            "failures": self.failures,
            "state_dir": self.state_dir,
            # the T1 figures, last
            "sent": total.sent,
            "non_2xx": total.non_2xx,
            "connection_errors": total.connection_errors,
            "failed": total.failed,
            "p50_before_ms": ms(before.p50),
            "p99_before_ms": ms(before.p99),
            "p50_during_ms": ms(during.p50),
            "p99_during_ms": ms(during.p99),
            "p99_ratio": r3(self.ratio(fast=False)),
            "p50_fast_before_ms": ms(before.p50_fast),
            "p99_fast_before_ms": ms(before.p99_fast),
            "p50_fast_during_ms": ms(during.p50_fast),
            "p99_fast_during_ms": ms(during.p99_fast),
            "p99_fast_ratio": r3(self.ratio(fast=True)),
            "p99_excess_before_ms": ms(self.excess_p99.get("before")),
            "p99_excess_during_ms": ms(self.excess_p99.get("during")),
            "versions_before": sorted(before.versions),
            "versions_during": sorted(during.versions),
            "versions_after": sorted(self.load["after"].versions),
            "t1_met": self.t1_met,
        }


# ----------------------------------------------------------------- one run


def _log(options: Options) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"  {line}", file=sys.stderr if options.json else sys.stdout, flush=True)

    return log


def _state_dir(base: Path, kind: str, run: int) -> Path:
    path = base / f"{kind}-{run}"
    if path.exists():
        fleet_down(path)
        shutil.rmtree(path)
    return path


def _haproxy_logged(fleet: Fleet) -> int:
    """Request lines HAProxy logged; with ``option dontlog-normal`` only those that did not
    end normally (an error, a retry, a redispatch, an aborted connection)."""
    try:
        text = (fleet.haproxy_dir / "haproxy.log").read_text("utf-8", errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if 'HTTP/1.' in line)


def _watch(
    client: ApiClient, rollout_id: str, options: Options, on_update: Callable[[RolloutSnapshot], None]
) -> RolloutSnapshot:
    return watch_rollout(
        client, rollout_id, on_update=on_update, clock=CLOCK, timeout=options.timeout, interval=0.25
    )


def _end_state(
    kind: str, fleet: Fleet, hosts: Sequence[HostView], expect: int, previous: int | None
) -> list[str]:
    """What is wrong with the fleet after the run: every host healthy, on ``expect`` (with
    pools: the new live pool on it, the old one kept on ``previous``)."""
    problems = []
    seen = {h.name: h for h in hosts}
    missing = [h.name for h in fleet.hosts if h.name not in seen]
    if missing:
        problems.append(f"hosts unknown to the server: {', '.join(missing)}")
    unhealthy = [h.name for h in hosts if not (h.connected and h.health is Health.HEALTHY)]
    if unhealthy:
        problems.append(f"hosts not healthy at the end: {', '.join(unhealthy)}")
    on_target = list(hosts)
    if kind == "blue-green" and fleet.pools is not None:
        live = {h.name for h in fleet.pool_hosts(fleet.pools[1])}
        on_target = [h for h in hosts if h.name in live]
        stale = [h.name for h in hosts if h.name not in live and h.observed_release != previous]
        if stale:
            problems.append(f"hosts of the old pool not kept on v{previous}: {', '.join(stale)}")
    wrong = [h.name for h in on_target if h.observed_release != expect]
    if wrong:
        problems.append(f"hosts not on v{expect} at the end: {', '.join(wrong)}")
    return problems


def run_one(kind: str, run: int, base: Path, options: Options) -> RunResult:
    """A fresh fleet, steady load, one rollout of ``kind`` under it, the figures."""
    log = _log(options)
    state_dir = _state_dir(base, kind, run)
    pools = DEFAULT_POOLS if kind == "blue-green" else None
    strategy = demo_strategy(
        StrategyKind.BLUE_GREEN if kind == "blue-green"
        else StrategyKind.CANARY if kind == "canary"
        else StrategyKind.ROLLING
    )
    result = RunResult(kind, run, options.hosts, options.rate, state_dir=str(state_dir))
    result.loadavg = (os.getloadavg()[0], 0.0)
    log(f"{kind} #{run}: starting a {options.hosts}-host fleet in {state_dir}")
    try:
        fleet = fleet_up(
            state_dir,
            options.hosts,
            port=0,
            traffic_port=0,
            address_prefix=options.pools_prefix if pools else options.address_prefix,
            pools=pools,
            strategy=strategy,
            clock=CLOCK,
        )
        _under_load(kind, fleet, result, options, log)
    finally:
        fleet_down(state_dir, clock=CLOCK)
    if not options.keep and not result.problems:
        shutil.rmtree(state_dir, ignore_errors=True)
    return result


def _under_load(
    kind: str, fleet: Fleet, result: RunResult, options: Options, log: Callable[[str], None]
) -> None:
    generator = LoadGenerator(
        LoadSettings(
            url=fleet.traffic,
            rate=options.rate,
            duration=MAX_LOAD_SECONDS,
            slow_share=options.slow_share,
            slow_ms=options.slow_ms,
            seed=options.seed + result.run,
        ),
        clock=CLOCK,
    )
    load = BackgroundLoad(generator).start()
    load_started_at = CLOCK.now()
    cpu = CpuSampler(generator.elapsed).start()
    records: list[RequestRecord] = []
    try:
        with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
            release = publish_sample_release(client, fleet.service, "v2", fleet.state_dir / "artifacts")
            log(f"{options.rate:g} req/s through HAProxy; {options.before:g} s of steady state")
            time.sleep(options.before)
            t_start = generator.elapsed()
            started = CLOCK.monotonic()
            out = client.start_rollout(fleet.service, to=release.version, note=f"bench {kind}")
            rollout_id = out.rollout.id
            log(f"rollout {rollout_id} started ({kind})")
            rollback_at = max(1, round(options.hosts * ROLLBACK_AT))
            asked: list[float] = []

            def on_update(snap: RolloutSnapshot) -> None:
                summary = snap.rollout.rollout
                if kind != "rollback" or asked or summary.hosts_done < rollback_at or snap.terminal:
                    return
                when = CLOCK.monotonic()
                try:
                    client.rollback(fleet.service, reason="bench: rollback mid-way")
                except HeadwayError as error:  # it ended meanwhile: rolled back below instead
                    log(f"rollback mid-way refused: {error}")
                    return
                asked.append(when)
                result.rollback_after_hosts = summary.hosts_done
                log(f"rollback asked with {summary.hosts_done}/{summary.hosts_total} hosts done")

            final = _watch(client, rollout_id, options, on_update)
            if kind == "rollback" and not asked:
                # the rollout ended before the poll saw 40% done: roll back the finished one
                asked.append(CLOCK.monotonic())
                back = client.rollback(fleet.service, reason="bench: rollback after the rollout")
                log(f"rollout ended {final.rollout.rollout.status.value}; rolling it back")
                final = _watch(client, back.rollout.id, options, lambda _: None)
            t_end = generator.elapsed()
            result.rollout_seconds = CLOCK.monotonic() - started
            if asked:
                result.rollback_seconds = CLOCK.monotonic() - asked[0]
            summary = final.rollout.rollout
            result.status, result.reason = summary.status.value, summary.reason
            result.from_release = out.rollout.from_release
            result.to_release = out.rollout.to_release
            log(f"rollout ended {summary.status.value} after {result.rollout_seconds:.1f} s; "
                f"{options.after:g} s more")
            time.sleep(options.after)
            hosts = client.list_hosts(service=fleet.service)
    finally:
        generator.stop()
        records = load.stop(timeout=60.0)  # past the requests' own 30 s timeout
        cpu.stop()
        if load.running:
            result.problems.append("the load generator did not finish within 60 s")

    result.window = (t_start, t_end)
    result.loadavg = (result.loadavg[0], os.getloadavg()[0])
    if options.records is not None:
        with options.records.open("a", encoding="utf-8") as sink:
            for r in sorted(records, key=lambda r: r.index):
                sink.write(json.dumps({
                    "kind": result.kind, "run": result.run, "index": r.index, "path": r.path,
                    "scheduled": round(r.scheduled, 4), "started": round(r.started, 4),
                    "ended": round(r.ended, 4), "status": r.status,
                    "error": r.error.value if r.error else None, "version": r.version,
                    "load_started_at": round(load_started_at, 4),
                }) + "\n")
    result.load = {
        "before": summarize(records, until=t_start),
        "during": summarize(records, since=t_start, until=t_end),
        "after": summarize(records, since=t_end),
        "total": summarize(records),
    }
    busy = cpu.per_second()
    lag: dict[int, float] = {}
    for r in records:
        second = int(r.scheduled)
        lag[second] = max(lag.get(second, 0.0), r.started - r.scheduled)
    result.timeline = [
        {"t": b.start, "answers": b.answers, "failed": b.failed, "cpu": busy.get(int(b.start)),
         "lag_ms": round(lag.get(int(b.start), 0.0) * 1000, 1)}
        for b in timeline(records)
    ]
    result.cpu_busy = max(
        (share for second, share in busy.items() if t_start <= second < t_end), default=None
    )
    result.excess_p99 = {
        "before": percentile([excess(r) for r in records if r.ok and r.scheduled < t_start], 0.99),
        "during": percentile(
            [excess(r) for r in records if r.ok and t_start <= r.scheduled < t_end], 0.99
        ),
    }
    result.haproxy_logged = _haproxy_logged(fleet)
    result.failures = [
        {"index": r.index, "path": r.path, "scheduled": round(r.scheduled, 3), "status": r.status,
         "error": r.error.value if r.error else None, "version": r.version}
        for r in sorted((r for r in records if not r.ok), key=lambda r: r.scheduled)[:20]
    ]
    _judge(kind, fleet, result, hosts, generator.sent, len(records))


class CpuSampler:
    """The machine's CPU use (every process, every core, from /proc/stat) per second of the
    load's time base: tells a stall of the whole machine from one a rollout causes."""

    def __init__(self, elapsed: Callable[[], float], interval: float = 0.25) -> None:
        self._elapsed = elapsed
        self._interval = interval
        self._samples: list[tuple[float, float]] = []  # (load time, busy share since last)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="cpu-sampler", daemon=True)

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return 0, 0
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    def _main(self) -> None:
        total, idle = self._read()
        while not self._stopping.wait(self._interval):
            now_total, now_idle = self._read()
            spent = now_total - total
            if spent > 0:
                self._samples.append((self._elapsed(), 1 - (now_idle - idle) / spent))
            total, idle = now_total, now_idle

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)

    def per_second(self) -> dict[int, float]:
        grouped: dict[int, list[float]] = {}
        for t, share in self._samples:
            grouped.setdefault(int(t), []).append(share)
        return {second: round(statistics.mean(v), 2) for second, v in grouped.items()}


def excess(record: RequestRecord) -> float:
    """Latency beyond what the request asked for: a /slow?ms=N request's N is taken off, so
    the long requests do not hide what a rollout adds (or let their random mix pass for it)."""
    asked = 0.0
    if record.slow:
        _, _, value = record.path.partition("ms=")
        asked = float(value or 0) / 1000
    return record.latency - asked


def _judge(
    kind: str, fleet: Fleet, result: RunResult, hosts: Sequence[HostView], sent: int, answered: int
) -> None:
    rolled_back = kind == "rollback"
    expected = RolloutStatus.ROLLED_BACK if rolled_back and result.rollback_after_hosts else (
        RolloutStatus.SUCCEEDED
    )
    problems = result.problems
    if result.status != expected.value:
        problems.append(f"the rollout ended {result.status} ({result.reason}), not {expected.value}")
    if result.total.max_lag > MAX_LAG:
        problems.append(
            f"the load generator itself fell {result.total.max_lag:.1f} s behind its schedule: this "
            "machine was overloaded (load average {:.1f} -> {:.1f}), and the latencies and errors "
            "of this run measure that too".format(*result.loadavg)
        )
    if sent != answered:
        problems.append(f"{sent} requests sent but {answered} ended")
    total = result.total
    if total.failed:
        problems.append(
            f"{total.failed} request(s) failed: "
            + ", ".join(f"{n} {why}" for why, n in total.errors.items())
        )
    new, old = "v2", "v1"
    final = old if rolled_back else new
    if set(result.load["before"].versions) != {old}:
        problems.append(f"before the rollout {sorted(result.load['before'].versions)} answered")
    if set(result.load["during"].versions) != {old, new}:
        problems.append(f"during the rollout {sorted(result.load['during'].versions)} answered")
    if set(result.load["after"].versions) != {final}:
        problems.append(f"after the rollout {sorted(result.load['after'].versions)} answered")
    assert result.from_release is not None and result.to_release is not None
    expect = result.from_release if rolled_back else result.to_release
    problems += _end_state(kind, fleet, hosts, expect, result.from_release)


# ----------------------------------------------------------------- output


def versions_line(result: RunResult) -> str:
    """One character per second: the share of answers from v2 in tenths ('.' none, '#' all),
    '!' where a request failed, '|' around the rollout."""
    start, end = result.window
    chars = []
    marks = [start, end]
    for bucket in result.timeline:
        t = float(bucket["t"])
        while marks and t + 1 > marks[0]:  # the bar goes before the second it falls in
            chars.append("|")
            marks.pop(0)
        answers: dict[str, int] = bucket["answers"]
        total = sum(answers.values())
        if bucket["failed"]:
            chars.append("!")
        elif total == 0:
            chars.append(" ")
        else:
            share = answers.get("v2", 0) / total
            chars.append("." if share == 0 else "#" if share == 1 else str(min(9, max(1, int(share * 10)))))
    return "".join(chars)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"


def print_run(result: RunResult) -> None:
    total, before, during = result.total, result.load["before"], result.load["during"]
    ratio, fast_ratio = result.ratio(fast=False), result.ratio(fast=True)
    back = (
        f", rollback {result.rollback_seconds:.1f} s (asked at {result.rollback_after_hosts} hosts done)"
        if result.rollback_seconds is not None
        else ""
    )
    print(f"{result.kind} #{result.run}: {result.status}, rollout {result.rollout_seconds:.1f} s{back}")
    print(f"  sent {total.sent}, non-2xx {total.non_2xx}, connection errors {total.connection_errors}"
          f", HAProxy abnormal log lines {result.haproxy_logged}")
    print(f"  all requests  p50 {_fmt_ms(before.p50)} -> {_fmt_ms(during.p50)} ms, "
          f"p99 {_fmt_ms(before.p99)} -> {_fmt_ms(during.p99)} ms (x{ratio or 0:.2f})")
    print(f"  / only        p50 {_fmt_ms(before.p50_fast)} -> {_fmt_ms(during.p50_fast)} ms, "
          f"p99 {_fmt_ms(before.p99_fast)} -> {_fmt_ms(during.p99_fast)} ms (x{fast_ratio or 0:.2f})")
    print(f"  p99 beyond the asked /slow time {_fmt_ms(result.excess_p99.get('before'))} -> "
          f"{_fmt_ms(result.excess_p99.get('during'))} ms")
    print(f"  versions: before {before.versions}, during {during.versions}, "
          f"after {result.load['after'].versions}")
    print(f"  v2 share per second: {versions_line(result)}")
    print(f"  busiest second of the rollout: {(result.cpu_busy or 0):.0%} of the machine's CPU in use "
          f"(every process); the generator's own delay at most {_fmt_ms(result.total.max_lag)} ms")
    print(f"  T1 {'met' if result.t1_met else 'NOT met'}"
          + (f"; problems: {'; '.join(result.problems)}" if result.problems else ""), flush=True)


MEDIAN_FIELDS = (
    "sent", "failed", "p50_before_ms", "p99_before_ms", "p50_during_ms", "p99_during_ms", "p99_ratio",
    "p50_fast_before_ms", "p99_fast_before_ms", "p50_fast_during_ms", "p99_fast_during_ms",
    "p99_fast_ratio", "p99_excess_before_ms", "p99_excess_during_ms", "rollout_seconds",
    "rollback_seconds",
)


def medians(results: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per kind: the median of each figure over its runs, the runs' values, totals of failures."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r.kind for r in results):
        rows = [r.to_json() for r in results if r.kind == kind]
        entry: dict[str, Any] = {"runs": len(rows)}
        for name in MEDIAN_FIELDS:
            values = [row[name] for row in rows if row[name] is not None]
            entry[name] = round(statistics.median(values), 3) if values else None
            entry[f"{name}_runs"] = values
        entry["failed_total"] = sum(row["failed"] for row in rows)
        entry["sent_total"] = sum(row["sent"] for row in rows)
        entry["t1_met_runs"] = sum(1 for row in rows if row["t1_met"])
        entry["problems"] = [p for r in results if r.kind == kind for p in r.problems]
        out[kind] = entry
    return out


def print_medians(table: dict[str, dict[str, Any]]) -> None:
    print("\nmedians (per kind, over its runs):")
    print(f"{'kind':<11} {'runs':>4} {'sent':>6} {'failed':>6} {'p50 b/d ms':>13} "
          f"{'p99 b/d ms':>13} {'x':>5} {'/ p99 b/d ms':>13} {'x':>5} {'excess p99':>11} {'rollout s':>9} "
          f"{'T1 met':>6}")
    for kind, m in table.items():
        def pair(a: str, b: str, row: dict[str, Any] = m) -> str:
            return f"{row[a] or 0:.0f}/{row[b] or 0:.0f}"

        print(f"{kind:<11} {m['runs']:>4} {m['sent'] or 0:>6.0f} {m['failed_total']:>6} "
              f"{pair('p50_before_ms', 'p50_during_ms'):>13} {pair('p99_before_ms', 'p99_during_ms'):>13} "
              f"{m['p99_ratio'] or 0:>5.2f} {pair('p99_fast_before_ms', 'p99_fast_during_ms'):>13} "
              f"{m['p99_fast_ratio'] or 0:>5.2f} "
              f"{pair('p99_excess_before_ms', 'p99_excess_during_ms'):>11} {m['rollout_seconds'] or 0:>9.1f} "
              f"{m['t1_met_runs']:>3}/{m['runs']}")


# ----------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--runs", type=int, default=1, help="runs of each kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--before", type=float, default=15.0, help="seconds of steady state")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after the rollout")
    parser.add_argument("--slow-share", type=float, default=0.05)
    parser.add_argument("--slow-ms", default="2000-5000", help="LOW-HIGH milliseconds of /slow")
    parser.add_argument("--address-prefix", default="127.0.50")
    parser.add_argument("--pools-prefix", default="127.0.51", help="address prefix of the blue-green fleet")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep each run's state dir (logs)")
    parser.add_argument("--records", type=Path, default=None, help="write every request here (JSON lines)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    low, _, high = args.slow_ms.partition("-")
    if not (low.isdigit() and high.isdigit()):
        parser.error("--slow-ms must look like 2000-5000")
    if args.hosts < 2 or args.runs < 1 or args.rate <= 0:
        parser.error("--hosts must be at least 2, --runs at least 1, --rate more than 0")
    return Options(
        hosts=args.hosts, rate=args.rate, runs=args.runs, kinds=kinds, before=args.before,
        after=args.after, slow_share=args.slow_share, slow_ms=(int(low), int(high)),
        address_prefix=args.address_prefix, pools_prefix=args.pools_prefix, state_dir=args.state_dir,
        keep=args.keep, json=args.json, records=args.records, seed=args.seed,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, clock: Clock = CLOCK) -> list[RunResult]:
    options = parse_args(argv)
    # fleets are stopped in `finally`; SIGINT too, even where it was ignored (a job started with &)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    base = options.state_dir.resolve() if options.state_dir else Path(tempfile.mkdtemp(prefix="hw-zd-"))
    base.mkdir(parents=True, exist_ok=True)
    started = datetime.fromtimestamp(clock.now(), UTC).isoformat(timespec="seconds")
    if not options.json:
        print(f"zero-downtime bench: {options.hosts} hosts, {options.rate:g} req/s "
              f"({options.slow_share:.0%} to /slow {options.slow_ms[0]}-{options.slow_ms[1]} ms), "
              f"{options.runs} run(s) of {', '.join(options.kinds)}; {platform.node()}, {started}")
    results: list[RunResult] = []
    try:
        for run in range(1, options.runs + 1):
            for kind in options.kinds:
                result = run_one(kind, run, base, options)
                results.append(result)
                if options.json:
                    print(json.dumps(result.to_json()), flush=True)
                else:
                    print_run(result)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not options.state_dir and not any(base.iterdir()):
            base.rmdir()
    table = medians(results)
    if options.json:
        print(json.dumps({"kind": "medians", "started": started, "hosts": options.hosts,
                          "rate": options.rate, "medians": table}), flush=True)
    else:
        print_medians(table)
    return results


if __name__ == "__main__":
    try:
        outcome = main()
    except KeyboardInterrupt:
        print("interrupted; every fleet started was stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(0 if all(r.t1_met and not r.problems for r in outcome) else 1)
