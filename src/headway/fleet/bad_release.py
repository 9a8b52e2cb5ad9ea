"""``headway demo --bad-release``: a bad release caught on live traffic and rolled back by itself.

    fleet up on v1, canary 10% -> 50% -> 100%, each step verified on live traffic by two
    gates: the balancer's error rate (canary against the hosts still on the old release)
    and a smoke test (``smoke-test.py`` in the state dir, GET / on each canary host)
    -> open-loop load through HAProxy, as in the canary demo (5% of it to /slow)
    -> v2, a good release: every step passes its gates, the rollout succeeds
    -> v3, the same app answering 500 to a share of requests (``ERROR_RATE=0.3``): the first
       canary step fails its verification and Headway rolls the canary back to v2
    -> a few seconds on v2, then stop sending and wait for the answers in flight
    -> the figures, from the rollout's events and the load generator's records:
       time to detect   the bad host back in load balancing (``host.admitted``) -> the
                        failing verdict (``verify.fail``)
       time to roll back  the verdict -> every host back on v2 (``rollout.rolled_back``),
                        split into the drain (waiting for the requests in flight on the bad
                        host: ``host.reverting`` is sent once it is drained) and the rest
       bad requests     answers carrying the bad release's ``X-App-Version``, and how many
                        of them failed

It passes when v2 succeeded, v3 was stopped by its first verification and rolled back, no
host outside the first canary batch was ever told v3, every host ends healthy on v2, only v2
answers afterwards, and every failed request is one of v3's answers (no connection errors).

A verification observes about `CANARY_REQUESTS` requests on the canary: its duration follows
from the rate and the number of hosts (`verify_seconds`), so a higher ``--rate`` detects sooner.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from headway.client.api import ApiClient
from headway.client.watch import RolloutSnapshot, watch_rollout
from headway.clock import Clock, SystemClock
from headway.domain.models import Event, Health, HostView, RolloutStatus, RolloutSummary
from headway.domain.spec import CanaryStrategy
from headway.domain.verification import VerificationSpec
from headway.engine.plan import Batch
from headway.engine.planners import plan_canary
from headway.errors import HeadwayError
from headway.fleet.demo import (
    AFTER_SECONDS,
    BEFORE_SECONDS,
    DEFAULT_DEMO_DIR,
    DEFAULT_DEMO_HOSTS,
    DEFAULT_RATE,
    FRAME_INTERVAL,
    DemoFrame,
    LoadRun,
    Phase,
    fresh_fleet,
)
from headway.fleet.loadgen import LoadSummary, RequestRecord, summarize, timeline
from headway.fleet.local import (
    DEFAULT_ADDRESS_PREFIX,
    DEFAULT_PORT,
    DEFAULT_TRAFFIC_PORT,
    Fleet,
    Log,
    fleet_service_spec,
    publish_sample_release,
)

BAD_PARAMS = {"ERROR_RATE": "0.3"}  # the sample app answers 500 to 30% of / and /slow
CANARY_REQUESTS = 100  # a verification lasts long enough for the canary to serve about this many
MIN_VERIFY_SECONDS = 8.0
MAX_VERIFY_SECONDS = 30.0
ERROR_TOLERANCE_PP = 10.0  # the error-rate gate fails above baseline + 10 percentage points
SMOKE_REQUESTS = 20
SMOKE_FILE = "smoke-test.py"
STRATEGY_NOTE = "canary 10%, 50%, 100%; each step verified on live traffic"

SMOKE_TEST = f'''\
"""Smoke test of the bad-release demo: GET / {SMOKE_REQUESTS} times on each canary URL given;
exit 1 on the first answer that is not 200."""
import sys
import urllib.error
import urllib.request

for url in sys.argv[1:]:
    for i in range({SMOKE_REQUESTS}):
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as answer:
                code = answer.status
        except urllib.error.HTTPError as error:
            code = error.code
        except OSError as error:
            print(f"{{url}}/: {{error}}")
            sys.exit(1)
        if code != 200:
            print(f"{{url}}/ answered {{code}} (request {{i + 1}} of {SMOKE_REQUESTS})")
            sys.exit(1)
    print(f"{{url}}/: {SMOKE_REQUESTS} answers, all 200")
'''


def bad_release_strategy() -> CanaryStrategy:
    """The canary demo's steps without its pauses: each verification holds its step anyway."""
    return CanaryStrategy.model_validate(
        {
            "type": "canary",
            "steps": [{"hosts": "10%"}, {"hosts": "50%"}, {"hosts": "100%"}],
            "min_healthy_time": "2s",
            "progress_deadline": "60s",
        }
    )


