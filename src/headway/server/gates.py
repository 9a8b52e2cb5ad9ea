"""Runs a service's verification gates over one window and judges each: canary against baseline.

`GateRunner.run` runs every gate but approvals, concurrently, over ``duration`` seconds:

- balancer gates (``error_rate``, ``latency``) share one `BalancerSampler` that polls the
  balancer every ``poll`` seconds for the whole window; judged at its end;
- Prometheus gates wait out the window, then query the canary and the baseline (``{hosts}``
  filled with each arm's ``address:port`` instances); one retry after a short jittered pause;
- command gates run once, at the start, against the canary hosts, with their own timeout.

So a run takes about ``max(duration + 2 x prometheus timeout, command timeout)`` at most, and
``duration`` plus a poll when there are only balancer gates.

It never raises for a gate's own trouble: a source that errors, a missing balancer, an empty
baseline ("no baseline") or an unexpected exception makes that gate INCONCLUSIVE with the
reason, never PASS (reliability rule 19). A run is one look: repeated looks on growing data
and the limit of consecutive failures are the caller's (`headway.analysis.confirm`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from headway.analysis import Judgement, Verdict, judge_error_rate, judge_latency, judge_threshold
from headway.clock import Clock
from headway.domain.models import HostView
from headway.domain.spec import ServiceSpec
from headway.domain.verification import BalancerGate, BalancerMetric, CommandGate, GateSpec, PrometheusGate
from headway.metrics import (
    BalancerSampler,
    BalancerWindow,
    MetricsUnavailable,
    PrometheusSource,
    render_query,
    run_command_gate,
)
from headway.traffic.base import TrafficBackend

log = logging.getLogger("headway.gates")

Sleep = Callable[[float], Awaitable[None]]

# HAProxy's response times are whole milliseconds: 0 ms against 0 ms is no regression.
LATENCY_SLACK_MS = 1.0
# Per-poll latency samples (one per host and poll) a balancer latency gate needs in each arm.
BALANCER_LATENCY_MIN_SAMPLES = 10
MAX_SERIES_POINTS = 120


@dataclass(frozen=True)
class GateResult:
    gate: str
    kind: str  # balancer | prometheus | command
    verdict: Verdict
    explanation: str  # one line for the rollout's events
    data: dict[str, Any]  # JSON-ready: canary/baseline values, p_value, a short series for charts


class GateRunner:
    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        backend_for: Callable[[ServiceSpec], TrafficBackend | None],
        *,
        poll: float = 1.0,
        sleep: Sleep = asyncio.sleep,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._backend_for = backend_for
        self._poll = poll
        self._sleep = sleep
        self._http = http

    async def run(
        self,
        spec: ServiceSpec,
        gates: Sequence[GateSpec],
        canary: Sequence[HostView],
        baseline: Sequence[HostView],
        duration: float,
    ) -> list[GateResult]:
        todo = [g for g in gates if g.approval is None]
        if not todo:
            return []
        if not canary:
            return [_inconclusive(g, "no canary hosts to verify") for g in todo]
        balancer = [g for g in todo if g.balancer is not None]
        window: asyncio.Task[BalancerWindow | str] | None = None
        async with asyncio.TaskGroup() as group:
            if balancer and baseline:
                window = group.create_task(self._sample(spec, canary, baseline, duration))
            others = {
                g.name: group.create_task(self._guarded(g, self._one(spec, g, canary, baseline, duration)))
                for g in todo
                if g.balancer is None
            }
        results: list[GateResult] = []
        for g in todo:
            if g.balancer is None:
                results.append(others[g.name].result())
            elif not baseline:
                results.append(_inconclusive(g, "no baseline hosts to compare the canary with"))
            else:
                assert window is not None
                sampled = window.result()
                results.append(
                    _inconclusive(g, sampled)
                    if isinstance(sampled, str)
                    else self._judge_balancer(g, g.balancer, sampled)
                )
        return results

    async def _guarded(self, gate: GateSpec, work: Awaitable[GateResult]) -> GateResult:
        try:
            return await work
        except Exception as error:  # a gate's own trouble is its verdict, never the caller's
            log.exception("gate %s failed", gate.name)
            return _inconclusive(gate, f"the gate could not run: {error!r}")

    async def _one(
        self,
        spec: ServiceSpec,
        gate: GateSpec,
        canary: Sequence[HostView],
        baseline: Sequence[HostView],
        duration: float,
    ) -> GateResult:
        if gate.prometheus is not None:
            if not baseline:
                return _inconclusive(gate, "no baseline hosts to compare the canary with")
            await self._sleep(duration)
            return await self._prometheus(spec, gate, gate.prometheus, canary, baseline)
        if gate.command is not None:
            return await self._command(spec, gate, gate.command, canary)
        raise AssertionError(f"gate {gate.name} of kind {gate.kind} is not run by the gate runner")

    # --- balancer ------------------------------------------------------------------------------

    async def _sample(
        self, spec: ServiceSpec, canary: Sequence[HostView], baseline: Sequence[HostView], duration: float
    ) -> BalancerWindow | str:
        try:
            backend = self._backend_for(spec)
            if backend is None:
                return f"service {spec.name} has no load balancer to read (traffic.balancer)"
            sampler = BalancerSampler(backend, self._clock, interval=self._poll, sleep=self._sleep)
            return await sampler.sample([h.name for h in canary], [h.name for h in baseline], duration)
        except Exception as error:
            log.exception("sampling the balancer of %s failed", spec.name)
            return f"cannot read the load balancer: {error!r}"

    def _judge_balancer(self, gate: GateSpec, spec: BalancerGate, window: BalancerWindow) -> GateResult:
        if not window.usable:
            why = window.problem or "no answer"
            return _inconclusive(gate, f"the load balancer did not answer enough polls: {why}")
        c, b = window.canary, window.baseline
        if spec.metric is BalancerMetric.ERROR_RATE:
            judgement = judge_error_rate(
                c.errors,
                c.requests,
                b.errors,
                b.requests,
                max_increase_pp=spec.tolerance,
                alpha=spec.alpha,
                min_requests=spec.min_requests,
                metric=f"{gate.name} (balancer error rate)",
            )
            series = [
                [
                    p.t,
                    _rate(p.canary_errors, p.canary_requests),
                    _rate(p.baseline_errors, p.baseline_requests),
                ]
                for p in window.series
            ]
        else:
            metric = f"{gate.name} (balancer latency)"
            if c.requests < spec.min_requests or b.requests < spec.min_requests:
                judgement = Judgement(
                    Verdict.INCONCLUSIVE,
                    metric,
                    f"{metric}: not enough requests yet (canary {c.requests}, baseline {b.requests}; "
                    f"need {spec.min_requests} in each)",
                    None,
                    None,
                    None,
                )
            else:
                judgement = judge_latency(
                    c.latencies_ms,
                    b.latencies_ms,
                    max_increase=spec.tolerance,
                    alpha=spec.alpha,
                    min_samples=BALANCER_LATENCY_MIN_SAMPLES,
                    slack_ms=LATENCY_SLACK_MS,
                    metric=metric,
                )
            series = [[p.t, p.canary_ms, p.baseline_ms] for p in window.series]
        notes = []
        if window.missing:
            notes.append(f"not at the balancer: {', '.join(window.missing)}")
        if window.failed_polls:
            notes.append(f"{window.failed_polls} of {window.polls + window.failed_polls} polls failed")
        explanation = judgement.explanation + (f" ({'; '.join(notes)})" if notes else "")
        data = _data(judgement) | {
            "canary_requests": c.requests,
            "canary_errors": c.errors,
            "baseline_requests": b.requests,
            "baseline_errors": b.errors,
            "series": _thin(series),
        }
        return GateResult(gate.name, gate.kind, judgement.verdict, explanation, data)

    # --- prometheus ----------------------------------------------------------------------------

    async def _prometheus(
        self,
        spec: ServiceSpec,
        gate: GateSpec,
        prom: PrometheusGate,
        canary: Sequence[HostView],
        baseline: Sequence[HostView],
    ) -> GateResult:
        source = PrometheusSource(prom.url, timeout=prom.timeout, client=self._http)
        queries = {
            arm: render_query(prom.query, [f"{h.address}:{spec.port}" for h in hosts])
            for arm, hosts in (("canary", canary), ("baseline", baseline))
        }
        metric = f"{gate.name} (prometheus)"
        try:
            values = await asyncio.gather(
                *(self._query(source, queries[arm]) for arm in ("canary", "baseline"))
            )
        except MetricsUnavailable as error:
            # a source that errors is not "too little data": the rollout pauses at once
            return _inconclusive(gate, f"{metric}: {error}", {"queries": queries, "errored": True})
        judgement = judge_threshold(values[0], values[1], max_increase=prom.max_increase, metric=metric)
        data = _data(judgement) | {"queries": queries}
        return GateResult(gate.name, gate.kind, judgement.verdict, judgement.explanation, data)

    async def _query(self, source: PrometheusSource, query: str) -> float | None:
        try:
            return await source.query(query)
        except MetricsUnavailable:
            await self._sleep(self._rng.uniform(0.2, 0.5))
            return await source.query(query)

    # --- command -------------------------------------------------------------------------------

    async def _command(
        self, spec: ServiceSpec, gate: GateSpec, command: CommandGate, canary: Sequence[HostView]
    ) -> GateResult:
        outcome = await run_command_gate(
            command.argv,
            urls=[f"http://{h.address}:{spec.port}" for h in canary],
            addresses=[h.address for h in canary],
            timeout=command.timeout,
            clock=self._clock,
        )
        data: dict[str, Any] = {
            "argv": list(outcome.argv),
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "seconds": round(outcome.seconds, 3),
            "output": outcome.output,
        }
        name = outcome.argv[0] if outcome.argv else "(empty)"
        last = _last_line(outcome.output)
        said = f": {last}" if last else ""
        if outcome.error:
            return _inconclusive(gate, f"{gate.name} (command): {outcome.error}", data)
        if outcome.timed_out:
            verdict = Verdict.FAIL
            text = f"{gate.name} (command): {name} did not finish within {command.timeout:g}s, killed{said}"
        elif outcome.exit_code == 0:
            verdict = Verdict.PASS
            text = f"{gate.name} (command): {name} passed (exit 0) in {outcome.seconds:.1f}s{said}"
        else:
            verdict = Verdict.FAIL
            text = f"{gate.name} (command): {name} failed with exit code {outcome.exit_code}{said}"
        return GateResult(gate.name, gate.kind, verdict, text, data)


def _inconclusive(gate: GateSpec, why: str, data: dict[str, Any] | None = None) -> GateResult:
    return GateResult(gate.name, gate.kind, Verdict.INCONCLUSIVE, why, data or {})


def _data(j: Judgement) -> dict[str, Any]:
    return {"metric": j.metric, "canary": j.canary, "baseline": j.baseline, "p_value": j.p_value}


def _rate(errors: int, requests: int) -> float | None:
    return round(100.0 * errors / requests, 3) if requests else None


def _thin(series: list[list[Any]]) -> list[list[Any]]:
    step = max(1, -(-len(series) // MAX_SERIES_POINTS))
    return series[::step]


def _last_line(output: str, limit: int = 200) -> str:
    for line in reversed(output.splitlines()):
        if line.strip():
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return ""
