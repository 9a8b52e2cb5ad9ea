"""Metric sources and the gate runner against real parts: HAProxy, sample apps, Prometheus."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Mapping, Sequence

import pytest

from headway.analysis import Verdict
from headway.clock import SystemClock
from headway.domain.models import HostView
from headway.domain.spec import ServiceSpec
from headway.domain.verification import GateSpec
from headway.metrics import BalancerSampler, MetricsUnavailable, PrometheusSource, render_query
from headway.server.gates import GateResult, GateRunner
from headway.traffic.haproxy import HAProxyBackend

from .conftest import Fleet

pytestmark = pytest.mark.integration

# `or vector(0)`: an app that never failed has no 5xx series at all, and without it the ratio of
# a healthy baseline would be "no data" (inconclusive) instead of 0.
ERROR_RATIO = (
    '(sum(rate(requests_total{{code=~"5..",instance=~"{{hosts}}"}}[{w}])) or vector(0)) '
    '/ sum(rate(requests_total{{instance=~"{{hosts}}"}}[{w}]))'
)


def service(fleet: Fleet) -> ServiceSpec:
    return ServiceSpec.model_validate({
        "name": "web",
        "port": fleet.port,
        "run": {"start": ["python3", "app.py"]},
        "health": {"http": {"path": "/healthz"}},
        "traffic": {"balancer": "haproxy",
                    "haproxy": {"socket": str(fleet.haproxy.socket_path), "backend": fleet.haproxy.backend}},
    })


def hosts(fleet: Fleet, *names: str) -> list[HostView]:
    return [HostView(name=n, service="web", address=fleet.apps[n].address) for n in names]


def gates(*specs: Mapping[str, object]) -> list[GateSpec]:
    return [GateSpec.model_validate(s) for s in specs]


def run(fleet: Fleet, gate_specs: Sequence[GateSpec], canary: str, baseline: str,
        duration: float = 3.0) -> list[GateResult]:
    backend = fleet.backend()
    runner = GateRunner(SystemClock(), random.Random(1), lambda spec: backend, poll=0.25)
    spec = service(fleet)
    return asyncio.run(runner.run(spec, gate_specs, hosts(fleet, canary), hosts(fleet, baseline), duration))


BALANCER = gates(
    {"name": "errors", "balancer": {"metric": "error_rate", "max_increase": 5.0}},
    {"name": "latency", "balancer": {"metric": "latency", "max_increase": "50%"}},
)


def test_sampler_counts_requests_errors_and_latencies_per_arm(fleet: Fleet) -> None:
    async def main() -> None:
        sampler = BalancerSampler(fleet.backend(), SystemClock(), interval=0.25)
        window = await sampler.sample(["bad", "slow"], ["good1"], 2.0)
        assert window.polls >= 8 and window.failed_polls == 0 and window.missing == ()
        assert window.canary.requests > 50 and window.baseline.requests > 25
        share = window.canary.errors / window.canary.requests
        assert 0.03 < share < 0.25  # "bad" answers 20% errors, "slow" none
        assert window.baseline.errors == 0
        assert max(window.canary.latencies_ms) >= 40  # the slow app's 40 ms
        assert sum(p.canary_requests for p in window.series) == window.canary.requests

    asyncio.run(main())


def test_a_canary_with_20_percent_errors_fails_the_balancer_gate(fleet: Fleet) -> None:
    errors, latency = run(fleet, BALANCER, "bad", "good1")
    assert errors.verdict is Verdict.FAIL, errors.explanation
    assert "errors (balancer error rate)" in errors.explanation and "z-test" in errors.explanation
    assert errors.data["canary"] > 10 and errors.data["baseline"] == 0
    assert errors.data["p_value"] < 0.01 and errors.data["series"]
    assert latency.verdict is Verdict.PASS, latency.explanation


def test_an_equal_canary_passes_the_balancer_gates(fleet: Fleet) -> None:
    results = run(fleet, BALANCER, "good2", "good1")
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.PASS], [r.explanation for r in results]


def test_a_slow_canary_fails_the_latency_gate(fleet: Fleet) -> None:
    errors, latency = run(fleet, BALANCER, "slow", "good1")
    assert latency.verdict is Verdict.FAIL, latency.explanation
    assert latency.data["canary"] >= 40 and "Mann-Whitney" in latency.explanation
    assert errors.verdict is Verdict.PASS, errors.explanation


def prom_gate(url: str, timeout: str = "3s") -> GateSpec:
    return GateSpec.model_validate({
        "name": "app-errors",
        "prometheus": {"url": url, "query": ERROR_RATIO.format(w="5s"), "max_increase": 0.01,
                       "timeout": timeout},
    })


def test_prometheus_gate_fails_a_canary_with_20_percent_errors_and_passes_an_equal_one(
    fleet: Fleet,
) -> None:
    (bad,) = run(fleet, [prom_gate(fleet.prometheus_url)], "bad", "good1", duration=0.5)
    assert bad.verdict is Verdict.FAIL, bad.explanation
    assert 0.1 < bad.data["canary"] < 0.3 and bad.data["baseline"] == 0
    assert "127\\\\.0\\\\.22\\\\.3" in bad.data["queries"]["canary"]
    (good,) = run(fleet, [prom_gate(fleet.prometheus_url)], "good2", "good1", duration=0.5)
    assert good.verdict is Verdict.PASS, good.explanation


def test_prometheus_that_is_down_is_inconclusive_with_a_reason(fleet: Fleet) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    (result,) = run(fleet, [prom_gate(f"http://127.0.0.1:{port}")], "bad", "good1", duration=0.1)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}" in result.explanation


def test_prometheus_that_hangs_is_inconclusive_after_its_timeout(fleet: Fleet) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections (the kernel does) but never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        (result,) = run(fleet, [prom_gate(url, timeout="0.3s")], "bad", "good1", duration=0.1)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "did not answer within 0.3s" in result.explanation


def test_prometheus_answers_without_a_number_are_none_or_errors(fleet: Fleet) -> None:
    source = PrometheusSource(fleet.prometheus_url, timeout=3)

    async def main() -> None:
        assert await source.query("0/0") is None  # NaN
        assert await source.query('requests_total{code="999"}') is None  # no series
        assert await source.query("scalar(vector(2.5))") == 2.5
        with pytest.raises(MetricsUnavailable, match="series, not one number"):
            await source.query("requests_total")
        with pytest.raises(MetricsUnavailable, match="refused the query"):
            await source.query("sum(")
        instances = [fleet.apps["bad"].instance, fleet.apps["good1"].instance]
        value = await source.query(render_query('count(up{instance=~"{hosts}"})', instances))
        assert value == 2.0
        raw = await source.query(render_query("count(up{instance=~`{hosts}`})", instances[:1]))
        assert raw == 1.0

    asyncio.run(main())


def test_hosts_missing_at_the_balancer_are_named(fleet: Fleet) -> None:
    backend = fleet.backend()

    async def main() -> None:
        sampler = BalancerSampler(backend, SystemClock(), interval=0.25)
        window = await sampler.sample(["nowhere"], ["good1"], 0.5)
        assert window.missing == ("nowhere",) and window.canary.requests == 0

    asyncio.run(main())
    assert isinstance(backend, HAProxyBackend)
