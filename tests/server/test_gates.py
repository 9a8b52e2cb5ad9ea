"""The gate runner with the in-memory balancer and simulated time, and real commands."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from headway.analysis import Verdict
from headway.clock import ManualClock, SystemClock
from headway.domain.models import HostView
from headway.domain.spec import ServiceSpec
from headway.domain.verification import GateSpec
from headway.metrics import OUTPUT_LIMIT, expand_argv, hosts_regex, render_query
from headway.server.gates import GateResult, GateRunner
from headway.testing.fake_traffic import FakeTrafficBackend
from headway.traffic.base import TrafficBackend

SPEC = ServiceSpec.model_validate({
    "name": "web",
    "port": 8080,
    "run": {"start": ["python3", "app.py"]},
    "health": {"http": {"path": "/healthz"}},
})
CANARY = [HostView(name="c1", service="web", address="127.0.22.11")]
BASELINE = [HostView(name="b1", service="web", address="127.0.22.12"),
             HostView(name="b2", service="web", address="127.0.22.13")]

ERRORS = {"name": "errors", "balancer": {"metric": "error_rate", "max_increase": 1.0}}
LATENCY = {"name": "latency", "balancer": {"metric": "latency", "max_increase": "10%"}}


def gates(*specs: Mapping[str, object]) -> list[GateSpec]:
    return [GateSpec.model_validate(s) for s in specs]


class Sim:
    """Simulated time: every sleep advances the clock and lets ``tick`` add traffic."""

    def __init__(
        self, backend: FakeTrafficBackend, tick: Callable[[FakeTrafficBackend, float], None]
    ) -> None:
        self.clock = ManualClock()
        self.backend = backend
        self.tick = tick

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.tick(self.backend, seconds)
        await asyncio.sleep(0)

    def runner(self, backend_for: Callable[[ServiceSpec], TrafficBackend | None] | None = None) -> GateRunner:
        return GateRunner(self.clock, random.Random(1), backend_for or (lambda spec: self.backend),
                          poll=1.0, sleep=self.sleep)


async def fleet() -> FakeTrafficBackend:
    backend = FakeTrafficBackend()
    for host in (*CANARY, *BASELINE):
        await backend.register(host.name, host.address, 8080, admitted=True)
    return backend


def traffic(canary_error_every: int = 0, canary_ms: float = 20.0, rate: int = 20) -> Callable[
        [FakeTrafficBackend, float], None]:
    count = {"n": 0}
    jitter = random.Random(5)

    def tick(backend: FakeTrafficBackend, seconds: float) -> None:
        for _ in range(round(rate * seconds)):
            count["n"] += 1
            bad = canary_error_every and count["n"] % canary_error_every == 0
            backend.record("c1", 500 if bad else 200, canary_ms + jitter.uniform(-2, 2))
            backend.record("b1", 200, 20.0 + jitter.uniform(-2, 2))
            backend.record("b2", 200, 20.0 + jitter.uniform(-2, 2))

    return tick


def run(sim: Sim, specs: list[GateSpec], canary: list[HostView] = CANARY,
        baseline: list[HostView] = BASELINE, duration: float = 60.0,
        backend_for: Callable[[ServiceSpec], TrafficBackend | None] | None = None) -> list[GateResult]:
    return asyncio.run(sim.runner(backend_for).run(SPEC, specs, canary, baseline, duration))


def test_a_canary_with_many_errors_fails_and_an_equal_one_passes() -> None:
    backend = asyncio.run(fleet())
    errors, latency = run(Sim(backend, traffic(canary_error_every=5)), gates(ERRORS, LATENCY))
    assert (errors.gate, errors.kind, errors.verdict) == ("errors", "balancer", Verdict.FAIL)
    assert errors.data["canary_requests"] == 1200 and errors.data["canary_errors"] == 240
    assert errors.data["baseline_requests"] == 2400 and errors.data["baseline_errors"] == 0
    assert errors.data["canary"] == pytest.approx(20.0) and errors.data["p_value"] < 0.01
    assert len(errors.data["series"]) == 60 and errors.data["series"][0][1] == pytest.approx(20.0)
    assert latency.verdict is Verdict.PASS

    backend = asyncio.run(fleet())
    assert [r.verdict for r in run(Sim(backend, traffic()), gates(ERRORS, LATENCY))] == [Verdict.PASS] * 2


def test_a_slow_canary_fails_the_latency_gate() -> None:
    backend = asyncio.run(fleet())
    _, latency = run(Sim(backend, traffic(canary_ms=40.0)), gates(ERRORS, LATENCY))
    assert latency.verdict is Verdict.FAIL
    assert "latency (balancer latency)" in latency.explanation and "Mann-Whitney" in latency.explanation


def test_too_little_traffic_is_inconclusive_never_a_pass() -> None:
    backend = asyncio.run(fleet())
    results = run(Sim(backend, traffic(rate=1)), gates(ERRORS, LATENCY), duration=20)
    assert [r.verdict for r in results] == [Verdict.INCONCLUSIVE] * 2
    assert all("not enough requests" in r.explanation for r in results)


def test_a_balancer_that_does_not_answer_is_inconclusive_with_the_reason() -> None:
    backend = asyncio.run(fleet())
    backend.fail_next(1000)
    (errors,) = run(Sim(backend, traffic()), gates(ERRORS), duration=10)
    assert errors.verdict is Verdict.INCONCLUSIVE
    assert "did not answer enough polls" in errors.explanation and "fake" in errors.explanation


def test_failed_polls_lose_no_requests_and_are_noted() -> None:
    backend = asyncio.run(fleet())
    sim = Sim(backend, traffic())
    backend.fail_next(3)  # the first poll answers late: the window starts at the fourth
    (errors,) = run(sim, gates(ERRORS), duration=60)
    assert errors.verdict is Verdict.PASS
    assert errors.data["canary_requests"] == 20 * 57
    assert "3 of 61 polls failed" in errors.explanation


def test_counters_that_reset_count_from_zero() -> None:
    backend = asyncio.run(fleet())

    more = traffic()

    def tick(b: FakeTrafficBackend, seconds: float) -> None:
        if sim.clock.monotonic() - start == 30:  # HAProxy restarted: counters back to zero
            b.servers["c1"].total = b.servers["c1"].responses_2xx = 0
        more(b, seconds)

    sim = Sim(backend, tick)
    start = sim.clock.monotonic()
    (errors,) = run(sim, gates(ERRORS), duration=60)
    assert errors.data["canary_requests"] == 20 * 60  # none lost, nothing negative
    assert errors.verdict is Verdict.PASS


def test_no_baseline_makes_comparative_gates_inconclusive_but_commands_still_run(tmp_path: Path) -> None:
    backend = asyncio.run(fleet())
    prom = {"name": "prom", "prometheus": {"url": "http://127.0.0.1:1", "query": "up", "max_increase": 0}}
    cmd = {"name": "smoke", "command": {"argv": [sys.executable, "-c", "pass"]}}
    results = run(Sim(backend, traffic()), gates(ERRORS, prom, cmd, {"name": "ok", "approval": {}}),
                  baseline=[])
    assert [(r.gate, r.verdict) for r in results] == [
        ("errors", Verdict.INCONCLUSIVE), ("prom", Verdict.INCONCLUSIVE), ("smoke", Verdict.PASS)]
    assert all("no baseline" in r.explanation for r in results[:2])


def test_no_canary_no_balancer_and_unexpected_errors_are_inconclusive() -> None:
    backend = asyncio.run(fleet())
    sim = Sim(backend, traffic())
    (r,) = run(sim, gates(ERRORS), canary=[])
    assert r.verdict is Verdict.INCONCLUSIVE and "no canary" in r.explanation
    (r,) = run(sim, gates(ERRORS), backend_for=lambda spec: None)
    assert r.verdict is Verdict.INCONCLUSIVE and "no load balancer" in r.explanation

    def broken(spec: ServiceSpec) -> TrafficBackend | None:
        raise RuntimeError("socket path unset")

    (r,) = run(sim, gates(ERRORS), backend_for=broken)
    assert r.verdict is Verdict.INCONCLUSIVE and "socket path unset" in r.explanation


def test_approval_gates_are_not_run_here() -> None:
    backend = asyncio.run(fleet())
    assert run(Sim(backend, traffic()), gates({"name": "ok", "approval": {}})) == []


def test_placeholders_become_argv_items_and_prometheus_regexes() -> None:
    assert expand_argv(["t", "{canary_urls}", "--at={canary_addresses}"],
                       ["http://1.2.3.4:80", "http://1.2.3.5:80"], ["1.2.3.4", "1.2.3.5"]) == [
        "t", "http://1.2.3.4:80", "http://1.2.3.5:80", "--at=1.2.3.4 1.2.3.5"]
    assert hosts_regex(["127.0.0.2:80", "127.0.0.1:80"]) == r"127\.0\.0\.1:80|127\.0\.0\.2:80"
    assert render_query('up{instance=~"{hosts}"}', ["1.2.3.4:9"]) == 'up{instance=~"1\\\\.2\\\\.3\\\\.4:9"}'
    assert render_query("up{instance=~`{hosts}`}", ["1.2.3.4:9"]) == "up{instance=~`1\\.2\\.3\\.4:9`}"
    assert render_query('up{a="x\\"y", instance=~"{hosts}"}', ["1:9"]) == 'up{a="x\\"y", instance=~"1:9"}'


# --- commands (real processes) ------------------------------------------------------------------


def command(argv: list[str], timeout: str = "10s") -> GateSpec:
    return GateSpec.model_validate({"name": "smoke", "command": {"argv": argv, "timeout": timeout}})


def run_command(spec: GateSpec) -> GateResult:
    runner = GateRunner(SystemClock(), random.Random(1), lambda spec: None)
    (result,) = asyncio.run(runner.run(SPEC, [spec], CANARY + BASELINE[:1], [], 0.0))
    return result


def test_a_command_that_exits_0_passes_and_gets_each_url_as_an_argument() -> None:
    script = "import sys; print(' | '.join(sys.argv[1:]))"
    result = run_command(command([sys.executable, "-c", script, "{canary_urls}"]))
    assert result.verdict is Verdict.PASS
    assert result.data["output"].strip() == "http://127.0.22.11:8080 | http://127.0.22.12:8080"
    assert "passed (exit 0)" in result.explanation


def test_a_failing_command_fails_and_its_output_is_kept_bounded() -> None:
    script = "import sys; print('x' * 10000); print('3 checks failed'); sys.exit(3)"
    result = run_command(command([sys.executable, "-c", script]))
    assert result.verdict is Verdict.FAIL and result.data["exit_code"] == 3
    assert "failed with exit code 3: 3 checks failed" in result.explanation
    assert len(result.data["output"]) <= OUTPUT_LIMIT and result.data["output"].endswith("3 checks failed\n")


def test_a_command_that_hangs_is_killed_with_its_children_and_fails(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    started = time.monotonic()
    result = run_command(command([sys.executable, "-c", script], timeout="1s"))
    assert time.monotonic() - started < 5
    assert result.verdict is Verdict.FAIL and result.data["timed_out"]
    assert "did not finish within 1s" in result.explanation and "started" in result.data["output"]
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the command's child outlived the timeout"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status not in ("Z", "X")


def test_a_command_that_cannot_start_is_inconclusive() -> None:
    result = run_command(command(["/nonexistent/smoke-test"]))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "cannot run '/nonexistent/smoke-test'" in result.explanation