def verify_seconds(rate: float, hosts: int) -> float:
    """How long one verification observes: long enough for one host's share of ``rate`` to
    bring `CANARY_REQUESTS` requests, within 8..30 s.

    >>> verify_seconds(50, 10), verify_seconds(100, 10), verify_seconds(60, 3)
    (20.0, 10.0, 8.0)
    """
    return min(MAX_VERIFY_SECONDS, max(MIN_VERIFY_SECONDS, CANARY_REQUESTS * hosts / rate))


def demo_verification(rate: float, hosts: int, smoke_test: Path) -> VerificationSpec:
    return VerificationSpec.model_validate(
        {
            "duration": verify_seconds(rate, hosts),
            "on_fail": "rollback",
            "max_inconclusive": 1,
            "gates": [
                {
                    "name": "errors",
                    "balancer": {
                        "metric": "error_rate",
                        "max_increase": ERROR_TOLERANCE_PP,
                        "min_requests": CANARY_REQUESTS // 2,
                    },
                },
                {
                    "name": "smoke",
                    "command": {
                        "argv": [sys.executable, str(smoke_test), "{canary_urls}"],
                        "timeout": "30s",
                    },
                },
            ],
        }
    )


publish_release = publish_sample_release  # the name other code imports from here


def apply_verification(fleet: Fleet, strategy: CanaryStrategy, verification: VerificationSpec) -> None:
    """The fleet's service with ``strategy`` and ``verification``; also written to its
    ``service.yaml``."""
    data = fleet_service_spec(Path(fleet.haproxy_socket), strategy).model_dump(mode="json")
    data["verification"] = verification.model_dump(mode="json", exclude_none=True)
    with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
        client.apply_service(data)
    fleet.spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# --- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """Seconds between the bad rollout's events (None: the event never came)."""

    detect: float | None  # bad host in load balancing -> failing verdict
    rollback: float | None  # failing verdict -> every host back on the previous release
    drain: float | None  # failing verdict -> the last bad host drained (told to revert)
    verdict: str  # the failing verdict's summary

    @property
    def after_drain(self) -> float | None:
        if self.rollback is None or self.drain is None:
            return None
        return self.rollback - self.drain


def timings(events: Sequence[Event]) -> Timings:
    """From the events of one rollout that was rolled back after a failed verification."""
    verdict = next((e for e in events if e.kind == "verify.fail"), None)
    if verdict is None:
        return Timings(None, None, None, "")
    admitted = [e.ts for e in events if e.kind == "host.admitted" and e.ts <= verdict.ts]
    reverting = [e.ts for e in events if e.kind == "host.reverting" and e.ts >= verdict.ts]
    ended = next((e.ts for e in events if e.kind == "rollout.rolled_back"), None)
    return Timings(
        detect=verdict.ts - min(admitted) if admitted else None,
        rollback=ended - verdict.ts if ended is not None else None,
        drain=max(reverting) - verdict.ts if reverting else None,
        verdict=verdict.message,
    )


