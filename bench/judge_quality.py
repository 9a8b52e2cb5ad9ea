"""How well the canary judge detects regressions, and how rarely it aborts a good release (T7).

A seeded Monte-Carlo over synthetic canary/baseline traffic at ``--rate`` requests per second
per arm. Every ``--look`` seconds the judge (`headway.analysis`) looks at the cumulative data
since the start; `confirm` turns the looks into a rollback only after
``--consecutive-failures`` failing looks in a row; the first PASS ends a run (the rollout moves
on), as does a confirmed FAIL (the rollout rolls back). A run that reaches its horizon with
neither is inconclusive (the rollout pauses).

Scenarios (each judged with the tolerance a user sets below the regression to be caught):

- errors: baseline 1% errors, canary +1 percentage point (2%), tolerance ``--error-tolerance-pp``,
  horizon 10 minutes;
- latency: per-request latencies, lognormal (median 100 ms, sigma ``--sigma``), canary median
  +10%, tolerance ``--latency-tolerance``, horizon 5 minutes;
- each again as A/A (canary drawn like the baseline) for the false abort rate.

Reports power (share of runs with a confirmed FAIL within the horizon), median and p95 time to
detect (a run that never detects counts as infinitely slow, so p95 is finite only when power is
at least 0.95), the false abort rate of the A/A runs (stopping at their first PASS, as a rollout
does, and also "ever" if one kept looking to the horizon), their median time to pass and the
inconclusive shares.

    .venv/bin/python bench/judge_quality.py                 # T7 with the defaults, 1,000 runs each
    .venv/bin/python bench/judge_quality.py --runs 50 --json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from headway.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CONSECUTIVE_FAILURES,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_MIN_SAMPLES,
    Verdict,
    confirm,
    judge_error_rate,
    judge_latency,
)


@dataclass(frozen=True)
class Settings:
    runs: int
    aa_runs: int
    seed: int
    rate: float
    look: float
    alpha: float
    min_requests: int
    min_samples: int
    consecutive_failures: int
    error_tolerance_pp: float
    latency_tolerance: float
    sigma: float
    error_horizon: float = 600.0
    latency_horizon: float = 300.0


@dataclass(frozen=True)
class RunOutcome:
    failed_at: float | None  # confirmed FAIL (before any PASS)
    passed_at: float | None  # first PASS (before any confirmed FAIL)
    ever_failed: bool  # a confirmed FAIL at some look up to the horizon, ignoring PASSes


@dataclass(frozen=True)
class Summary:
    scenario: str
    runs: int
    detected: float  # share of runs with a confirmed FAIL before a PASS, within the horizon
    detect_median_s: float | None
    detect_p95_s: float | None
    passed: float
    pass_median_s: float | None
    inconclusive: float
    ever_failed: float


def simulate(looks: list[float], judge: Any, consecutive: int) -> RunOutcome:
    history: list[Verdict] = []
    failed_at: float | None = None
    passed_at: float | None = None
    ever = False
    for t in looks:
        history.append(judge(t))
        verdict = confirm(history, consecutive_failures=consecutive)
        if verdict is Verdict.FAIL:
            ever = True
            if passed_at is None and failed_at is None:
                failed_at = t
        elif verdict is Verdict.PASS and failed_at is None and passed_at is None:
            passed_at = t
        if ever and (passed_at is not None or failed_at is not None):
            break
    return RunOutcome(failed_at, passed_at, ever)


def error_run(s: Settings, rng: np.random.Generator, canary_rate: float) -> RunOutcome:
    looks = _looks(s.look, s.error_horizon)
    per_look = rng.poisson(s.rate * s.look, size=(2, len(looks)))  # requests per arm per look
    rates = np.array([[canary_rate], [0.01]])
    errors = rng.binomial(per_look, rates)
    totals, errs = np.cumsum(per_look, axis=1), np.cumsum(errors, axis=1)
    index = {t: i for i, t in enumerate(looks)}

    def judge(t: float) -> Verdict:
        i = index[t]
        return judge_error_rate(
            int(errs[0, i]),
            int(totals[0, i]),
            int(errs[1, i]),
            int(totals[1, i]),
            max_increase_pp=s.error_tolerance_pp,
            alpha=s.alpha,
            min_requests=s.min_requests,
        ).verdict

    return simulate(looks, judge, s.consecutive_failures)


def latency_run(s: Settings, rng: np.random.Generator, canary_factor: float) -> RunOutcome:
    looks = _looks(s.look, s.latency_horizon)
    n = rng.poisson(s.rate * s.latency_horizon, size=2)
    mu = math.log(100.0)
    canary = rng.lognormal(mu + math.log(canary_factor), s.sigma, size=int(n[0]))
    baseline = rng.lognormal(mu, s.sigma, size=int(n[1]))
    # Arrival times: a Poisson process is uniform given its count.
    c_times = np.sort(rng.uniform(0, s.latency_horizon, size=len(canary)))
    b_times = np.sort(rng.uniform(0, s.latency_horizon, size=len(baseline)))

    def judge(t: float) -> Verdict:
        c = canary[: int(np.searchsorted(c_times, t, side="right"))]
        b = baseline[: int(np.searchsorted(b_times, t, side="right"))]
        return judge_latency(
            c.tolist(),
            b.tolist(),
            max_increase=s.latency_tolerance,
            alpha=s.alpha,
            min_samples=s.min_samples,
        ).verdict

    return simulate(looks, judge, s.consecutive_failures)


def _looks(every: float, horizon: float) -> list[float]:
    return [every * i for i in range(1, int(horizon // every) + 1)]


def summarize(name: str, outcomes: list[RunOutcome]) -> Summary:
    n = len(outcomes)
    detect = sorted(o.failed_at if o.failed_at is not None else math.inf for o in outcomes)
    passes = sorted(o.passed_at for o in outcomes if o.passed_at is not None)

    def quantile(values: list[float], q: float) -> float | None:
        if not values:
            return None
        value = values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]
        return None if math.isinf(value) else value

    detected = sum(o.failed_at is not None for o in outcomes)
    return Summary(
        scenario=name,
        runs=n,
        detected=detected / n,
        detect_median_s=quantile(detect, 0.5),
        detect_p95_s=quantile(detect, 0.95),
        passed=len(passes) / n,
        pass_median_s=quantile([float(p) for p in passes], 0.5),
        inconclusive=(n - detected - len(passes)) / n,
        ever_failed=sum(o.ever_failed for o in outcomes) / n,
    )


def run(s: Settings) -> dict[str, Any]:
    rng = np.random.default_rng(s.seed)
    started = time.monotonic()
    summaries = [
        summarize("errors +1 pp", [error_run(s, rng, 0.02) for _ in range(s.runs)]),
        summarize("errors A/A", [error_run(s, rng, 0.01) for _ in range(s.aa_runs)]),
        summarize("latency +10%", [latency_run(s, rng, 1.10) for _ in range(s.runs)]),
        summarize("latency A/A", [latency_run(s, rng, 1.0) for _ in range(s.aa_runs)]),
    ]
    by = {x.scenario: x for x in summaries}
    t7 = {
        "errors_power_ok": by["errors +1 pp"].detected >= 0.95,
        "errors_p95_within_10min": (by["errors +1 pp"].detect_p95_s or math.inf) <= 600,
        "latency_power_ok": by["latency +10%"].detected >= 0.95,
        "latency_p95_within_5min": (by["latency +10%"].detect_p95_s or math.inf) <= 300,
        "false_aborts_ok": max(by["errors A/A"].detected, by["latency A/A"].detected) <= 0.005,
    }
    return {
        "settings": asdict(s),
        "results": [asdict(x) for x in summaries],
        "t7_met": all(t7.values()),
        "t7": t7,
        "seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000, help="runs per regression scenario")
    parser.add_argument("--aa-runs", type=int, default=1000, help="A/A runs per metric")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per arm")
    parser.add_argument("--look", type=float, default=30.0, help="seconds between looks")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--min-requests", type=int, default=DEFAULT_MIN_REQUESTS)
    parser.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES)
    parser.add_argument("--consecutive-failures", type=int, default=DEFAULT_CONSECUTIVE_FAILURES)
    parser.add_argument("--error-tolerance-pp", type=float, default=0.1)
    parser.add_argument("--latency-tolerance", type=float, default=0.03)
    parser.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of latencies")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(
        runs=args.runs,
        aa_runs=args.aa_runs,
        seed=args.seed,
        rate=args.rate,
        look=args.look,
        alpha=args.alpha,
        min_requests=args.min_requests,
        min_samples=args.min_samples,
        consecutive_failures=args.consecutive_failures,
        error_tolerance_pp=args.error_tolerance_pp,
        latency_tolerance=args.latency_tolerance,
        sigma=args.sigma,
    )
    report = run(settings)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"settings: {report['settings']}")
    print(f"{'scenario':<14} {'runs':>5} {'FAIL':>7} {'median':>7} {'p95':>7} {'PASS':>7} "
          f"{'med.pass':>8} {'inconcl.':>8} {'ever FAIL':>9}")
    for r in report["results"]:
        print(
            f"{r['scenario']:<14} {r['runs']:>5} {r['detected']:>7.2%} {_s(r['detect_median_s']):>7} "
            f"{_s(r['detect_p95_s']):>7} {r['passed']:>7.2%} {_s(r['pass_median_s']):>8} "
            f"{r['inconclusive']:>8.2%} {r['ever_failed']:>9.2%}"
        )
    print(f"T7 met: {report['t7_met']} {report['t7']}  ({report['seconds']} s)")
    return 0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


if __name__ == "__main__":
    sys.exit(main())
