"""Verification on live traffic, end to end: real server, agents, sample apps, HAProxy and
Prometheus, under constant load (see conftest).

Bad releases are stopped at the first canary step and rolled back by Headway itself: no host
outside the first batch is ever told the bad release, and every host ends healthy on the
previous release. A good release passes every gate. A Prometheus that is down pauses the
rollout with a reason naming it: never a pass, never a rollback on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from headway.domain.models import Event, RolloutStatus

from .conftest import HOSTS, SERVICE, Stack, wait_for

pytestmark = pytest.mark.integration

GATES = ("errors", "latency", "app-errors", "smoke")


@dataclass(frozen=True)
class Bad:
    params: dict[str, str]
    failing: tuple[str, ...]  # gates that must fail (None: no verification runs)
    answers: bool  # does the bad release answer requests before it is rolled back


# In this order, on purpose: HAProxy's per-server response time (what the balancer latency
# gate reads) is a moving average over the server's last ~1,000 answers that survives a
# rollback. After the slow release, host-01 keeps its slow average for a while and a good
# release canaried there fails its latency gate: so the good release and the Prometheus case
# run first (file order), and the slow release last.
CASES = {
    # 30% of requests answer 500
    "higher-error-rate": Bad({"ERROR_RATE": "0.3"}, ("errors", "app-errors", "smoke"), True),
    # exits at start: the host never becomes healthy, so it fails before any verification
    "crash-at-start": Bad({"CRASH_AT_START": "1"}, (), False),
    # /healthz stays 200 (the agent and HAProxy see a healthy host) but every request fails
    "health-passes-requests-fail": Bad({"ERROR_RATE": "1.0"}, ("errors", "app-errors", "smoke"), True),
    # every request 300 ms slower
    "added-latency": Bad({"LATENCY_MS": "300"}, ("latency",), True),
}


def kinds(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def gate_verdicts(events: list[Event]) -> dict[str, set[str]]:
    """Gate name -> the verdicts it got (from ``gate.<verdict>`` events, "name: ...")."""
    out: dict[str, set[str]] = {}
    for e in events:
        if e.kind.startswith("gate."):
            out.setdefault(e.message.split(":", 1)[0], set()).add(e.kind.removeprefix("gate."))
    return out


def test_a_good_release_passes_every_gate_and_succeeds(stack: Stack) -> None:
    previous = stack.current()
    stack.wait_healthy_on(previous)
    release = stack.release({"GREETING": "hello again"}, note="good")
    since = stack.generator.elapsed()
    out = stack.api.start_rollout(SERVICE, to=release.version, note="good")
    ended = stack.wait_rollout(out.rollout.id, lambda r: r.status.terminal)
    events = stack.events(out.rollout.id)
    log = "\n".join(f"{e.kind} {e.host} {e.message}" for e in events)

    assert ended.status is RolloutStatus.SUCCEEDED, log
    # Every gate passed, none failed (a look with too few samples on a busy machine may come
    # back inconclusive first: the step then observes again, it never passes on it).
    assert len(kinds(events, "verify.pass")) == 1 and not kinds(events, "verify.fail"), log
    last_look = [e for e in events if e.kind.startswith("gate.")][-len(GATES):]
    assert {e.message.split(":", 1)[0] for e in last_look} == set(GATES), log
    assert {e.kind for e in last_look} == {"gate.pass"}, log
    assert stack.api.get_service(SERVICE).current_release == release.number
    stack.wait_healthy_on(release.number)
    assert set(stack.answered_by_each_host().values()) == {release.version}
    assert all(r.ok for r in stack.records(since)), "a request failed during a good rollout"


def test_a_prometheus_that_is_down_pauses_the_rollout_with_the_reason(stack: Stack) -> None:
    previous = stack.current()
    stack.wait_healthy_on(previous)
    release = stack.release({"GREETING": "no metrics"}, note="prometheus down")
    stack.prometheus.stop()
    try:
        out = stack.api.start_rollout(SERVICE, to=release.version, note="prometheus down")
        paused = stack.wait_rollout(out.rollout.id, lambda r: r.status is not RolloutStatus.RUNNING)
        assert paused.status is RolloutStatus.PAUSED, paused
        assert "a metrics source failed" in paused.reason, paused.reason
        assert f"app-errors (prometheus): cannot reach Prometheus at {stack.prometheus.url}" in paused.reason

        # It stays paused: no pass, no rollback, no other host touched.
        time.sleep(3)
        again = stack.api.get_rollout(out.rollout.id)
        assert again.rollout.status is RolloutStatus.PAUSED and again.rollout.reason == paused.reason
        events = stack.events(out.rollout.id)
        log = "\n".join(f"{e.kind} {e.host} {e.message}" for e in events)
        never = ("verify.pass", "rollout.rolling_back", "rollout.promoted")
        assert not [e for e in events if e.kind in never], log
        assert len(kinds(events, "rollout.paused")) == 1, log
        assert gate_verdicts(events)["app-errors"] == {"inconclusive"}, log
        assert {e.host for e in kinds(events, "host.updating")} == stack.first_batch, log
        hosts = {h.name: h.observed_release for h in stack.api.list_hosts(service=SERVICE)}
        on_new = {name for name, number in hosts.items() if number == release.number}
        assert on_new == stack.first_batch and len(hosts) == HOSTS, hosts
        assert all(n == previous for name, n in hosts.items() if name not in on_new), hosts
        assert stack.api.get_service(SERVICE).current_release == previous

        # An operator decides: abort puts the canary back.
        stack.api.abort(out.rollout.id, reason="no metrics to judge by")
        ended = stack.wait_rollout(out.rollout.id, lambda r: r.status.terminal)
        assert ended.status is RolloutStatus.ABORTED, ended
        stack.wait_healthy_on(previous)
    finally:
        stack.prometheus.start()
    wait_for(lambda: stack.api.get_service(SERVICE).current_release == previous, 5, "current release")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_bad_release_is_stopped_at_the_first_canary_step_and_rolled_back(
    stack: Stack, case: str
) -> None:
    bad = CASES[case]
    previous = stack.current()
    stack.wait_healthy_on(previous)
    release = stack.release(bad.params, note=f"bad: {case}")
    since = stack.generator.elapsed()
    out = stack.api.start_rollout(SERVICE, to=release.version, note=case)
    ended = stack.wait_rollout(out.rollout.id, lambda r: r.status.terminal)
    until = stack.generator.elapsed()
    events = stack.events(out.rollout.id)
    log = "\n".join(f"{e.kind} {e.host} {e.message}" for e in events)

    assert ended.status is RolloutStatus.ROLLED_BACK, log
    # Only the first batch was ever told the bad release; it was put back.
    assert {e.host for e in kinds(events, "host.updating")} == stack.first_batch, log
    assert {e.host for e in kinds(events, "host.reverted")} == stack.first_batch, log
    assert stack.api.get_service(SERVICE).current_release == previous
    stack.wait_healthy_on(previous)
    assert set(stack.answered_by_each_host().values()) == {f"v{previous}"}

    verdicts = gate_verdicts(events)
    if bad.failing:
        assert ended.reason.startswith("verification failed at step 2:"), ended.reason
        assert len(kinds(events, "verify.fail")) == 1 and not kinds(events, "verify.pass"), log
        for gate in bad.failing:
            assert verdicts.get(gate) == {"fail"}, (gate, log)
        assert set(verdicts) == set(GATES), log  # every gate ran and said something
    else:
        assert "failure budget" in ended.reason, ended.reason
        assert {e.host for e in kinds(events, "host.failed")} == stack.first_batch, log
        assert not verdicts, log  # it never got as far as a verification

    # Through HAProxy: the bad release answered only while it was the canary; afterwards only
    # the previous release answers; nothing failed but the bad release's own answers.
    records = stack.records(since)
    served = [r for r in records if r.version == release.version]
    assert bool(served) is bad.answers, len(served)
    assert not [r for r in records if r.version == release.version and r.scheduled > until + 1.0]
    assert not [r for r in records if not r.ok and r.version != release.version], [
        (r.status, r.error, r.version) for r in records if not r.ok and r.version != release.version
    ][:10]