@dataclass(frozen=True)
class BadReleaseSummary:
    ok: bool
    problems: list[str]
    good: RolloutSummary | None  # v2's rollout
    bad: RolloutSummary | None  # v3's rollout
    bad_version: str
    bad_params: dict[str, str]
    timings: Timings
    bad_requests: int  # answers with the bad release's X-App-Version
    bad_requests_failed: int
    first_batch: list[str]  # the hosts of the first canary step
    told_bad: list[str]  # hosts ever told the bad release (host.updating)
    hosts_total: int
    hosts_healthy_on_previous: int
    gates: list[Event]  # the bad rollout's gate.* events
    verification_seconds: float
    server: str
    token: str
    traffic: str
    state_dir: Path
    load: dict[str, LoadSummary]  # before, good, bad, after, total
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> LoadSummary:
        return self.load["total"]

    def to_json(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        def rollout(summary: RolloutSummary | None) -> dict[str, Any] | None:
            if summary is None:
                return None
            return {
                "id": summary.id,
                "status": summary.status.value,
                "reason": summary.reason,
                "from_release": summary.from_release,
                "to_release": summary.to_release,
                "duration_seconds": round(summary.updated_at - summary.created_at, 3),
            }

        t = self.timings
        return {
            "ok": self.ok,
            "problems": self.problems,
            "status": self.bad.status.value if self.bad else None,
            "reason": self.bad.reason if self.bad else "",
            "good_rollout": rollout(self.good),
            "bad_rollout": rollout(self.bad),
            "bad_version": self.bad_version,
            "bad_params": self.bad_params,
            "verdict": t.verdict,
            "gates": [{"kind": e.kind, "message": e.message} for e in self.gates],
            "first_batch": self.first_batch,
            "hosts_told_bad_release": self.told_bad,
            "hosts_total": self.hosts_total,
            "hosts_healthy_on_previous": self.hosts_healthy_on_previous,
            "verification_seconds": self.verification_seconds,
            "server": self.server,
            "token": self.token,
            "traffic": self.traffic,
            "state_dir": str(self.state_dir),
            "load": {name: summary.to_json() for name, summary in self.load.items()},
            "timeline": self.timeline,
            "requests": self.total.sent,
            "non_2xx": self.total.non_2xx,
            "connection_errors": self.total.connection_errors,
            # the figures of the bad release, last
            "time_to_detect_s": rounded(t.detect),
            "time_to_rollback_s": rounded(t.rollback),
            "rollback_drain_s": rounded(t.drain),
            "rollback_after_drain_s": rounded(t.after_drain),
            "bad_requests": self.bad_requests,
            "bad_requests_failed": self.bad_requests_failed,
        }


# --- the run ----------------------------------------------------------------------------------


class _Paused(Exception):
    def __init__(self, snapshot: RolloutSnapshot) -> None:
        super().__init__("paused")
        self.snapshot = snapshot


def _follow(
    client: ApiClient,
    rollout_id: str,
    on_update: Callable[[RolloutSnapshot], None],
    *,
    clock: Clock,
    sleep: Callable[[float], None],
    timeout: float,
) -> RolloutSummary:
    """Watch the rollout until it ends or pauses (a pause waits for a person: the demo stops
    there); its summary."""

    def update(snapshot: RolloutSnapshot) -> None:
        on_update(snapshot)
        if snapshot.rollout.rollout.status is RolloutStatus.PAUSED:
            raise _Paused(snapshot)

    try:
        final = watch_rollout(
            client, rollout_id, on_update=update, clock=clock, timeout=timeout,
            interval=FRAME_INTERVAL, sleep=sleep,
        )
    except _Paused as paused:
        return paused.snapshot.rollout.rollout
    return final.rollout.rollout


def catch_bad_release(
    fleet: Fleet,
    strategy: CanaryStrategy,
    *,
    rate: float = DEFAULT_RATE,
    verification_seconds: float = 0.0,
    on_frame: Callable[[DemoFrame], None] = lambda _: None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    before: float = BEFORE_SECONDS,
    after: float = AFTER_SECONDS,
    timeout: float = 600.0,
    log: Log = lambda _: None,
) -> BadReleaseSummary:
    """Under load through HAProxy: roll ``fleet`` (on v1, with verification) out to a good v2,
    then to a bad v3; the figures of how v3 was caught and rolled back."""
    clock = clock or SystemClock()
    kind = strategy.type.value
    problems: list[str] = []
    good: RolloutSummary | None = None
    bad: RolloutSummary | None = None
    events: list[Event] = []
    artifacts = fleet.state_dir / "artifacts"
    marks = [0.0, 0.0, 0.0]  # load time when v2 started, v3 started, v3 ended
    with LoadRun(fleet, kind, rate=rate, on_frame=on_frame, clock=clock, sleep=sleep, log=log) as load:
        load.hold(Phase.BEFORE, before)
        with ApiClient(fleet.server, fleet.token, timeout=30.0) as client:
            release = publish_sample_release(
                client, fleet.service, "v2", artifacts, note="headway demo: good"
            )
            log(f"created release {release.version} (good); starting the {kind} rollout")
            marks[0] = load.elapsed()
            out = client.start_rollout(fleet.service, to=release.version, note="headway demo: good release")
            good = _follow(
                client, out.rollout.id, lambda s: load.frame(Phase.DURING, s),
                clock=clock, sleep=sleep, timeout=timeout,
            )
            marks[1] = load.elapsed()
            if good.status is not RolloutStatus.SUCCEEDED:
                problems.append(f"the good release's rollout ended {good.status.value}: {good.reason}")
            else:
                params = ", ".join(f"{k}={v}" for k, v in BAD_PARAMS.items())
                bad_release = publish_sample_release(
                    client, fleet.service, "v3", artifacts, params=BAD_PARAMS,
                    note=f"headway demo: bad release ({params})",
                )
                log(f"created release {bad_release.version} ({params}); starting the {kind} rollout")
                out = client.start_rollout(
                    fleet.service, to=bad_release.version, note="headway demo: bad release"
                )
                bad = _follow(
                    client, out.rollout.id, lambda s: load.frame(Phase.BAD_RELEASE, s),
                    clock=clock, sleep=sleep, timeout=timeout,
                )
                if bad.status is RolloutStatus.PAUSED:
                    problems.append(f"the bad release's rollout paused: {bad.reason}")
                    log("the bad release's rollout paused; aborting it (rolls back)")
                    client.abort(bad.id, reason="headway demo: the bad release was not caught")
                    _follow(
                        client, bad.id, lambda s: load.frame(Phase.BAD_RELEASE, s),
                        clock=clock, sleep=sleep, timeout=timeout,
                    )
                events = list(client.iter_events(rollout=bad.id))
            marks[2] = load.elapsed()
            load.hold(Phase.AFTER, after)
            hosts = client.list_hosts(service=fleet.service)
    return _summarize(
        fleet, strategy, good, bad, events, hosts, load.records, marks, problems, verification_seconds
    )


def _summarize(
    fleet: Fleet,
    strategy: CanaryStrategy,
    good: RolloutSummary | None,
    bad: RolloutSummary | None,
    events: list[Event],
    hosts: list[HostView],
    records: list[RequestRecord],
    marks: list[float],
    problems: list[str],
    verification_seconds: float,
) -> BadReleaseSummary:
    good_version, bad_version = "v2", "v3"
    # where every host must end: v2 once it succeeded (v3 rolled back to it), else v1
    succeeded = good is not None and good.status is RolloutStatus.SUCCEEDED
    previous = good.to_release if good is not None and succeeded else fleet.release
    first = plan_canary(strategy, sorted(h.name for h in fleet.hosts))[0]
    first_batch = sorted(first.hosts) if isinstance(first, Batch) else []
    told = sorted({e.host for e in events if e.kind == "host.updating"})
    found = timings(events)
    if bad is not None:
        if bad.status is not RolloutStatus.ROLLED_BACK:
            problems.append(
                f"the bad release's rollout ended {bad.status.value}, not rolled back: {bad.reason}"
            )
        if not found.verdict:
            problems.append("no verification failed: the bad release was not caught by its gates")
        outside = sorted(set(told) - set(first_batch))
        if outside:
            problems.append(
                f"hosts outside the first canary step were told the bad release: {', '.join(outside)}"
            )
    by_name = {h.name: h for h in hosts}
    healthy = [
        h for h in fleet.hosts
        if (v := by_name.get(h.name)) is not None
        and v.connected and v.health is Health.HEALTHY and v.observed_release == previous
    ]
    if len(healthy) != len(fleet.hosts):
        lagging = sorted({h.name for h in fleet.hosts} - {h.name for h in healthy})
        problems.append(f"hosts not healthy on v{previous}: {', '.join(lagging)}")
    windows = {
        "before": summarize(records, until=marks[0]),
        "good": summarize(records, since=marks[0], until=marks[1]),
        "bad": summarize(records, since=marks[1], until=marks[2]),
        "after": summarize(records, since=marks[2]),
        "total": summarize(records),
    }
    served = [r for r in records if r.version == bad_version]
    failed_bad = [r for r in served if not r.ok]
    other_failures = [r for r in records if not r.ok and r.version != bad_version]
    if other_failures:
        kinds: dict[str, int] = {}
        for r in other_failures:
            key = str(r.error) if r.error else f"http {r.status} from {r.version or '?'}"
            kinds[key] = kinds.get(key, 0) + 1
        problems.append(
            f"{len(other_failures)} request(s) failed outside the bad release: "
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        )
    late = set(windows["after"].versions) - {good_version}
    if bad is not None and late:
        problems.append(f"after the rollback, {', '.join(sorted(late))} still answered")
    if bad is not None and not served:
        problems.append("the bad release answered no request: the load did not reach it")
    if windows["total"].sent == 0:
        problems.append("no request was sent")
    return BadReleaseSummary(
        ok=not problems and bad is not None,
        problems=problems,
        good=good,
        bad=bad,
        bad_version=bad_version,
        bad_params=dict(BAD_PARAMS),
        timings=found,
        bad_requests=len(served),
        bad_requests_failed=len(failed_bad),
        first_batch=first_batch,
        told_bad=told,
        hosts_total=len(hosts),
        hosts_healthy_on_previous=len(healthy),
        gates=[e for e in events if e.kind.startswith("gate.")],
        verification_seconds=verification_seconds,
        server=fleet.server,
        token=fleet.token,
        traffic=fleet.traffic,
        state_dir=fleet.state_dir,
        load=windows,
        timeline=[b.to_json() for b in timeline(records)],
    )


def run_bad_release_demo(
    state_dir: Path = DEFAULT_DEMO_DIR,
    hosts: int = DEFAULT_DEMO_HOSTS,
    *,
    rate: float = DEFAULT_RATE,
    stay: bool = False,
    port: int = DEFAULT_PORT,
    traffic_port: int = DEFAULT_TRAFFIC_PORT,
    address_prefix: str = DEFAULT_ADDRESS_PREFIX,
    on_frame: Callable[[DemoFrame], None] = lambda _: None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = lambda _: None,
) -> BadReleaseSummary:
    """Fresh fleet on v1 with verification -> load -> good v2 -> bad v3 caught and rolled
    back -> summary; the fleet is stopped unless ``stay``."""
    if hosts < 2:
        raise HeadwayError(
            "--bad-release needs at least 2 hosts: the canary is judged against the hosts "
            "still on the previous release",
            hint="pass --hosts 2 or more (the default is 10)",
        )
    strategy = bad_release_strategy()
    with fresh_fleet(
        state_dir, hosts, strategy=strategy, stay=stay, port=port, traffic_port=traffic_port,
        address_prefix=address_prefix, clock=clock, sleep=sleep, log=log,
    ) as fleet:
        smoke = fleet.state_dir / SMOKE_FILE
        smoke.write_text(SMOKE_TEST, encoding="utf-8")
        verification = demo_verification(rate, hosts, smoke)
        apply_verification(fleet, strategy, verification)
        log(
            f"verification: each step observes {verification.duration:g}s of live traffic; gates: "
            f"error rate within +{ERROR_TOLERANCE_PP:g} pp of the baseline, smoke test ({smoke})"
        )
        return catch_bad_release(
            fleet, strategy, rate=rate, verification_seconds=verification.duration,
            on_frame=on_frame, clock=clock, sleep=sleep, log=log,
        )
