"""The canary judge: canary hosts against baseline hosts, one metric at a time. Pure.

Every judge answers one of three verdicts, on evidence, and says why in one line:

- ``FAIL``: the data shows, at significance ``alpha``, that the canary is worse than the
  baseline by *more* than the tolerance (``max_increase``);
- ``PASS``: the data shows, at the same significance, that the canary is worse by *less*
  than the tolerance (or better);
- ``INCONCLUSIVE``: too little data (fewer than ``min_requests`` / ``min_samples`` in an arm),
  missing or broken data, or data that cannot tell either way yet. Never a pass: the caller
  extends the observation or pauses.

So "no significant difference" is not a pass by itself: at low traffic a test has too little
power to see a real regression, and peers that pass on "not significant" pass bad releases.
A pass needs the confidence bound of the increase to sit under the tolerance. Worked example
(error rates, tolerance 1 pp, alpha 0.01): 0 errors in 50 requests per arm is inconclusive
(the bound is about 6 pp); 0 in 400 per arm passes (about 0.8 pp). A canary whose true
increase equals the tolerance is neither: it stays inconclusive (and fails with probability
about ``alpha``), so a tolerance must sit below the regression one wants caught, for example
half of it.

Error rates use the one-sided z-test on the Agresti-Caffo adjusted difference of proportions
(one error and one success added to each arm): well calibrated down to a few hundred requests
and defined when an arm has no errors at all. Latency uses the one-sided Mann-Whitney U test
(SciPy) of the canary against the baseline scaled by ``1 + max_increase``, so the tolerance is
relative and the test needs no assumption about the shape of the distribution.

A single look is not a rollback: `confirm` turns a series of looks on growing data into one
verdict with a limit of consecutive failures (`bench/judge_quality.py` measures the defaults
below against target T7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

# Defaults measured by bench/judge_quality.py (docs/benchmarks.md, "T7 detection").
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_REQUESTS = 100
DEFAULT_MIN_SAMPLES = 20
DEFAULT_CONSECUTIVE_FAILURES = 2


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    metric: str
    explanation: str  # one line: the metric, canary vs baseline, the test and its p-value or why not
    canary: float | None  # error rate in %, median latency in ms, or the metric's value
    baseline: float | None
    p_value: float | None  # of the test that decided; for INCONCLUSIVE, of "canary is worse"


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _p(p: float) -> str:
    return f"p={p:.2g}" if p >= 1e-4 else "p<0.0001"


def judge_error_rate(
    canary_errors: int,
    canary_total: int,
    baseline_errors: int,
    baseline_total: int,
    *,
    max_increase_pp: float,
    alpha: float = DEFAULT_ALPHA,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    metric: str = "error rate",
) -> Judgement:
    """Is the canary's error rate more than ``max_increase_pp`` percentage points above the
    baseline's?

    >>> judge_error_rate(60, 1000, 10, 1000, max_increase_pp=1.0).verdict  # 6.0% vs 1.0%
    <Verdict.FAIL: 'fail'>
    >>> judge_error_rate(0, 400, 0, 400, max_increase_pp=1.0).verdict      # no errors anywhere
    <Verdict.PASS: 'pass'>
    >>> judge_error_rate(0, 50, 0, 50, max_increase_pp=1.0).verdict        # too few to tell
    <Verdict.INCONCLUSIVE: 'inconclusive'>
    """
    counts = (canary_errors, canary_total, baseline_errors, baseline_total)
    if any(c < 0 for c in counts) or canary_errors > canary_total or baseline_errors > baseline_total:
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: inconsistent counts (canary {canary_errors}/{canary_total}, baseline "
            f"{baseline_errors}/{baseline_total}); were the balancer's counters reset?",
            None,
            None,
            None,
        )
    canary = 100.0 * canary_errors / canary_total if canary_total else None
    baseline = 100.0 * baseline_errors / baseline_total if baseline_total else None
    values = (
        f"canary {_pct(canary)} ({canary_errors}/{canary_total}) vs baseline "
        f"{_pct(baseline)} ({baseline_errors}/{baseline_total})"
    )
    if canary_total < min_requests or baseline_total < min_requests:
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: not enough requests yet ({values}; need {min_requests} in each)",
            canary,
            baseline,
            None,
        )
    # Agresti-Caffo: add one error and one success to each arm.
    pc = (canary_errors + 1) / (canary_total + 2)
    pb = (baseline_errors + 1) / (baseline_total + 2)
    se = math.sqrt(pc * (1 - pc) / (canary_total + 2) + pb * (1 - pb) / (baseline_total + 2))
    z = (pc - pb - max_increase_pp / 100.0) / se
    p_worse = _normal_sf(z)  # H0: increase <= tolerance
    p_within = _normal_sf(-z)  # H0: increase >= tolerance
    test = f"one-sided z-test vs +{max_increase_pp:g} pp"
    if p_worse < alpha:
        return Judgement(
            Verdict.FAIL,
            metric,
            f"{metric}: {values}: more than +{max_increase_pp:g} pp worse ({test}, {_p(p_worse)})",
            canary,
            baseline,
            p_worse,
        )
    if p_within < alpha:
        return Judgement(
            Verdict.PASS,
            metric,
            f"{metric}: {values}: within +{max_increase_pp:g} pp ({test}, {_p(p_within)})",
            canary,
            baseline,
            p_within,
        )
    return Judgement(
        Verdict.INCONCLUSIVE,
        metric,
        f"{metric}: {values}: cannot tell yet whether it is within +{max_increase_pp:g} pp "
        f"({test}, {_p(p_worse)} worse, {_p(p_within)} within; alpha {alpha:g})",
        canary,
        baseline,
        p_worse,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def judge_latency(
    canary_ms: Sequence[float],
    baseline_ms: Sequence[float],
    *,
    max_increase: float,
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    slack_ms: float = 0.0,
    metric: str = "latency",
) -> Judgement:
    """Is the canary slower than the baseline by more than ``max_increase`` (relative, 0.1 =
    10%)? One-sided Mann-Whitney U of the canary against ``baseline * (1 + max_increase) +
    slack_ms``; ``slack_ms`` absorbs the resolution of the source (HAProxy reports whole
    milliseconds, so 0 ms against 0 ms is not a 10% question). NaN and infinite samples are
    dropped, and the explanation says so.

    >>> judge_latency([110.0] * 30, [100.0] * 30, max_increase=0.05).verdict
    <Verdict.FAIL: 'fail'>
    """
    canary = [float(v) for v in canary_ms if math.isfinite(v)]
    baseline = [float(v) for v in baseline_ms if math.isfinite(v)]
    dropped = len(canary_ms) - len(canary) + len(baseline_ms) - len(baseline)
    note = f"; dropped {dropped} NaN/infinite samples" if dropped else ""
    c_med = _median(canary)
    b_med = _median(baseline)
    values = (
        f"median canary {_ms(c_med)} (n={len(canary)}) vs baseline {_ms(b_med)} (n={len(baseline)})"
    )
    if len(canary) < min_samples or len(baseline) < min_samples:
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: not enough samples yet ({values}; need {min_samples} in each){note}",
            c_med,
            b_med,
            None,
        )
    scaled = [v * (1.0 + max_increase) + slack_ms for v in baseline]
    if min(canary) == max(canary) == min(scaled) == max(scaled):
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: {values}: every sample is the same, the test cannot tell{note}",
            c_med,
            b_med,
            None,
        )
    p_worse = float(mannwhitneyu(canary, scaled, alternative="greater").pvalue)
    p_within = float(mannwhitneyu(canary, scaled, alternative="less").pvalue)
    tolerance = f"+{max_increase * 100:g}%" + (f" +{slack_ms:g} ms" if slack_ms else "")
    test = f"one-sided Mann-Whitney U vs baseline {tolerance}"
    if p_worse < alpha:
        verdict, p, what = Verdict.FAIL, p_worse, f"slower than baseline {tolerance}"
    elif p_within < alpha:
        verdict, p, what = Verdict.PASS, p_within, f"within baseline {tolerance}"
    else:
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: {values}: cannot tell yet whether it is within {tolerance} ({test}, "
            f"{_p(p_worse)} worse, {_p(p_within)} within; alpha {alpha:g}){note}",
            c_med,
            b_med,
            p_worse,
        )
    return Judgement(verdict, metric, f"{metric}: {values}: {what} ({test}, {_p(p)}){note}", c_med, b_med, p)


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g} ms"


def judge_threshold(
    canary: float | None, baseline: float | None, *, max_increase: float, metric: str
) -> Judgement:
    """One value per arm (a Prometheus query): fails when canary - baseline > max_increase.
    A missing, NaN or infinite value is inconclusive, never a pass."""
    bad = [
        name
        for name, value in (("canary", canary), ("baseline", baseline))
        if value is None or not math.isfinite(value)
    ]
    shown = f"canary {_num(canary)} vs baseline {_num(baseline)}"
    if bad:
        return Judgement(
            Verdict.INCONCLUSIVE,
            metric,
            f"{metric}: no usable value for the {' and the '.join(bad)} ({shown})",
            _finite(canary),
            _finite(baseline),
            None,
        )
    assert canary is not None and baseline is not None
    increase = canary - baseline
    if increase > max_increase:
        return Judgement(
            Verdict.FAIL,
            metric,
            f"{metric}: {shown}: increase {increase:.4g} is over the limit {max_increase:g}",
            canary,
            baseline,
            None,
        )
    return Judgement(
        Verdict.PASS,
        metric,
        f"{metric}: {shown}: increase {increase:.4g} is within the limit {max_increase:g}",
        canary,
        baseline,
        None,
    )


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def combine(judgements: Sequence[Judgement], *, metric: str = "") -> Judgement:
    """Any FAIL fails; else any INCONCLUSIVE (or nothing at all) is inconclusive; else PASS.
    The values and p-value are those of the first judgement with the combined verdict."""
    name = metric or " + ".join(j.metric for j in judgements)
    if not judgements:
        return Judgement(Verdict.INCONCLUSIVE, name or "none", "nothing was judged", None, None, None)
    verdicts = {j.verdict for j in judgements}
    verdict = (
        Verdict.FAIL
        if Verdict.FAIL in verdicts
        else Verdict.INCONCLUSIVE
        if Verdict.INCONCLUSIVE in verdicts
        else Verdict.PASS
    )
    lead = next(j for j in judgements if j.verdict is verdict)
    return Judgement(
        verdict,
        name,
        "; ".join(j.explanation for j in judgements),
        lead.canary,
        lead.baseline,
        lead.p_value,
    )


def confirm(looks: Sequence[Verdict], *, consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES) -> Verdict:
    """The verdict of a series of looks at growing data (oldest first).

    FAIL only once the last ``consecutive_failures`` looks all failed: one noisy look does not
    roll back. A failing look not yet confirmed counts as INCONCLUSIVE (look again).

    >>> confirm([Verdict.INCONCLUSIVE, Verdict.FAIL], consecutive_failures=2)
    <Verdict.INCONCLUSIVE: 'inconclusive'>
    >>> confirm([Verdict.FAIL, Verdict.FAIL], consecutive_failures=2)
    <Verdict.FAIL: 'fail'>
    """
    if consecutive_failures < 1:
        raise ValueError("consecutive_failures must be at least 1")
    if not looks:
        return Verdict.INCONCLUSIVE
    tail = looks[-consecutive_failures:]
    if len(tail) == consecutive_failures and all(v is Verdict.FAIL for v in tail):
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE if looks[-1] is Verdict.FAIL else looks[-1]
